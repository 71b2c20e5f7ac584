"""Tests for lib/metric.py: the Kaggle iMaterialist 2019 metric, COCO mask AP and attribute F1."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from lib import metric
from lib.metric import (
    THRESHOLDS,
    AttributeEvaluator,
    Evaluator,
    attribute_f1,
    match_instances,
    matched_attributes,
    multilabel_f1,
    class_score,
    class_to_category,
    coco_mask_ap,
    encode_masks,
    image_score,
    mask_iou,
)

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FASHIONPEDIA = SHARED / "real_samples" / "fashionpedia_sample"


def strips(*intervals, width=16):
    """(N, 1, width) uint8 masks, mask k = pixels [lo_k, hi_k) of one row."""
    out = np.zeros((len(intervals), 1, width), np.uint8)
    for k, (lo, hi) in enumerate(intervals):
        out[k, 0, lo:hi] = 1
    return out


def none(h=1, w=16):
    return np.zeros((0, h, w), np.uint8)


# ---------------------------------------------------------------- thresholds / IoU


def test_thresholds():
    assert len(THRESHOLDS) == 10
    np.testing.assert_array_equal(THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert THRESHOLDS[1] == 0.55 and THRESHOLDS[5] == 0.75


def test_mask_iou_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.random((5, 9, 11)) < 0.4
    b = (rng.random((7, 9, 11)) < 0.6).astype(np.uint8)
    b[3] = 0  # an empty mask: IoU 0 with everything
    a[2] = b[1]  # an exact copy: IoU 1
    got = mask_iou(a, b)
    want = np.zeros((5, 7))
    for i in range(5):
        for j in range(7):
            inter = np.logical_and(a[i], b[j]).sum()
            union = np.logical_or(a[i], b[j]).sum()
            want[i, j] = inter / union if union else 0.0
    assert got.dtype == np.float64 and got.shape == (5, 7)
    np.testing.assert_array_equal(got, want)  # exact: integer counts, one division
    assert got[2, 1] == 1.0 and (got[:, 3] == 0).all()


def test_mask_iou_float64_and_chunked_paths_agree(monkeypatch):
    import lib.metric as metric

    rng = np.random.default_rng(1)
    a, b = rng.random((6, 8, 8)) < 0.5, rng.random((3, 8, 8)) < 0.5
    want = mask_iou(a, b)
    monkeypatch.setattr(metric, "_FLOAT32_EXACT", 1)  # force float64
    monkeypatch.setattr(metric, "_CHUNK_BYTES", 1)  # one row per chunk
    np.testing.assert_array_equal(metric.mask_iou(a, b), want)


def test_mask_iou_empty_and_errors():
    assert mask_iou(none(4, 4), np.ones((3, 4, 4))).shape == (0, 3)
    assert mask_iou(np.ones((2, 4, 4)), none(4, 4)).shape == (2, 0)
    with pytest.raises(ValueError, match="sizes differ"):
        mask_iou(np.ones((1, 4, 4)), np.ones((1, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        mask_iou(np.ones((4, 4)), np.ones((1, 4, 4)))


# ---------------------------------------------------------------- image score, known answers


def test_perfect_prediction_is_one():
    gt = strips((0, 5), (6, 12))
    assert image_score(gt, ["1", "10_3_4"], gt.copy(), ["1", "10_3_4"]) == 1.0


def test_no_gt_no_pred_is_one():
    score, per_class = image_score(none(), [], none(), [], return_per_class=True)
    assert score == 1.0 and per_class == {}
    assert image_score([], [], [], []) == 1.0  # plain empty lists work too


def test_false_positive_only_is_zero():
    assert image_score(none(), [], strips((0, 4)), ["3"]) == 0.0


def test_false_negative_only_is_zero():
    assert image_score(strips((0, 4)), ["3"], none(), []) == 0.0


def test_iou_072_scores_half():
    gt = np.zeros((1, 10, 10), np.uint8)
    gt[0, 2:7, 2:7] = 1  # 25 pixels
    pred = gt.copy()
    pred[0, 6, 2:7] = 0  # remove 5 pixels ...
    pred[0, 5, 5:7] = 0  # ... and 2 more: 18 pixels, all inside the GT
    assert pred.sum() == 18
    assert mask_iou(gt, pred)[0, 0] == 18 / 25 == 0.72
    # hit (TP 1) at 0.50 .. 0.70 (5 thresholds); miss (TP 0, FP 1, FN 1 -> 0) at 0.75 .. 0.95
    assert image_score(gt, ["5"], pred, ["5"]) == 0.5


def test_iou_equal_to_threshold_is_not_a_hit():
    gt = strips((0, 4))
    pred = strips((0, 3))  # IoU 3/4 = 0.75 exactly
    assert mask_iou(gt, pred)[0, 0] == 0.75
    # "IoU above threshold": hits at 0.50 .. 0.70 only (>= would also count 0.75 -> 0.6)
    assert image_score(gt, [1], pred, [1]) == 0.5


def test_one_class_perfect_one_missed_is_half():
    gt = strips((0, 5), (8, 12))
    score, per_class = image_score(gt, ["a", "b"], gt[:1], ["a"], return_per_class=True)
    assert score == 0.5 and per_class == {"a": 1.0, "b": 0.0}


def test_wrong_class_counts_as_fp_and_fn():
    gt = strips((0, 5))
    score, per_class = image_score(gt, ["1"], gt, ["1_4"], return_per_class=True)
    assert score == 0.0 and per_class == {"1": 0.0, "1_4": 0.0}  # full ClassId strings differ


def test_two_gt_one_perfect_pred_is_half():
    gt = strips((0, 5), (8, 12))
    # every threshold: TP 1, FP 0, FN 1 -> 1/2
    assert image_score(gt, ["7", "7"], gt[1:], ["7"]) == 0.5


def test_duplicate_prediction_is_half():
    gt = strips((0, 5))
    # every threshold: TP 1, FP 1, FN 0 -> 1/2
    assert image_score(gt, ["7"], np.concatenate([gt, gt]), ["7", "7"], [0.9, 0.8]) == 0.5


def test_score_order_decides_greedy_match():
    # Overlapping GT A = [0,10), B = [3,14); P1 = [1,12), P2 = [0,10).
    # IoU(P1,A) = 9/12 = 0.75, IoU(P1,B) = 9/13 = 0.692, IoU(P2,A) = 1, IoU(P2,B) = 7/14 = 0.5.
    gt = strips((0, 10), (3, 14))
    pred = strips((1, 12), (0, 10))
    np.testing.assert_allclose(mask_iou(gt, pred), [[9 / 12, 1.0], [9 / 13, 7 / 14]])
    # P1 first: t=.50-.70 P1->A (its best), P2 unmatched (B: 0.5 is not > 0.5): TP 1, FP 1, FN 1 -> 1/3;
    #           t=.75-.95 P1 misses (0.75 is not > 0.75), P2->A: 1/3.  Score 1/3.
    # P2 first: t=.50-.65 P2->A, P1->B: TP 2 -> 1; t=.70-.95 P2->A only: 1/3.  (4 + 6/3) / 10 = 0.6
    cls = ["4", "4"]
    assert image_score(gt, cls, pred, cls, [0.9, 0.8]) == pytest.approx(1 / 3, abs=1e-12)
    assert image_score(gt, cls, pred, cls, [0.8, 0.9]) == pytest.approx(0.6, abs=1e-12)
    # Equal scores / no scores: input order (stable)
    assert image_score(gt, cls, pred, cls, [0.5, 0.5]) == pytest.approx(1 / 3, abs=1e-12)
    assert image_score(gt, cls, pred[::-1], cls) == pytest.approx(0.6, abs=1e-12)
    # class_score on the IoU matrix directly
    iou = mask_iou(gt, pred)
    assert class_score(iou) == pytest.approx(1 / 3, abs=1e-12)
    assert class_score(iou, pred_order=[1, 0]) == pytest.approx(0.6, abs=1e-12)


def test_prediction_takes_its_highest_iou_gt():
    # rows: GT A, B; columns: P1 (processed first), P2.
    iou = np.array([[0.6, 0.9], [0.9, 0.0]])
    # P1 takes B (0.9, not the first candidate A), leaving A for P2: TP 2 at t = .50 .. .85, none at .90/.95.
    # (Taking the first candidate instead would give 1/3 at .50/.55 -> 0.667.)
    assert class_score(iou) == pytest.approx(0.8, abs=1e-12)
    # Equal IoUs: the lower GT index wins. P1 -> A, then P2 has only A (taken): 1/3 at t = .50 .. .75 -> 0.2
    assert class_score(np.array([[0.8, 0.8], [0.8, 0.0]])) == pytest.approx(0.2, abs=1e-12)
    # P1 -> A, P2 -> B: 1 at t = .50 .. .75 -> 0.6
    assert class_score(np.array([[0.8, 0.0], [0.8, 0.8]])) == pytest.approx(0.6, abs=1e-12)
    assert class_score(np.array([[0.8, 0.8], [0.8, 0.8]]), thresholds=[0.5]) == 1.0


def test_class_score_edge_cases():
    assert class_score(np.zeros((0, 0))) == 1.0
    assert class_score(np.zeros((2, 0))) == 0.0
    assert class_score(np.zeros((0, 3))) == 0.0
    assert class_score(np.array([[0.8]]), thresholds=[0.5, 0.9]) == 0.5
    with pytest.raises(ValueError, match="permutation"):
        class_score(np.ones((1, 2)), pred_order=[0, 0])


def test_image_score_input_errors():
    gt = strips((0, 5))
    with pytest.raises(ValueError, match="gt_classes"):
        image_score(gt, ["1", "2"], gt, ["1"])
    with pytest.raises(ValueError, match="pred_scores"):
        image_score(gt, ["1"], gt, ["1"], [0.1, 0.2])
    with pytest.raises(ValueError, match="sizes differ"):
        image_score(gt, ["1"], np.ones((1, 2, 16)), ["1"])


def test_class_to_category():
    assert class_to_category("10_7_20") == 10
    assert class_to_category("6") == 6
    assert class_to_category(np.int64(7)) == 7 and type(class_to_category(np.int64(7))) is int
    assert class_to_category("shoe_x") == "shoe"


# ---------------------------------------------------------------- Evaluator / COCO on toy data


def test_evaluator_mean_over_images():
    ev = Evaluator(coco=False)
    a = strips((0, 5), (8, 12))
    assert ev.add("perfect.jpg", a, ["1", "2_5"], a, ["1", "2_5"], [0.9, 0.8]) == 1.0
    assert ev.add("fp.jpg", none(), [], a[:1], ["1"], [0.7]) == 0.0
    assert ev.add("empty.jpg", none(), [], none(), []) == 1.0
    assert ev.add("half.jpg", a, ["1", "1"], a[:1], ["1"]) == 0.5
    s = ev.summary()
    assert s["num_images"] == 4 and len(ev) == 4
    assert s["kaggle"] == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert s["per_class"] == {"1": pytest.approx((1 + 0 + 0.5) / 3), "2_5": 1.0}
    assert s["coco"] is None
    with pytest.raises(ValueError, match="already added"):
        ev.add("fp.jpg", none(), [], none(), [])


def test_evaluator_coco_uses_categories():
    ev = Evaluator(coco=True)
    a = strips((0, 5), (8, 12))
    ev.add("x.jpg", a, ["1_3", "2"], a, ["1_4", "2"], [0.9, 0.8])  # attributes differ for class 1
    s = ev.summary()
    assert s["kaggle"] == pytest.approx(1 / 3)  # classes "1_3" 0, "1_4" 0, "2" 1
    assert s["coco"]["AP"] == pytest.approx(1.0)  # categories 1 and 2 both perfect
    assert s["coco"]["per_category"] == {1: pytest.approx(1.0), 2: pytest.approx(1.0)}


def test_coco_mask_ap_toy_cases():
    a = strips((0, 5), (8, 12))
    gt = [{"image_id": "x", "height": 1, "width": 16, "masks_rle": encode_masks(a), "categories": [3, 4]}]
    none_pred = coco_mask_ap(gt, [])
    assert none_pred["AP"] == 0.0 and none_pred["AP50"] == 0.0 and none_pred["per_category"] == {3: 0.0, 4: 0.0}
    perfect = coco_mask_ap(gt, [{"image_id": "x", "masks_rle": encode_masks(a), "categories": [3, 4], "scores": [1, 1]}])
    assert perfect["AP"] == pytest.approx(1.0) and perfect["AP75"] == pytest.approx(1.0)
    # Prediction of category 3 only: category 4 has AP 0, mean 0.5
    half = coco_mask_ap(gt, [{"image_id": "x", "masks_rle": encode_masks(a[:1]), "categories": [3], "scores": [1]}])
    assert half["AP"] == pytest.approx(0.5) and half["per_category"] == {3: pytest.approx(1.0), 4: 0.0}
    with pytest.raises(ValueError, match="not in gt"):
        coco_mask_ap(gt, [{"image_id": "y", "masks_rle": [], "categories": [], "scores": []}])
    with pytest.raises(ValueError, match="differs from image size"):
        coco_mask_ap(gt, [{"image_id": "x", "masks_rle": encode_masks(np.ones((1, 2, 8))), "categories": [3], "scores": [1]}])


# ---------------------------------------------------------------- real data: Fashionpedia API sample


def brute_force_image_score(gt_masks, gt_classes, pred_masks, pred_classes, pred_scores):
    """Independent plain-loop implementation of the Kaggle image score."""
    classes = []
    for c in list(gt_classes) + list(pred_classes):
        if c not in classes:
            classes.append(c)
    if not classes:
        return 1.0
    total = 0.0
    for c in classes:
        gts = [m for m, k in zip(gt_masks, gt_classes) if k == c]
        preds = [(s, j, m) for j, (m, k, s) in enumerate(zip(pred_masks, pred_classes, pred_scores)) if k == c]
        preds = [m for _, _, m in sorted(preds, key=lambda x: (-x[0], x[1]))]
        ious = {}
        for i, g in enumerate(gts):
            for j, p in enumerate(preds):
                inter = int(np.logical_and(g, p).sum())
                union = int(np.logical_or(g, p).sum())
                ious[i, j] = inter / union if union else 0.0
        precisions = []
        for t in [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95]:
            used = set()
            tp = 0
            for j in range(len(preds)):
                best, best_i = None, None
                for i in range(len(gts)):
                    if i not in used and ious[i, j] > t and (best is None or ious[i, j] > best):
                        best, best_i = ious[i, j], i
                if best_i is not None:
                    used.add(best_i)
                    tp += 1
            fp, fn = len(preds) - tp, len(gts) - tp
            precisions.append(tp / (tp + fp + fn))
        total += sum(precisions) / len(precisions)
    return total / len(classes)


@pytest.fixture(scope="module")
def fashionpedia():
    if not FASHIONPEDIA.is_dir():
        pytest.skip(f"reference data not found at {FASHIONPEDIA} (needs ../shared/data next to the repository)")
    from pycocotools import mask as mask_util

    sample = json.loads((FASHIONPEDIA / "sample.json").read_text())
    results = json.loads((FASHIONPEDIA / "fake_results.json").read_text())
    images = {}
    for img in sample["images"]:
        images[img["id"]] = {"height": img["height"], "width": img["width"], "gt_rle": [], "gt_cat": [],
                             "pr_rle": [], "pr_cat": [], "pr_score": []}
    for ann in sample["annotations"]:
        im = images[ann["image_id"]]
        rles = mask_util.frPyObjects(ann["segmentation"], im["height"], im["width"])
        im["gt_rle"].append(mask_util.merge(rles))
        im["gt_cat"].append(ann["category_id"])
    for res in results:
        im = images[res["image_id"]]
        im["pr_rle"].append(res["segmentation"])
        im["pr_cat"].append(res["category_id"])
        im["pr_score"].append(res["score"])
    return images


def test_fashionpedia_coco_ap_matches_pycocotools(fashionpedia):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    # (a) pycocotools directly, from the files
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(FASHIONPEDIA / "sample.json"))
        coco_dt = coco_gt.loadRes(str(FASHIONPEDIA / "fake_results.json"))
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    want_per_cat = {}
    for k, cid in enumerate(ev.params.catIds):
        p = ev.eval["precision"][:, :, k, 0, -1]
        if (p > -1).any():
            want_per_cat[cid] = float(p[p > -1].mean())

    # (b) lib.metric.coco_mask_ap on polygons rasterised with pycocotools
    gt = [{"image_id": i, "height": im["height"], "width": im["width"], "masks_rle": im["gt_rle"],
           "categories": im["gt_cat"]} for i, im in fashionpedia.items()]
    pred = [{"image_id": i, "masks_rle": im["pr_rle"], "categories": im["pr_cat"], "scores": im["pr_score"]}
            for i, im in fashionpedia.items()]
    got = coco_mask_ap(gt, pred)

    assert got["AP"] == pytest.approx(ev.stats[0], abs=1e-6)
    assert got["AP50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert got["AP75"] == pytest.approx(ev.stats[2], abs=1e-6)
    assert set(got["per_category"]) == set(want_per_cat)
    for c, ap in want_per_cat.items():
        assert got["per_category"][c] == pytest.approx(ap, abs=1e-6), c
    # The fixture is deliberately imperfect, but not hopeless
    assert 0.0 < got["AP"] < 1.0


def test_fashionpedia_kaggle_metric_matches_brute_force(fashionpedia):
    from pycocotools import mask as mask_util

    ev = Evaluator(coco=True)
    want_scores = []
    for image_id, im in fashionpedia.items():
        gt_masks = np.stack([mask_util.decode(r) for r in im["gt_rle"]])
        pred_masks = np.stack([mask_util.decode(r) for r in im["pr_rle"]])
        got = image_score(gt_masks, im["gt_cat"], pred_masks, im["pr_cat"], im["pr_score"])
        want = brute_force_image_score(gt_masks, im["gt_cat"], pred_masks, im["pr_cat"], im["pr_score"])
        assert got == pytest.approx(want, abs=1e-12), image_id
        assert 0.0 < got < 1.0  # some predictions are right, some wrong on purpose
        assert ev.add(image_id, gt_masks, im["gt_cat"], pred_masks, im["pr_cat"], im["pr_score"]) == got
        want_scores.append(want)
    s = ev.summary()
    assert s["num_images"] == 2
    assert s["kaggle"] == pytest.approx(np.mean(want_scores), abs=1e-12)
    # The Evaluator's COCO part (int classes are categories) agrees with coco_mask_ap on the RLEs
    direct = coco_mask_ap(
        [{"image_id": i, "height": im["height"], "width": im["width"], "masks_rle": im["gt_rle"],
          "categories": im["gt_cat"]} for i, im in fashionpedia.items()],
        [{"image_id": i, "masks_rle": im["pr_rle"], "categories": im["pr_cat"], "scores": im["pr_score"]}
         for i, im in fashionpedia.items()],
    )
    assert s["coco"]["AP"] == pytest.approx(direct["AP"], abs=1e-12)
    assert s["coco"]["per_category"] == pytest.approx(direct["per_category"], abs=1e-12)


# ---------------------------------------------------------------- attribute F1


def hot(*rows, n=92):
    """(len(rows), n) multi-hot from attribute-id tuples."""
    out = np.zeros((len(rows), n))
    for i, ids in enumerate(rows):
        out[i, list(ids)] = 1
    return out


def test_multilabel_f1_known_values():
    gt = hot((1, 2), (3,))
    scores = hot((1, 5), (3,)) * 0.9
    r = multilabel_f1(gt, scores, 0.5)
    # TP: 1, 3; FP: 5; FN: 2
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["micro_f1"] == pytest.approx(4 / 6)
    assert r["per_attribute"] == {1: 1.0, 2: 0.0, 3: 1.0, 5: 0.0}
    assert r["macro_f1"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["num_instances"] == 2 and r["threshold"] == 0.5
    # the threshold is inclusive
    assert multilabel_f1(hot((1,)), hot((1,)) * 0.5, 0.5)["micro_f1"] == 1.0
    assert multilabel_f1(hot((1,)), hot((1,)) * 0.49, 0.5)["micro_f1"] == 0.0
    # nothing true and nothing predicted: undefined
    empty = multilabel_f1(hot(()), hot(()), 0.5)
    assert np.isnan(empty["micro_f1"]) and np.isnan(empty["macro_f1"]) and empty["per_attribute"] == {}
    with pytest.raises(ValueError, match="one shape"):
        multilabel_f1(hot((1,)), hot((1,), ()), 0.5)


def test_attribute_f1_on_matched_instances():
    gt_m = strips((0, 8), (8, 16))
    r = attribute_f1(gt_m, [0, 1], hot((1, 2), (3,)), gt_m, [0, 1], [0.9, 0.8], hot((1, 5), (3,)) * 0.9)
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 1)
    assert r["micro_f1"] == pytest.approx(4 / 6) and r["macro_f1"] == pytest.approx(0.5)
    assert (r["num_instances"], r["num_gt"], r["num_pred"]) == (2, 2, 2)
    # unmatched predictions and ground truth are ignored (only counted in num_pred / num_gt)
    more = attribute_f1(strips((0, 8), (8, 16), (0, 2)), [0, 1, 2], hot((1, 2), (3,), (7,)),
                        strips((0, 8), (8, 16), (12, 16)), [0, 1, 5], [0.9, 0.8, 0.99], hot((1, 5), (3,), (9,)) * 0.9)
    assert (more["tp"], more["fp"], more["fn"]) == (2, 1, 1) and (more["num_gt"], more["num_pred"]) == (3, 3)
    # a model without attribute scores: every true attribute is missed
    off = attribute_f1(gt_m, [0, 1], hot((1, 2), (3,)), gt_m, [0, 1], [0.9, 0.8], None)
    assert (off["tp"], off["fp"], off["fn"]) == (0, 0, 3) and off["micro_f1"] == 0.0
    # no match at all: undefined
    miss = attribute_f1(gt_m, [0, 1], hot((1,), (3,)), none(), [], None, np.zeros((0, 92)))
    assert miss["num_instances"] == 0 and np.isnan(miss["micro_f1"])


def test_attribute_matching_iou_category_and_score_order():
    gt = strips((0, 8))
    # IoU exactly 0.5 matches (>=), 3/8 does not
    assert match_instances(gt, [0], strips((0, 4)), [0], [1.0], 0.5).tolist() == [[0, 0]]
    assert match_instances(gt, [0], strips((0, 3)), [0], [1.0], 0.5).shape == (0, 2)
    # another category never matches
    assert match_instances(gt, [0], strips((0, 8)), [1], [1.0]).shape == (0, 2)
    # greedy by score: the better-scored prediction takes the ground truth, whatever the input order
    preds, attrs = strips((0, 8), (0, 7)), hot((2,), (1,)) * 0.9
    assert match_instances(gt, [0], preds, [0, 0], [0.3, 0.9]).tolist() == [[0, 1]]
    assert attribute_f1(gt, [0], hot((1,)), preds, [0, 0], [0.3, 0.9], attrs)["micro_f1"] == 1.0
    assert attribute_f1(gt, [0], hot((1,)), preds, [0, 0], [0.9, 0.3], attrs)["micro_f1"] == 0.0
    # each prediction takes the still-free ground truth with the highest IoU
    two = strips((0, 8), (2, 10))
    assert match_instances(two, [0, 0], strips((2, 9), (0, 8)), [0, 0], [0.9, 0.8]).tolist() == [[1, 0], [0, 1]]
    with pytest.raises(ValueError, match="gt_attributes must have shape \\(1, 92\\)"):
        attribute_f1(gt, [0], hot((1,), (2,)), gt, [0], None, hot((1,)))


def test_attribute_f1_ignores_categories_without_attributes():
    gt_m = strips((0, 8), (8, 16))
    # category 30 (not in lib.labels.ATTRIBUTE_CATEGORIES): its wrong attributes do not count
    base = attribute_f1(gt_m, [0, 30], hot((1,), (3,)), gt_m, [0, 30], None, hot((1,), (4,)))
    assert (base["tp"], base["fp"], base["fn"], base["num_gt"]) == (1, 0, 0, 1) and base["micro_f1"] == 1.0
    every = attribute_f1(gt_m, [0, 30], hot((1,), (3,)), gt_m, [0, 30], None, hot((1,), (4,)), categories=None)
    assert (every["tp"], every["fp"], every["fn"]) == (1, 1, 1)
    gt, sc = matched_attributes(gt_m, [0, 30], hot((1,), (3,)), gt_m, [0, 30], None, hot((1,), (4,)))
    assert gt.shape == (1, 92) and gt.dtype == bool and sc[0, 1] == 1.0


def test_attribute_evaluator_pools_counts_over_images():
    ev = AttributeEvaluator()
    g1 = strips((0, 8))
    assert ev.add(g1, [0], hot((1,)), g1, [0], [0.9], hot((1,)) * 0.7) == 1  # 1 TP
    g2 = strips((0, 8), (8, 16))
    ev.add(g2, [1, 2], hot((2, 3), (4,)), g2, [1, 2], [0.9, 0.9], hot((), ()))  # 3 FN
    ev.add(none(), [], None, none(), [], None, None)  # an empty image
    r = ev.summary()
    assert (r["tp"], r["fp"], r["fn"], r["num_instances"], r["num_gt"], r["num_pred"]) == (1, 0, 3, 3, 3, 3)
    assert r["micro_f1"] == pytest.approx(2 / 5)  # pooled, not the mean of the image F1s (1 and 0)
    assert r["macro_f1"] == pytest.approx(1 / 4)  # attributes 1 (F1 1), 2, 3, 4 (F1 0)
    # another threshold from the same matches
    assert ev.summary(0.8)["tp"] == 0 and ev.summary(0.8)["fn"] == 4
    with pytest.raises(ValueError, match="attributes"):
        ev.add(g1, [0], hot((1,), n=5), g1, [0], None, None)


def test_window_ious_equal_mask_iou_of_the_pasted_masks():
    rng = np.random.default_rng(3)
    hw = (40, 50)

    def window(full):
        rows, cols = np.flatnonzero(full.any(1)), np.flatnonzero(full.any(0))
        if rows.size == 0:
            return 7, 9, np.zeros((0, 0), bool)  # an empty mask anywhere
        return int(rows[0]), int(cols[0]), full[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].astype(bool)

    masks = []
    for _ in range(12):
        m = np.zeros(hw, np.uint8)
        y, x = rng.integers(0, 35, 2)
        m[y:y + rng.integers(1, 15), x:x + rng.integers(1, 20)] = rng.random() > 0.1
        masks.append(m)
    a, b = np.stack(masks[:7]), np.stack(masks[7:])
    got = metric.window_ious([window(m) for m in a], [window(m) for m in b])
    assert np.array_equal(got, metric.mask_iou(a, b))  # exactly: the same integer counts
    assert metric.window_ious([], [window(b[0])]).shape == (0, 1)


def test_add_scored_equals_add():
    """An image scored elsewhere (06's workers: Kaggle score, class scores, COCO records) adds up like add()."""
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, :4, :4] = 1
    gt[1, 4:, 4:] = 1
    pred = gt[[1, 0]].copy()
    pred[0, 4, 4] = 0
    direct, parts = metric.Evaluator(), metric.Evaluator()
    for k in range(2):
        direct.add(f"i{k}", gt, [1, 2], pred[: k + 1], [2, 1][: k + 1], [0.9, 0.8][: k + 1])
        score, per_class = metric.image_score(gt, [1, 2], pred[: k + 1], [2, 1][: k + 1], [0.9, 0.8][: k + 1],
                                              return_per_class=True)
        parts.add_scored(f"i{k}", score, per_class,
                         *metric.coco_records(gt, [1, 2], pred[: k + 1], [2, 1][: k + 1], [0.9, 0.8][: k + 1]))
    assert direct.summary() == parts.summary()
