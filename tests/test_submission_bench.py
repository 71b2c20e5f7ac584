"""bench/submission_bench.py: its synthetic 05 outputs are what 05 writes and 06 accepts (a tiny end-to-end run
gives a valid submission), its memory sampler sees child processes, and its ratio / projection arithmetic."""
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from bench import common as bc
from bench import submission_bench as sb
from lib import prediction_table as lpred
from lib import rle
from lib import submission_file as lsub
from lib.kaggle_data import list_test_images

TINY = dict(sb.MODES, rows_per_model=5, gt_per_image=3.0, seed=0)


def _mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def test_generated_sets_are_05_outputs(tmp_path):
    sets = sb.ensure_sets(tmp_path, 3, 2, TINY, workers=1)
    val, test, data = sets["val"], sets["test"], sets["data"]
    vmeta, tmeta = (json.loads((d / "meta.json").read_text()) for d in (val, test))
    assert vmeta["status"] == tmeta["status"] == "done" and [m["name"] for m in vmeta["models"]] == list(sb.MODELS)
    split = lpred.split_source([val])  # 06 --tune-on's view: a prepared val split with its gt.csv
    assert split["split"] == "val" and split["gt"] == str(val / "gt.csv") and len(split["images"]) == 3
    assert lpred.split_source([test]) is None  # the Kaggle test images of --data-dir
    listed = list_test_images(data, progress=False)
    ids = [sb.image_id("test", 0, k) for k in range(2)]
    assert listed["image_id"].tolist() == ids
    assert [tuple(x) for x in listed[["orig_height", "orig_width"]].to_numpy()] == list(sb.IMAGE_HW)
    table = lpred.read_table(val / "predictions.parquet")
    assert list(dict.fromkeys(table["model"])) == list(sb.MODELS) and set(table["image_id"]) == set(
        split["images"]["image_id"])
    lpred.make_table(table.head(2).to_dict("records")).to_parquet(tmp_path / "ref.parquet", index=False)
    assert pq.read_schema(val / "predictions.parquet").equals(pq.read_schema(tmp_path / "ref.parquet"))  # 05's write
    assert table.columns.tolist() == lpred.COLUMNS
    assert {k: str(table[k].dtype) for k in lpred.DTYPES} == lpred.DTYPES and table["attr_scores"].isna().all()
    # 05's order: image (images.parquet order), model, score descending; 1..rows_per_model rows per model
    order = {i: k for k, i in enumerate(split["images"]["image_id"])}
    key = list(zip(table["image_id"].map(order), table["model"].map(sb.MODELS.index), -table["score"]))
    assert key == sorted(key)
    per = table.groupby(["image_id", "model"]).size()
    assert len(per) == 9 and per.max() <= 5 and per.min() >= 1
    assert table["score"].between(0.05, 1.0).all()
    gt = pd.read_csv(val / "gt.csv")
    assert gt.columns.tolist() == ["ImageId", "EncodedPixels", "Height", "Width", "ClassId"]
    assert gt["ClassId"].between(0, 45).all() and set(gt["ImageId"]) <= set(order)
    for r in table.head(6).itertuples(index=False):  # mask crops decode; the box is the >= 0.5 area's, scaled
        prob = lpred.decode_prob(r)
        ys, xs = np.nonzero(prob >= 0.5)
        sx, sy = r.orig_width / 512, r.orig_height / 512
        assert prob.shape == (512, 512) and prob.max() <= 1.0 and len(r.mask_png) > 100
        assert (r.x1, r.y1, r.x2, r.y2) == pytest.approx((xs.min() * sx, ys.min() * sy, (xs.max() + 1) * sx,
                                                          (ys.max() + 1) * sy), abs=1e-3)
    # the ground truth is found: its RLE decodes at (Height, Width) and most instances have a row of IoU > 0.5
    first = gt[gt["ImageId"] == split["images"]["image_id"][0]]
    rows = table[(table["image_id"] == first["ImageId"].iloc[0]) & (table["model"] == "maskrcnn")]
    preds = [lpred.decode_prob(r) >= 0.5 for r in rows.itertuples(index=False)]
    best = []
    for g in first.itertuples(index=False):
        m = rle.decode(g.EncodedPixels, (g.Height, g.Width))
        assert m.sum() > 0 and (g.Height, g.Width) in sb.IMAGE_HW
        small = cv2.resize(np.ascontiguousarray(m), (512, 512), interpolation=cv2.INTER_NEAREST).astype(bool)
        best.append(max(_mask_iou(small, p) for p in preds))
    assert np.mean(np.array(best) > 0.5) >= 0.5, best


