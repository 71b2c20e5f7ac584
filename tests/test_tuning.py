"""lib/tuning.py: the post-processing grid, dropped categories, and the combination of models chosen on validation."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import prediction_table as lpred
from lib import rle as lrle
from lib import postprocess as lpost
from lib import scoring as lscoring
from lib.table_stream import read_sources
from lib.tuning import (TuningSet, choose_combination, choose_dropped_categories, combinations, initial_combination,
                        load_combination, point_groups, saved_combination, score_dropping, search_candidates,
                        tune_postprocess, weight_vectors)
from lib.fusion import Combination, combine
from test_fusion import H, W, box, table
from test_postprocess import S, pred_rows, rect, write_gt



def tuning_set(tmp_path, tables, gt, mask_size, processes=1, images=None) -> TuningSet:
    """The tables (a dict of them, or one) written as 05 writes them, and a :class:`TuningSet` over them."""
    paths = []
    for k, t in enumerate(tables.values() if isinstance(tables, dict) else [tables]):
        paths.append(tmp_path / f"predictions-{k}.parquet")
        t.to_parquet(paths[-1], index=False)
    sources, indexes, _ = read_sources(paths)
    return TuningSet(sources, indexes, Path(gt), images, mask_size, processes=processes, progress=False)


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
    assert [list(x.models) for x in c[:4]] == [["a"], ["b"], ["c"], ["a", "b"]]
    assert list(c[3].weights) == [1.0, 1.0] and list(c[-7].models) == ["a", "b", "c"]
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


def test_choose_combination_picks_the_complementary_pair_and_round_trips(tmp_path):
    sources, items = three_models()
    gt = gt_csv(tmp_path / "gt.csv", items)
    grid = {"score_thresh": [0.3, 0.5], "min_area": [0]}
    ts = tuning_set(tmp_path, sources, gt, H)
    combination, params, results = choose_combination(ts, grid, weight_choices=(1, 2),
                                                      out_path=tmp_path / "params.json")
    assert len(results) == 19
    by = {(tuple(r["models"]), tuple(r["weights"])): r["kaggle_first"] for r in results}
    assert sum(r["kaggle"] is not None for r in results) == 3  # the 3 best of the first stage are refined
    assert by[(("good",), (1.0,))] == 0.5 and by[(("other",), (1.0,))] == 0.5  # one image each
    assert by[(("noise",), (1.0,))] == 0.0
    # Together they find both objects; the fused score halves (one vote of two), so 0.3 must be the threshold.
    assert list(combination.models) == ["good", "other"] and list(combination.weights) == [1.0, 1.0]
    assert max(by.values()) == 1.0 and params.score_thresh == 0.3
    assert combination.min_score == pytest.approx(0.15)  # half the lowest threshold of the grid
    # Saved for 06: the same combination and parameters come back.
    assert load_combination(tmp_path / "params.json") == combination
    assert lpost.load_params(tmp_path / "params.json") == params
    saved = json.loads((tmp_path / "params.json").read_text())
    assert saved["kaggle"] == 1.0 and len(saved["candidates"]) == 19
    # Exhaustive search agrees, and scores every candidate on the whole grid.
    combination2, params2, results2 = choose_combination(ts, grid, weight_choices=(1, 2), refine=0)
    assert (combination2, params2) == (combination, params) and all(r["kaggle"] is not None for r in results2)
    fused = combine(sources, combination)
    assert lscoring.score_table(fused, gt, params, mask_size=H, coco=False, progress=False)["kaggle"] == 1.0
    assert combine(sources, Combination.default(["good"])) is sources["good"]
    with pytest.raises(ValueError, match=r"\['zz'\]"):
        combine(sources, Combination.default(["good", "zz"]))


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


def test_saved_combination_is_what_06_saved_or_the_default(tmp_path):
    defaults, f = lpost.Params(), tmp_path / "params.json"
    assert saved_combination(None, []) == (None, defaults)
    assert saved_combination(None, ["a"]) == (Combination.default(["a"]), defaults)
    assert saved_combination(None, ["a", "b"]) == (Combination.default(["a", "b"]), defaults)
    lpost.save_params(f, lpost.Params(score_thresh=0.3))
    tuned = lpost.Params(score_thresh=0.3)
    assert saved_combination(f, ["a", "b"]) == (Combination.default(["a", "b"]), tuned)
    combination = Combination(("b", "a"), (2.0, 1.0), 0.6, 2, 0.1)
    lpost.save_params(f, lpost.Params(score_thresh=0.3), ensemble=combination.to_json())
    assert saved_combination(f, ["a", "b"]) == (combination, tuned)
    assert saved_combination(f, ["a"]) == (Combination.default(["a"]), tuned)  # one model: its own masks
    f.write_text(json.dumps({"params": {}, "ensemble": {"weights": [1]}}))
    assert saved_combination(f, ["a"]) == (Combination.default(["a"]), defaults)  # not read for one model
    with pytest.raises(ValueError, match="params.json: malformed"):
        saved_combination(f, ["a", "b"])
    f.write_text(json.dumps({"params": {"score_thresh": "high"}}))
    with pytest.raises(ValueError, match="params.json"):
        saved_combination(f, ["a"])


def test_initial_combination_starts_from_the_default_combination(tmp_path):
    f = tmp_path / "params.json"
    params, combination, origin = initial_combination(["a", "b"], f, False, {})
    assert (params, combination, origin) == (lpost.Params(), Combination.default(["a", "b"]),
                                             "all models, equal weights")
    _, combination, origin = initial_combination(["a", "b"], f, False, {}, weights=[2.0, 1.0], iou=0.7,
                                                 min_votes=2, explicit=True)
    assert combination.to_json() == {"models": ["a", "b"], "weights": [2.0, 1.0], "iou": 0.7,
                                     "min_votes": 2} and origin == "flags"
    assert list(combination.to_json()) == ["models", "weights", "iou", "min_votes"]
    saved = dataclasses.replace(Combination.default(["b", "a"]), min_score=0.1)
    lpost.save_params(f, lpost.Params(score_thresh=0.3), ensemble=saved.to_json())
    params, combination, origin = initial_combination(["a", "b"], f, True, {"min_area": 5})
    assert combination == saved and origin == str(f) and (params.score_thresh, params.min_area) == (0.3, 5)


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


# ------------------------------------------------------------------ post-processing grid and dropped categories

def test_tune_picks_thresholds_that_improve_a_constructed_case(tmp_path):
    obj = rect(8, 8, 24, 24, hw=(S, S)).astype(np.uint8)
    gt = write_gt(tmp_path / "gt.csv", [("a.jpg", obj, "2")])
    soft = rect(4, 4, 28, 28, 0.5) + rect(8, 8, 24, 24, 0.4)  # 0.9 on the object, 0.5 around it
    t = lpred.make_table(pred_rows("a.jpg", [soft, rect(0, 0, 6, 6)], [2, 2], [0.9, 0.4], orig=(S, S)))
    base = lscoring.score_table(t, gt, lpost.Params(score_thresh=0.3), mask_size=S, progress=False)["kaggle"]
    best, results = tune_postprocess(tuning_set(tmp_path, t, gt, S), Combination.default(["m"]),
                                     {"score_thresh": [0.3, 0.5], "mask_thresh": [0.45, 0.7]},
                                     out_path=tmp_path / "params.json")
    assert len(results) == 4 and results[0]["params"] == {"score_thresh": 0.3, "mask_thresh": 0.45}
    assert best.score_thresh == 0.5 and best.mask_thresh == 0.7
    assert max(r["kaggle"] for r in results) == 1.0 > base == results[0]["kaggle"]
    saved = lpost.load_params(tmp_path / "params.json")
    assert saved == best and json.loads((tmp_path / "params.json").read_text())["kaggle"] == 1.0


def test_tune_drops_categories_that_only_add_false_positives(tmp_path):
    obj = rect(8, 8, 24, 24, hw=(S, S)).astype(np.uint8)
    gt = write_gt(tmp_path / "gt.csv", [("a.jpg", obj, "2"), ("b.jpg", obj, "5")])
    good = rect(8, 8, 24, 24, 0.9)
    rows = (pred_rows("a.jpg", [good, rect(26, 26, 31, 31, 0.9)], [2, 7], [0.9, 0.8], orig=(S, S))
            + pred_rows("b.jpg", [rect(8, 8, 22, 24, 0.9), rect(0, 0, 6, 6, 0.9)], [5, 7], [0.9, 0.8], orig=(S, S)))
    t = lpred.make_table(rows)
    grid = {"score_thresh": [0.5]}
    ts = tuning_set(tmp_path, t, gt, S)
    best, results = tune_postprocess(ts, Combination.default(["m"]), grid, out_path=tmp_path / "params.json",
                                     drop_categories=True)
    # category 7 is predicted in both images and never there: dropped; 5 is there and mostly right: kept
    assert best.drop_categories == (7,)
    assert results[-1]["params"] == {"score_thresh": 0.5, "drop_categories": [7]}
    assert results[-1]["kaggle"] > results[0]["kaggle"]
    assert lpost.load_params(tmp_path / "params.json").drop_categories == (7,)
    # the shortcut score equals scoring the table with those categories dropped
    assert results[-1]["kaggle"] == pytest.approx(lscoring.score_table(
        t, gt, best, mask_size=S, coco=False, progress=False)["kaggle"])
    assert results[0]["kaggle"] == pytest.approx(lscoring.score_table(
        t, gt, lpost.Params(score_thresh=0.5), mask_size=S, coco=False, progress=False)["kaggle"])
    no_drop, res = tune_postprocess(ts, Combination.default(["m"]), grid)  # off by default
    assert no_drop.drop_categories == () and len(res) == 1


def test_score_dropping_matches_the_metric():
    table = [({2: 1.0, 7: 0.0}, {2}), ({5: 0.5, 7: 0.0}, {5, 7}), ({}, set())]
    assert score_dropping(table, ()) == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    # dropping 7: gone from image 1's average; still counted (as 0) in image 2, where it is in the ground truth
    assert score_dropping(table, [7]) == pytest.approx((1.0 + 0.25 + 1.0) / 3)
    assert choose_dropped_categories(table) == ([7], pytest.approx((1.0 + 0.25 + 1.0) / 3))
    assert score_dropping([({3: 0.0}, set())], [3]) == 1.0  # nothing left in the image: 1


# ------------------------------------------------------------------ one pass over the images computes every point


def random_models(seed, n_images=4, rows=10, hw=(32, 32), orig=(40, 56)):
    """Three models' noisy copies of 4 ground-truth ellipses per image, plus false positives, and that gt."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:hw[0], :hw[1]]

    def ellipse(cy, cx, ry, rx, soft):
        d = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        return np.clip(1.5 - d, 0, 1).astype(np.float32) if soft else (d < 1).astype(np.uint8)

    tables, gt = {m: [] for m in ("a", "b", "c")}, []
    for i in range(n_images):
        objs = [(*rng.uniform(6, 26, 2), *rng.uniform(3, 9, 2), int(rng.integers(0, 3))) for _ in range(4)]
        gt += [(f"{i}.jpg", ellipse(*o[:4], False), str(o[4])) for o in objs]
        for m in tables:
            for r in range(rows):
                if r < 4 and rng.random() < 0.8:
                    cy, cx, ry, rx, cat = objs[r]
                    o, score = (cy + rng.normal(0, 1), cx + rng.normal(0, 1), ry * rng.uniform(.8, 1.2),
                                rx * rng.uniform(.8, 1.2), cat), rng.uniform(0.3, 1)
                else:
                    o, score = (*rng.uniform(4, 28, 2), *rng.uniform(2, 7, 2), int(rng.integers(0, 3))), rng.uniform(0.05, .7)
                tables[m] += pred_rows(f"{i}.jpg", [ellipse(*o[:4], True) * rng.uniform(.6, 1)], [o[4]], [score],
                                       orig=orig, model=m)
    return {m: lpred.make_table(r) for m, r in tables.items()}, gt


