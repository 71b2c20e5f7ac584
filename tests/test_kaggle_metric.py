"""Tests for lib/kaggle_metric.py: the Kaggle iMaterialist 2019 metric and mask IoU."""
from __future__ import annotations

import numpy as np
import pytest

from lib import kaggle_metric as metric
from lib.kaggle_metric import THRESHOLDS, class_score, image_score, mask_iou


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
    import lib.kaggle_metric as metric

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



def test_attribute_set_f1_and_the_2020_condition():
    f1 = metric.attribute_set_f1([(3, 7), ()], [(3,), (3, 7), ()])
    assert f1[0].tolist() == [pytest.approx(2 / 3), 1.0, 0.0] and np.isnan(f1[1]).all()  # no attributes: no condition
    iou = np.array([[0.9, 0.0, 0.0]])
    # one ground truth with attributes (3, 7), one prediction at IoU 0.9 with attributes (3,): F1 2/3 passes the F1
    # thresholds 0.50-0.65 (4 of 10); the IoU passes 0.50-0.85 (8 of 10): 32 of the 100 pairs are hits.
    assert class_score(iou[:, :1], f1=f1[:1, :1]) == pytest.approx(0.32)
    assert class_score(iou[:, :1], f1=np.array([[1.0]])) == class_score(iou[:, :1]) == pytest.approx(0.8)
    assert class_score(iou[:, :1], f1=np.array([[np.nan]])) == pytest.approx(0.8)
    assert class_score(iou[:, :1], f1=np.array([[0.5]])) == 0.0  # F1 must be greater than the threshold
    # A prediction failing the F1 condition leaves the ground truth to the next one, as a lower IoU would.
    two = np.array([[0.95, 0.9]])
    assert class_score(two, [0, 1], f1=np.array([[0.0, 1.0]])) == pytest.approx(np.mean(
        [1 / 2 if t < 0.9 else 0.0 for t in THRESHOLDS]))
    with pytest.raises(ValueError, match="shape"):
        class_score(two, f1=np.ones((2, 2)))
