"""Tests for lib/evaluator.py: the Kaggle metric and COCO mask AP accumulated over images."""
from __future__ import annotations

import numpy as np
import pytest

from lib.coco_metric import coco_mask_ap, coco_records
from lib.evaluator import Evaluator
from lib.kaggle_metric import image_score
from test_coco_metric import load_fashionpedia
from test_kaggle_metric import none, strips


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


# ---------------------------------------------------------------- real data: Fashionpedia API sample


@pytest.fixture(scope="module")
def fashionpedia():
    return load_fashionpedia()


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


def test_add_scored_equals_add():
    """An image scored elsewhere (06's workers: Kaggle score, class scores, COCO records) adds up like add()."""
    gt = np.zeros((2, 8, 8), np.uint8)
    gt[0, :4, :4] = 1
    gt[1, 4:, 4:] = 1
    pred = gt[[1, 0]].copy()
    pred[0, 4, 4] = 0
    direct, parts = Evaluator(), Evaluator()
    for k in range(2):
        direct.add(f"i{k}", gt, [1, 2], pred[: k + 1], [2, 1][: k + 1], [0.9, 0.8][: k + 1])
        score, per_class = image_score(gt, [1, 2], pred[: k + 1], [2, 1][: k + 1], [0.9, 0.8][: k + 1],
                                       return_per_class=True)
        parts.add_scored(f"i{k}", score, per_class,
                         *coco_records(gt, [1, 2], pred[: k + 1], [2, 1][: k + 1], [0.9, 0.8][: k + 1]))
    assert direct.summary() == parts.summary()