def test_sets_are_nested_cached_and_keep_whole_images_in_row_groups(tmp_path):
    cfg = dict(TINY, row_group_rows=7)
    small = sb.ensure_sets(tmp_path, 2, 1, cfg, workers=1)
    big = sb.ensure_sets(tmp_path, 3, 2, cfg, workers=2)  # generated in 2 processes
    a = lpred.read_table(small["val"] / "predictions.parquet")
    b = lpred.read_table(big["val"] / "predictions.parquet")
    pd.testing.assert_frame_equal(a, b[b["image_id"].isin(set(a["image_id"]))].reset_index(drop=True))
    pf = pq.ParquetFile(big["val"] / "predictions.parquet")
    groups = [pf.read_row_group(g).column("image_id").to_pylist() for g in range(pf.num_row_groups)]
    assert len(groups) > 1 and all(len(g) >= 7 for g in groups[:-1])
    assert all(len({i for g in groups if i in g}) == 1 for i in set(b["image_id"]))  # no image split
    stamp = (small["val"] / "predictions.parquet").stat().st_mtime_ns
    again = sb.ensure_sets(tmp_path, 2, 1, cfg, workers=1)
    assert (again["val"] / "predictions.parquet").stat().st_mtime_ns == stamp and again["generation"] == small[
        "generation"]
    other = sb.ensure_sets(tmp_path, 2, 1, dict(cfg, row_group_rows=1000), workers=1)  # other config: regenerated
    assert pq.ParquetFile(other["val"] / "predictions.parquet").num_row_groups == 1


def test_memory_sampler_counts_child_processes():
    child = "b = bytearray(300 * 2**20); import time; time.sleep(0.6)"
    r = bc.run_measured([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', "
                                               f"{child!r}], check=True)"], poll=0.02)
    assert r["rc"] == 0 and r["wall_s"] > 0.6
    assert r["tree_rss_mb"] > 300 and r["max_hwm_mb"] > 300  # the child's 300 MB, not the parent's few MB
    assert 300 < r["tree_pss_mb"] <= r["tree_rss_mb"] + 1


def test_ratio_and_projection_arithmetic():
    assert sb.growth_to_linear([10, 20, 40], [5.0, 10.0, 20.0]) == [1.0, 1.0, 1.0]  # linear
    assert sb.growth_to_linear([10, 20, 40], [5.0, 5.0, 5.0]) == [1.0, 0.5, 0.25]  # flat
    assert sb.growth_to_linear([10, 20], [110.0, 120.0], base=100.0) == [1.0, 1.0]  # increments over a base
    assert sb.growth_to_linear([10, 20], [90.0, 120.0], base=100.0) == [None, None]
    assert sb.linear_fit([1, 2, 3], [3.0, 5.0, 7.0]) == pytest.approx((2.0, 1.0))
    assert sb.slope_error([1, 2, 3], [3.0, 5.0, 7.0]) == pytest.approx(0.0, abs=1e-9)
    assert sb.slope_error([1, 2, 3], [1.0, 3.0, 2.0]) == pytest.approx(math.sqrt(1.5 / 1 / 2))  # residuals -.5 1 -.5
    assert sb.slope_error([1, 2], [1.0, 3.0]) is None
    assert sb.target_speedup(1, {16: 9.0}, 16) == (9.0, "measured at 16 processes")
    s, how = sb.target_speedup(1, {2: 1.6}, 16)  # parallel fraction (1 - 1/1.6) / (1 - 1/2) = 0.75
    assert s == pytest.approx(1 / (0.25 + 0.75 / 16)) and "0.75" in how
    assert sb.target_speedup(2, {4: 2.0}, 16)[0] == pytest.approx(8.0)  # f = 1: perfect from 2 to 16
    assert sb.target_speedup(4, {}, 16)[0] == 4.0 and "assumed" in sb.target_speedup(4, {}, 16)[1]
    ns = [10, 20, 40]
    p = sb.project(ns, [5 + 2.0 * n for n in ns], {"tree_pss_mb": [500.0] * 3, "tree_rss_mb": [400.0 + n for n in ns]},
                   1, {2: 1.6}, {"tree_pss_mb": 50.0, "tree_rss_mb": 60.0}, sb.REAL)
    s16 = 1 / (0.25 + 0.75 / 16)
    assert p["seconds_per_val_image"] == pytest.approx(2.0) and p["intercept_s"] == pytest.approx(5.0)
    assert p["seconds_per_val_image_se"] == pytest.approx(0.0, abs=1e-9)
    assert p["projected_s_1_processes"] == pytest.approx(5 + 2 * 4500)
    assert p["projected_s"] == pytest.approx(5 + 2 * 4500 / s16) and p["meets_time"] is False
    assert p["projected_tree_pss_mb"] == pytest.approx(500 + 50 * 15)  # flat + 15 more workers
    assert p["projected_tree_rss_mb"] == pytest.approx(400 + 4500 + 60 * 15)
    p = sb.project(ns, [10.0, 20.0, 30.0], {"tree_pss_mb": [600.0, 550.0, 500.0]}, 1, {}, {}, sb.REAL)
    assert p["projected_tree_pss_mb"] == 600.0 and p["speedup"] == 16.0  # never below a measured peak
    assert sb.counts_of_test_images([45, 90], None, sb.REAL) == [32, 64]  # the real 3,200 / 4,500
    assert sb.counts_of_test_images([4, 8], [2, 3], sb.REAL) == [2, 3]
    for bad in (["--val-images", "8", "4"], ["--val-images", "8"], ["--rows-per-model", "101"],
                ["--processes", "2", "2"]):
        with pytest.raises(SystemExit):
            sb.config_from_args(sb.get_args_parser().parse_args(bad))


