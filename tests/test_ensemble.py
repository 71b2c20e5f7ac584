"""Tests for lib/ensemble.py: instance fusion (TTA and models) and table ensembling."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lib import predictions as lpred
from lib import rle as lrle
from lib import submission as lsub
from lib.ensemble import (combinations, combine, ensemble_tables, fuse_instances, load_combination, masks_to_boxes,
                          tune_ensemble, weight_vectors)

REPO = Path(__file__).resolve().parents[1]

H = W = 24


def box(y0, x0, y1, x1, value=1.0, hw=(H, W)):
    m = np.zeros(hw, np.float32)
    m[y0:y1, x0:x1] = value
    return m


def source(masks, cats, scores, attrs=None):
    return {"masks": np.stack(masks).astype(np.float32), "categories": np.array(cats), "scores": np.array(scores),
            "attr_scores": None if attrs is None else np.asarray(attrs, np.float32)}


def table(image_id, masks, cats, scores, model="m", orig=(48, 48), attrs=None):
    rows = []
    for i, m in enumerate(masks):
        x0, y0, png = lpred.encode_prob(m)
        rows.append({"image_id": image_id, "model": model, "category": cats[i], "score": scores[i],
                     "x1": 0, "y1": 0, "x2": 1, "y2": 1, "orig_height": orig[0], "orig_width": orig[1],
                     "mask_height": m.shape[0], "mask_width": m.shape[1], "mask_x0": x0, "mask_y0": y0,
                     "mask_png": png, "attr_scores": None if attrs is None else list(attrs[i])})
    return lpred.make_table(rows)


def rows_of(t, image_id):
    r = t[t["image_id"] == image_id].sort_values("score", ascending=False, kind="stable")
    return [lpred.decode_prob(x) for x in r.itertuples(index=False)], r["score"].tolist(), r["category"].tolist()


# ------------------------------------------------------------------ fuse_instances


def test_single_source_and_identical_sources_give_back_the_input():
    rng = np.random.default_rng(0)
    masks = [box(2, 2, 10, 10) * 0.9, box(12, 12, 20, 22) * rng.uniform(0.5, 1, (H, W)), box(0, 14, 8, 24)]
    src = source(masks, [3, 3, 7], [0.9, 0.6, 0.8], attrs=rng.random((3, 92)))
    for k in (1, 3):
        out = fuse_instances([src] * k)
        order = [0, 2, 1]  # by score
        np.testing.assert_allclose(out["masks"], np.stack(masks)[order], atol=1e-6)
        np.testing.assert_allclose(out["scores"], [0.9, 0.8, 0.6], rtol=1e-6)
        assert out["categories"].tolist() == [3, 7, 3]
        np.testing.assert_allclose(out["attr_scores"], src["attr_scores"][order], atol=1e-6)
        assert out["votes"].tolist() == [k] * 3


def test_voting_lowers_a_lone_instance_by_its_weight_share():
    shared, lone = box(2, 2, 12, 12), box(14, 14, 22, 22)
    a = source([shared, lone], [1, 2], [0.8, 0.8])
    b = source([shared], [1], [0.8])
    out = fuse_instances([a, b])
    assert out["categories"].tolist() == [1, 2]
    np.testing.assert_allclose(out["scores"], [0.8, 0.4], rtol=1e-6)  # lone: 0.8 * 1/2
    np.testing.assert_allclose(out["masks"][0], shared, atol=1e-6)
    np.testing.assert_allclose(out["masks"][1], lone * 0.5, atol=1e-6)  # absent source counts as zeros
    out = fuse_instances([a, b], weights=[3, 1])
    np.testing.assert_allclose(out["scores"], [0.8, 0.6], rtol=1e-6)  # 0.8 * 3/4
    np.testing.assert_allclose(out["masks"][1], lone * 0.75, atol=1e-6)
    out = fuse_instances([a, b], weights=[1, 3])
    np.testing.assert_allclose(out["scores"], [0.8, 0.2], rtol=1e-6)
    out = fuse_instances([a, b], min_votes=2)
    assert out["categories"].tolist() == [1] and out["masks"].shape == (1, H, W)


def test_shifted_copies_fuse_to_their_average_and_categories_never_fuse():
    m1, m2 = box(4, 4, 16, 16), box(4, 6, 16, 18)  # IoU = 120/168 > 0.5
    out = fuse_instances([source([m1], [5], [0.9]), source([m2], [5], [0.9])])
    assert len(out["scores"]) == 1
    np.testing.assert_allclose(out["masks"][0], (m1 + m2) / 2, atol=1e-6)
    assert out["scores"][0] == pytest.approx(0.9)
    np.testing.assert_array_equal(out["boxes"][0], [4, 4, 18, 16])  # x1 y1 x2 y2 of the >= 0.5 area
    # Score-weighted: the stronger view dominates the average.
    out = fuse_instances([source([m1], [5], [0.9]), source([m2], [5], [0.3])])
    np.testing.assert_allclose(out["masks"][0], 0.75 * m1 + 0.25 * m2, atol=1e-6)
    assert out["scores"][0] == pytest.approx(0.6)
    # Same masks, different categories: two instances, each a lone vote.
    out = fuse_instances([source([m1], [5], [0.9]), source([m1], [6], [0.9])])
    assert sorted(out["categories"].tolist()) == [5, 6]
    np.testing.assert_allclose(out["masks"], np.stack([m1 / 2, m1 / 2]), atol=1e-6)
    # Below the IoU threshold they stay apart.
    out = fuse_instances([source([m1], [5], [0.9]), source([m2], [5], [0.9])], iou_thr=0.9)
    assert len(out["scores"]) == 2


def test_clusters_compare_with_the_seed_and_duplicates_of_one_source_count_once():
    m = box(4, 4, 16, 16)
    a = source([m, m], [1, 1], [0.9, 0.5])  # a near-duplicate inside one source
    out = fuse_instances([a, source([m], [1], [0.9])])
    assert len(out["scores"]) == 1 and out["votes"].tolist() == [2]
    assert out["scores"][0] == pytest.approx(0.9)  # each source votes with its best member


def test_attributes_weighted_mean_and_missing():
    m = box(4, 4, 16, 16)
    a = source([m], [1], [0.9], attrs=np.ones((1, 92)))
    b = source([m], [1], [0.3], attrs=np.zeros((1, 92)))
    out = fuse_instances([a, b])
    np.testing.assert_allclose(out["attr_scores"][0], 0.75, atol=1e-6)
    out = fuse_instances([a, source([m], [1], [0.3])])  # b has no attribute head
    np.testing.assert_allclose(out["attr_scores"][0], 1.0)
    out = fuse_instances([source([box(0, 0, 3, 3)], [2], [0.9]), a])
    assert np.isnan(out["attr_scores"][out["categories"] == 2]).all()
    assert fuse_instances([source([m], [1], [0.9])])["attr_scores"] is None


def test_empty_sources_and_errors():
    empty = {"masks": np.zeros((0, H, W), np.float32), "categories": [], "scores": [], "attr_scores": None}
    out = fuse_instances([empty, empty])
    assert out["masks"].shape == (0, H, W) and out["boxes"].shape == (0, 4)
    out = fuse_instances([empty, source([box(1, 1, 5, 5)], [0], [1.0])])
    assert out["scores"].tolist() == [0.5]
    with pytest.raises(ValueError, match="weights"):
        fuse_instances([empty, empty], weights=[1])
    with pytest.raises(ValueError, match="min_votes"):
        fuse_instances([empty], min_votes=2)
    with pytest.raises(ValueError, match="resize"):
        fuse_instances([empty, source([box(1, 1, 5, 5, hw=(8, 8))], [0], [1.0])])


def test_masks_to_boxes():
    m = np.zeros((3, 10, 12), np.float32)
    m[0, 2:5, 3:9] = 0.8
    m[1, 1, 1] = 0.2  # only weak pixels: their box
    np.testing.assert_array_equal(masks_to_boxes(m), [[3, 2, 9, 5], [1, 1, 2, 2], [0, 0, 0, 0]])


# ------------------------------------------------------------------ ensemble_tables


def test_ensemble_of_identical_tables_equals_the_input():
    rng = np.random.default_rng(1)
    masks = [box(2, 2, 10, 12) * rng.uniform(0.3, 1, (H, W)), box(13, 1, 23, 9), box(5, 15, 20, 23) * 0.7]
    t = table("a.jpg", masks, [0, 4, 4], [0.95, 0.7, 0.5], attrs=rng.random((3, 92)))
    t = lpred.make_table(t.to_dict("records") + table("b.jpg", masks[:1], [9], [0.4]).to_dict("records"))
    out = ensemble_tables([t, t, t], progress=False)
    assert set(out["model"]) == {"ensemble"} and len(out) == len(t)
    for image_id in ("a.jpg", "b.jpg"):
        got, gs, gc = rows_of(out, image_id)
        want, ws, wc = rows_of(t, image_id)
        assert gc == wc
        np.testing.assert_allclose(gs, ws, rtol=1e-6)
        for g, w_ in zip(got, want):
            assert np.abs(g - w_).max() <= 1 / 255 + 1e-6
    a = out[out["image_id"] == "a.jpg"].iloc[0]
    np.testing.assert_allclose(a["attr_scores"], t.iloc[0]["attr_scores"], atol=1e-6)
    assert a["x2"] == pytest.approx(12 * 2) and a["y2"] == pytest.approx(10 * 2)  # box in 48x48 original pixels
    assert out[out["image_id"] == "b.jpg"]["attr_scores"].iloc[0] is None


def test_ensemble_votes_across_tables_and_resizes_to_the_first_table():
    m = box(4, 4, 20, 20)
    t1 = table("a.jpg", [m], [2], [0.8], model="m1")
    small = np.zeros((12, 12), np.float32)
    small[2:10, 2:10] = 1.0
    t2 = lpred.make_table(table("a.jpg", [small], [2], [0.8], model="m2").to_dict("records")
                          + table("c.jpg", [small], [3], [0.6], model="m2").to_dict("records"))
    out = ensemble_tables([t1, t2], weights=[1, 1], progress=False)
    a = out[out["image_id"] == "a.jpg"]
    assert len(a) == 1 and int(a["mask_height"].iloc[0]) == H
    up = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)  # bilinear to 24x24: soft edges
    assert up[6:18, 6:18].min() == 1.0 and 0 < up[3, 3] < 1 and up[0].max() == 0
    np.testing.assert_allclose(lpred.decode_prob(a.iloc[0]), (m + up) / 2, atol=1 / 255)
    assert a["score"].iloc[0] == pytest.approx(0.8)
    c = out[out["image_id"] == "c.jpg"]  # only in t2: its own size, half the score
    assert int(c["mask_height"].iloc[0]) == 12 and c["score"].iloc[0] == pytest.approx(0.3)
    assert ensemble_tables([t1, t2], min_votes=2, progress=False)["image_id"].tolist() == ["a.jpg"]


# ------------------------------------------------------------------ choosing the combination on validation


def test_weight_vectors_distinct_ratios_equal_first():
    assert weight_vectors(1) == [(1.0,)]
    assert weight_vectors(2, (1, 2)) == [(1.0, 1.0), (0.666667, 1.333333), (1.333333, 0.666667)]
    w3 = weight_vectors(3, (1, 2))
    assert w3[0] == (1.0, 1.0, 1.0) and len(w3) == 7  # 2**3 vectors, (1,1,1) and (2,2,2) one ratio
    assert all(sum(v) == pytest.approx(3) for v in w3) and len(set(w3)) == 7
    assert weight_vectors(2, (1,)) == [(1.0, 1.0)]
    with pytest.raises(ValueError, match="> 0"):
        weight_vectors(2, (0, 1))


def test_combinations_fewer_models_first():
    c = combinations(["a", "b", "c"], (1, 2))
    assert len(c) == 3 + 3 * 3 + 7
    assert [x["models"] for x in c[:4]] == [["a"], ["b"], ["c"], ["a", "b"]]
    assert c[3]["weights"] == [1.0, 1.0] and c[-7]["models"] == ["a", "b", "c"]
    assert len(combinations(["a", "b", "c"], (1,), max_models=2)) == 6


def gt_csv(path, items):
    lines = ["ImageId,EncodedPixels,Height,Width,ClassId"]
    lines += [f"{i},{lrle.encode(m.astype(np.uint8))},{m.shape[0]},{m.shape[1]},{c}" for i, m, c in items]
    Path(path).write_text("\n".join(lines) + "\n")
    return path


def three_models(orig=(H, W)):
    """"good" finds the object of a.jpg, "other" the one of b.jpg, "noise" only false positives."""
    obj_a, obj_b = box(2, 2, 12, 12), box(10, 8, 22, 20)
    t = {
        "good": table("a.jpg", [obj_a], [3], [0.9], model="good", orig=orig),
        "other": table("b.jpg", [obj_b], [5], [0.9], model="other", orig=orig),
        "noise": table("a.jpg", [box(14, 14, 24, 24), box(0, 12, 8, 24)], [3, 7], [0.95, 0.9], model="noise",
                       orig=orig),
    }
    gt = [("a.jpg", obj_a, "3"), ("b.jpg", obj_b, "5")]
    return t, gt


def test_tune_ensemble_picks_the_complementary_pair_and_round_trips(tmp_path):
    sources, items = three_models()
    gt = gt_csv(tmp_path / "gt.csv", items)
    grid = {"score_thresh": [0.3, 0.5], "min_area": [0]}
    combo, params, results = tune_ensemble(sources, gt, grid, mask_size=H, weight_choices=(1, 2),
                                           out_path=tmp_path / "params.json", progress=False)
    assert len(results) == 19
    by = {(tuple(r["models"]), tuple(r["weights"])): r["kaggle_first"] for r in results}
    assert sum(r["kaggle"] is not None for r in results) == 3  # the 3 best of the first stage are refined
    assert by[(("good",), (1.0,))] == 0.5 and by[(("other",), (1.0,))] == 0.5  # one image each
    assert by[(("noise",), (1.0,))] == 0.0
    # Together they find both objects; the fused score halves (one vote of two), so 0.3 must be the threshold.
    assert combo["models"] == ["good", "other"] and combo["weights"] == [1.0, 1.0]
    assert max(by.values()) == 1.0 and params["score_thresh"] == 0.3
    assert combo["min_score"] == pytest.approx(0.15)  # half the lowest threshold of the grid
    # Saved for 06: the same combination and parameters come back.
    assert load_combination(tmp_path / "params.json") == combo
    assert lsub.load_params(tmp_path / "params.json") == params
    saved = json.loads((tmp_path / "params.json").read_text())
    assert saved["kaggle"] == 1.0 and len(saved["candidates"]) == 19
    # Exhaustive search agrees, and scores every candidate on the whole grid.
    combo2, params2, results2 = tune_ensemble(sources, gt, grid, mask_size=H, weight_choices=(1, 2), refine=0,
                                              progress=False)
    assert (combo2, params2) == (combo, params) and all(r["kaggle"] is not None for r in results2)
    fused = combine(sources, combo)
    assert lsub.score_table(fused, gt, params, mask_size=H, coco=False, progress=False)["kaggle"] == 1.0
    assert combine(sources, {"models": ["good"]}) is sources["good"]
    with pytest.raises(ValueError, match=r"\['zz'\]"):
        combine(sources, {"models": ["good", "zz"]})


def test_load_combination_absent_and_malformed(tmp_path):
    f = tmp_path / "p.json"
    f.write_text(json.dumps({"params": {"score_thresh": 0.5}}))
    assert load_combination(f) is None
    f.write_text(json.dumps({"ensemble": {"models": ["a", "b"], "weights": [1]}}))
    with pytest.raises(ValueError, match="one weight per model"):
        load_combination(f)
    f.write_text(json.dumps({"ensemble": {"weights": [1]}}))
    with pytest.raises(ValueError, match="p.json: malformed"):
        load_combination(f)
    f.write_text(json.dumps({"ensemble": {"models": ["a"], "weights": [-1]}}))
    with pytest.raises(ValueError, match="weights must be"):
        load_combination(f)


def write_pred_dir(d, tables, image_ids, orig, source=None):
    d.mkdir(parents=True)
    lpred.make_table([r for t in tables for r in t.to_dict("records")]).to_parquet(d / "predictions.parquet")
    pd.DataFrame({"image_id": image_ids, "orig_height": orig[0], "orig_width": orig[1]}).to_parquet(
        d / "images.parquet")
    meta = {"models": [{"name": t["model"].iloc[0]} for t in tables]}
    if source:
        meta["source"] = source
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def test_make_submission_tune_on_val_applies_the_winner_to_test(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_submission", REPO / "06_make_submission.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sources, items = three_models()
    # Val: 05 output of a cache split (meta source + gt.csv).
    val = write_pred_dir(tmp_path / "val", list(sources.values()), ["a.jpg", "b.jpg"], (H, W),
                         {"prepared_dir": str(tmp_path / "prep"), "split": "val"})
    gt_csv(val / "gt.csv", items)
    # Test: the same three models on the test images of a Kaggle-layout dir, with its ground truth.
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    for i in ("a.jpg", "b.jpg"):
        cv2.imwrite(str(data / "test" / i), np.zeros((H, W, 3), np.uint8))
    gt_csv(data / "test_ground_truth.csv", items)
    test = write_pred_dir(tmp_path / "test", list(sources.values()), ["a.jpg", "b.jpg"], (H, W))
    out = tmp_path / "sub" / "submission.csv"
    args = ["--predictions", str(test), "--tune-on", str(val), "--data-dir", str(data), "--out-dir", str(out.parent),
            "--mask-size", "0", "--no-progress", "--report-images", "0", "--weight-choices", "1",
            "--tune-grid", '{"score_thresh": [0.3, 0.5]}']
    assert mod.main(mod.get_args_parser().parse_args(args)) == 0
    assert load_combination(out.parent / "params.json")["models"] == ["good", "other"]
    meta = json.loads((out.parent / "meta.json").read_text())
    assert meta["combination"]["models"] == ["good", "other"] and meta["scores"]["submission"]["kaggle"] == 1.0
    assert meta["scores"]["noise"]["kaggle"] == 0.0
    assert meta["scores"]["ensemble"]["kaggle"] < 1.0  # all three fused: noise's false positives cost
    sub = pd.read_csv(out, dtype=str)
    assert sorted(sub["ClassId"]) == ["3", "5"]  # no noise rows
    # A later run without tuning loads the choice from params.json by default; flags still override it.
    assert mod.main(mod.get_args_parser().parse_args(args[:2] + args[4:])) == 0
    assert "combination (" + str(out.parent / "params.json") in capsys.readouterr().out
    assert json.loads((out.parent / "meta.json").read_text())["combination"]["models"] == ["good", "other"]
    assert mod.main(mod.get_args_parser().parse_args(args[:2] + args[4:] + ["--models", "noise"])) == 0
    assert json.loads((out.parent / "meta.json").read_text())["combination"]["models"] == ["noise"]
    # An unfinished 05 run is refused (its table may be stale or partial).
    meta = json.loads((test / "meta.json").read_text())
    (test / "meta.json").write_text(json.dumps(dict(meta, status="partial")))
    with pytest.raises(SystemExit, match="did not finish"):
        mod.main(mod.get_args_parser().parse_args(args))
    (test / "meta.json").write_text(json.dumps(dict(meta, status="done")))
    # --tune-on needs a val-split prediction dir with gt.csv.
    with pytest.raises(SystemExit, match="not a 05 output"):
        mod.main(mod.get_args_parser().parse_args(["--predictions", str(test), "--tune-on", str(test)] + args[4:]))
