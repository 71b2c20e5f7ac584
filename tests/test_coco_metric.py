"""Tests for lib/coco_metric.py: COCO mask AP (against pycocotools on the Fashionpedia sample) and the category
of a class key."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest

from lib.coco_metric import class_to_category, coco_mask_ap, encode_masks
from test_kaggle_metric import strips

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FASHIONPEDIA = SHARED / "real_samples" / "fashionpedia_sample"


def test_class_to_category():
    assert class_to_category("10_7_20") == 10
    assert class_to_category("6") == 6
    assert class_to_category(np.int64(7)) == 7 and type(class_to_category(np.int64(7))) is int
    assert class_to_category("shoe_x") == "shoe"


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


def load_fashionpedia() -> dict:
    """The Fashionpedia API sample: ``{image id: height, width, gt_rle, gt_cat, pr_rle, pr_cat, pr_score}``
    (ground truth from sample.json, predictions from fake_results.json), or skip without ../shared/data."""
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


@pytest.fixture(scope="module")
def fashionpedia():
    return load_fashionpedia()


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

    # (b) lib.coco_metric.coco_mask_ap on polygons rasterised with pycocotools
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

