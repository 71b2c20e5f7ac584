"""Tests for lib/attribute_metric.py: attribute F1 of the matched instances."""
from __future__ import annotations

import numpy as np
import pytest

from lib.attribute_metric import (AttributeEvaluator, attribute_f1, match_instances, matched_attributes,
                                  matched_window_attributes, multilabel_f1, tune_thresholds, THRESHOLD_GRID)
from lib.kaggle_metric import mask_window, window_ious
from test_kaggle_metric import none, strips


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



def test_per_attribute_thresholds_in_multilabel_f1():
    gt = hot((1,), (1, 2), (2,), n=3)
    scores = np.array([[0, 0.3, 0.9], [0, 0.4, 0.6], [0, 0.1, 0.7]])
    r = multilabel_f1(gt, scores, np.array([0.5, 0.25, 0.8]))  # attribute 1 at 0.25, attribute 2 at 0.8
    # attribute 1: TP 2 (0.3, 0.4); attribute 2: TP 0, FP 1 (0.9), FN 2
    assert (r["tp"], r["fp"], r["fn"]) == (2, 1, 2) and r["per_attribute"] == {1: 1.0, 2: 0.0}
    assert r["threshold"] == [0.5, 0.25, 0.8]
    assert multilabel_f1(gt, scores, np.full(3, 0.5))["micro_f1"] == multilabel_f1(gt, scores, 0.5)["micro_f1"]
    with pytest.raises(ValueError, match="one per attribute"):
        multilabel_f1(gt, scores, [0.5, 0.5])


def tuning_pairs():
    rng = np.random.default_rng(0)
    gt = np.zeros((40, 4), bool)
    gt[:20, 0] = gt[::2, 1] = True
    gt[:3, 2] = True  # 3 positives: fewer than min_positives, keeps the default
    scores = np.zeros((40, 4))
    scores[:, 0] = np.where(gt[:, 0], 0.3, 0.1)  # separable at (0.1, 0.3]: F1 0 at 0.5, 1 tuned
    scores[:, 1] = np.clip(gt[:, 1] * 0.25 + rng.uniform(0, 0.75, 40), 0, 1)  # noisy
    scores[:, 2] = np.where(gt[:, 2], 0.2, 0.0)
    return gt, scores


@pytest.mark.parametrize("objective", ["micro", "macro"])
def test_tune_thresholds_never_loses_to_the_shared_threshold(objective):
    gt, scores = tuning_pairs()
    thr = tune_thresholds(gt, scores, default=0.5, min_positives=5, objective=objective)
    assert 0.1 < thr[0] <= 0.3 and thr[2] == 0.5 and thr[3] == 0.5  # attribute 3: never in the ground truth
    f1 = lambda t: multilabel_f1(gt, scores, t)
    tuned, shared = f1(thr), f1(0.5)
    assert tuned["per_attribute"][0] == 1.0 and shared["per_attribute"].get(0, 0.0) == 0.0
    key = "micro_f1" if objective == "micro" else "macro_f1"
    assert tuned[key] > shared[key]
    for t in THRESHOLD_GRID:  # no single change of attribute 1's threshold beats the chosen set
        other = f1(np.where(np.arange(4) == 1, t, thr))
        assert (other[key] if objective == "micro" else other["per_attribute"].get(1, 0.0)) <= \
            (tuned[key] if objective == "micro" else tuned["per_attribute"][1]) + 1e-12
    # ties go to the threshold nearest the default: every threshold in (0.1, 0.3] is perfect for attribute 0
    assert thr[0] == 0.3
    assert tune_thresholds(gt, scores, default=0.2, min_positives=5, objective=objective)[0] == 0.2


def test_micro_and_macro_tuning_differ_where_they_should():
    """A rare attribute whose positives score below 12 negatives: its own F1 (macro) takes a low threshold and all
    the false positives; pooled with a frequent attribute (micro), those false positives cost more than its 5
    true positives bring, so it keeps the shared threshold."""
    gt = np.zeros((20, 2), bool)
    gt[:10, 0] = True
    gt[:5, 1] = True
    scores = np.zeros((20, 2))
    scores[:, 0] = np.where(gt[:, 0], 0.9, 0.1)  # frequent, perfect at 0.5
    scores[:5, 1] = 0.3  # the 5 positives
    scores[5:17, 1] = 0.35  # 12 negatives above them
    micro = tune_thresholds(gt, scores, objective="micro")
    macro = tune_thresholds(gt, scores, objective="macro")
    assert macro[1] == 0.3 and micro[1] == 0.5  # own F1 10/27 > 0 at 0.5; micro 30/42 < 20/25
    assert micro[0] == macro[0] == 0.5
    with pytest.raises(ValueError, match="objective"):
        tune_thresholds(gt, scores, objective="mean")


def test_window_matching_equals_full_mask_matching():
    rng = np.random.default_rng(3)
    gt_masks = rng.random((5, 24, 20)) > 0.5
    pred_masks = np.concatenate([gt_masks[[2, 0, 4]], rng.random((2, 24, 20)) > 0.4])
    gt_classes, pred_classes = [1, 1, 3, 33, 1], [3, 1, 1, 1, 33]
    gt_attr, pred_attr = hot((1,), (2,), (3,), (4,), (5,)), rng.random((5, 92))
    scores = [0.9, 0.8, 0.7, 0.6, 0.5]
    want = matched_attributes(gt_masks, gt_classes, gt_attr, pred_masks, pred_classes, scores, pred_attr)
    gw, pw = [mask_window(m) for m in gt_masks], [mask_window(m) for m in pred_masks]
    got = matched_window_attributes(gt_classes, gt_attr, pred_classes, scores, pred_attr,
                                    lambda gi, pj: window_ious([gw[g] for g in gi], [pw[j] for j in pj]))
    assert len(want[0]) == 3 and np.array_equal(want[0], got[0]) and np.array_equal(want[1], got[1])
