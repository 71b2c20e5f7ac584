"""Tests for lib/fusion.py: instance fusion (TTA and models) and table ensembling."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from lib import prediction_table as lpred
from lib.fusion import Combination, ensemble_tables, fuse_instances

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


def test_default_combination_is_all_models_with_equal_weights():
    assert Combination.default(("a", "b")).to_json() == {"models": ["a", "b"], "weights": [1.0, 1.0], "iou": 0.5,
                                                         "min_votes": 1}
    three = Combination.default(["a", "b", "c"], 0.7, 2).to_json()
    assert three == {"models": ["a", "b", "c"], "weights": [1.0, 1.0, 1.0], "iou": 0.7, "min_votes": 2}
    assert list(three) == ["models", "weights", "iou", "min_votes"]  # the order meta.json / params.json write


@pytest.mark.parametrize("args, message", [
    ((("a", "b"), (1.0,)), "1 weights for 2 sources"),
    ((("a", "b"), (-1, 1)), "weights must be finite, >= 0 and not all 0, got [-1.0, 1.0]"),
    ((("a", "b"), (0, 0)), "weights must be finite, >= 0 and not all 0, got [0.0, 0.0]"),
    ((("a", "b"), None, 0.5, 3), "min_votes must be 1..2, got 3"),
    ((("a", "b", "c"), None, 0.5, 0), "min_votes must be 1..3, got 0"),
    (((),), "a combination needs at least one model"),
])
def test_a_combination_is_checked_once_when_made(args, message):
    """The messages fusing gave (check_weights, fuse_windows), now when the record is made."""
    with pytest.raises(ValueError) as e:
        Combination(*args)
    assert str(e.value) == message


def test_combination_fields_are_typed_and_the_record_frozen():
    c = Combination(["a", "b"], [2, 1], 1, 2, 0)
    assert c == Combination(("a", "b"), (2.0, 1.0), 1.0, 2, 0.0)
    assert (type(c.weights[0]), type(c.iou), type(c.min_score)) == (float, float, float)
    assert Combination(["only"], None, 0.5, 7).min_votes == 7  # one model is not fused: any min_votes
    assert Combination.default(["m"]) == Combination(("m",), (1.0,))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.iou = 0.7
    with pytest.raises(ValueError, match=r"combination needs models \['c'\], the predictions have \['a', 'b'\]"):
        Combination(("a", "c")).check_models({"b": [], "a": []})


def test_combination_json_round_trip_as_params_json_holds_it():
    """to_json writes what params.json / scores.json / meta.json held before: min_score only when given; from_json
    reads an entry as load_combination did (defaults filled, min_score always)."""
    tuned = Combination(("b", "a"), (2.0, 1.0), 0.6, 2, 0.1)
    assert tuned.to_json() == {"models": ["b", "a"], "weights": [2.0, 1.0], "iou": 0.6, "min_votes": 2,
                               "min_score": 0.1}
    assert list(tuned.to_json()) == ["models", "weights", "iou", "min_votes", "min_score"]
    assert Combination.from_json(tuned.to_json()) == tuned
    loaded = Combination.from_json({"models": ["v", "m"], "weights": [2, 1]})
    assert loaded.to_json() == {"models": ["v", "m"], "weights": [2.0, 1.0], "iou": 0.5, "min_votes": 1,
                                "min_score": 0.0}
    assert Combination.from_json({"models": ["v", "m"]}).weights == (1.0, 1.0)
    flags = Combination.default(["a", "b"], 0.7)
    assert "min_score" not in flags.to_json() and Combination.from_json(flags.to_json()).min_score == 0.0
    with pytest.raises(ValueError, match="^malformed \"ensemble\" entry"):
        Combination.from_json({"weights": [1]})
    with pytest.raises(ValueError, match="^malformed \"ensemble\" entry"):
        Combination.from_json({"models": ["a"], "iou": "high"})
    with pytest.raises(ValueError, match="^\"ensemble\" needs one weight per model"):
        Combination.from_json({"models": ["a", "b"], "weights": [1]})
    with pytest.raises(ValueError, match=r"^min_votes must be 1\.\.2, got 3$"):
        Combination.from_json({"models": ["a", "b"], "min_votes": 3})
    with pytest.raises(ValueError, match=r"^weights must be finite, >= 0 and not all 0, got \[-1.0\]$"):
        Combination.from_json({"models": ["a"], "weights": [-1]})


def test_one_image_fusion_serves_every_combination_like_a_fresh_one(monkeypatch):
    """06 fuses up to 16 combinations of one image from one ImageFusion (windows and IoUs computed once): each
    equals what ensemble_tables gives for that combination alone, whatever was fused before it."""
    from lib.fusion import ImageFusion, combine

    rng = np.random.default_rng(4)
    tables, masks = {}, {}
    for m in ("a", "b", "c"):
        probs = [box(*sorted(rng.integers(0, H, 2)), *sorted(rng.integers(0, W, 2))) * rng.uniform(0.4, 1) for _ in range(5)]
        probs = [p if p.any() else box(1, 1, 5, 5) for p in probs]
        tables[m] = table("a.jpg", probs, list(rng.integers(0, 2, 5)), list(rng.uniform(0.1, 1, 5)), model=m)
        masks[m] = lpred.stored_masks(tables[m])
    combinations = [Combination(("a", "b"), (1, 1)), Combination(("a", "b", "c"), (2, 1, 1)),
                    Combination(("b", "c"), (1, 3), min_score=0.3), Combination(("c", "a"), (1, 1)),
                    Combination(("a", "b", "c"), (1, 1, 1), iou=0.3, min_votes=2)]
    shared = ImageFusion(masks, (48, 48))
    made = []
    check = Combination.__post_init__
    monkeypatch.setattr(Combination, "__post_init__", lambda self: (made.append(self), check(self))[1])
    for combination in combinations:
        got = lpred.make_table(lpred.mask_rows("a.jpg", "ensemble", shared.combine(combination, boxes=True),
                                               (48, 48)))
        assert made == []  # fusing reads the combination, it does not make or check another
        want = combine(tables, combination)
        assert got.drop(columns="attr_scores").equals(want.drop(columns="attr_scores"))
        made.clear()