def test_point_groups_share_one_postprocessing_per_mask_threshold_and_nms():
    points = [lpost.Params(score_thresh=t, min_area=a, mask_thresh=m)
              for m in (0.4, 0.6) for t in (0.5, 0.3) for a in (0, 20)]
    groups = point_groups(points)
    assert len(groups) == 2
    for params, members in groups:
        assert params.score_thresh == 0.3 and params.min_area == 0
        assert [k for k, _, _ in members] == [k for k, p in enumerate(points) if p.mask_thresh == params.mask_thresh]


@pytest.mark.parametrize("mask_size", [32, None])
def test_every_candidate_and_point_equals_scoring_its_fused_table(tmp_path, mask_size):
    """The one pass (decoded once, fused once per candidate, post-processed once per group of points) gives each
    candidate at each point exactly the Kaggle metric of its fused table post-processed with that point's
    parameters; the same with the work in 2 processes."""
    tables, items = random_models(1)
    gt = write_gt(tmp_path / "gt.csv", items)
    grid = {"score_thresh": [0.3, 0.6], "mask_thresh": [0.35, 0.55], "min_area": [0, 15], "nms_iou": [0.3, 0.7]}
    cands = combinations(["a", "b", "c"], (1, 2), 3, iou=0.5, min_votes=1, min_score=0.15)
    cands = [cands[k] for k in (0, 3, 4, 12, 15)]  # a, a+b, a+b weighted, all three, all three weighted
    base = lpost.Params()
    found = search_candidates(tuning_set(tmp_path, tables, gt, mask_size), cands, grid, base)
    values = [dict(zip(grid, v)) for v in __import__("itertools").product(*grid.values())]
    for combination, (best, results) in zip(cands, found):
        fused = combine(tables, combination)
        want = [lscoring.score_table(fused, gt, base.replace(**v), mask_size, per_class=False,
                                     coco=False, progress=False)["kaggle"] for v in values]
        assert [r["kaggle"] for r in results] == want  # exactly: the same IoUs, matches and means
        assert [r["params"] for r in results] == values
        assert {k: getattr(best, k) for k in grid} == values[int(np.argmax(want))]
    assert len({r["kaggle"] for _, res in found for r in res}) > 8  # the points do differ
    (tmp_path / "two").mkdir()
    assert search_candidates(tuning_set(tmp_path / "two", tables, gt, mask_size, processes=2), cands, grid, base) == found