def test_bench_runs_06_end_to_end(tmp_path):
    """06 --tune-on on 2 and 3 val images and 2 test images (few rows): it accepts the sets, writes a valid
    submission, and the report's ratios and projection are those of its own figures."""
    out = tmp_path / "bench.json"
    rep = sb.main(["--val-images", "2", "3", "--test-images", "2", "2", "--processes", "1", "--rows-per-model", "4",
                   "--gt-per-image", "2", "--gen-processes", "1", "--extra-args", "--report-images 0",
                   "--work-dir", str(tmp_path / "w"), "--out", str(out)])
    assert json.loads(out.read_text())["projection"] == pytest.approx(rep["projection"])
    rows, base, p = rep["rows"], rep["baseline"], rep["projection"]
    assert [(r["val_images"], r["test_images"], r["processes"]) for r in rows] == [(2, 2, 1), (3, 2, 1)]
    ids = [sb.image_id("test", 0, k) for k in range(2)]
    sub = tmp_path / "w" / "out" / "submission.csv"
    assert lsub.validate_submission(sub, ids, 512) == []  # the last run's file
    assert set(pd.read_csv(sub)["ImageId"]) == set(ids) and all(r["submission_rows"] >= 2 for r in rows)
    t = [r["seconds"] for r in rows]
    assert rows[1]["time_growth"] == pytest.approx((t[1] / t[0]) / 1.5)
    assert rows[1]["pss_growth"] == pytest.approx(
        ((rows[1]["tree_pss_mb"] - base["tree_pss_mb"]) / (rows[0]["tree_pss_mb"] - base["tree_pss_mb"])) / 1.5,
        rel=1e-3)
    for r in rows:  # 06 holds more than a process that only imports its library
        assert r["tree_pss_mb"] > base["tree_pss_mb"] and r["tree_pss_mb"] <= r["tree_rss_mb"] + 1
        assert r["s06_seconds"] <= r["seconds"] + 0.1
    slope = (t[1] - t[0]) / 1  # two points: the line through them
    assert p["seconds_per_val_image"] == pytest.approx(slope, rel=1e-6)
    assert p["speedup"] == 16.0 and "assumed" in p["speedup_from"] and p["memory_workers_counted"] is False
    assert p["seconds_per_val_image_se"] is None  # two sizes: no error estimate
    assert p["projected_s"] == pytest.approx(p["intercept_s"] + slope * 4500 / 16, rel=1e-6)
    assert math.isfinite(p["projected_tree_pss_mb"])
