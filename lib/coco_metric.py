"""COCO mask AP of instance masks.

COCO mask AP (:func:`coco_mask_ap`) runs pycocotools' ``COCOeval`` with
``iouType="segm"`` on datasets built in memory from compressed RLEs
(``pycocotools.mask.encode``), using categories rather than full ClassIds
(:func:`class_to_category`). :func:`coco_records` gives one image's part of its
input from masks and class keys as lib/kaggle_metric.py takes them.
"""
from __future__ import annotations

import contextlib
import io
import numbers
from typing import Callable, Hashable

import numpy as np

from .kaggle_metric import _as_masks, _plain

__all__ = [
    "class_to_category",
    "encode_masks",
    "coco_mask_ap",
    "coco_records",
]


def class_to_category(cls):
    """Category of a class key: ``"10_7_20"`` -> 10, ``"6"`` -> 6, ``7`` -> 7.

    Strings whose part before the first ``_`` is not an integer map to that
    part; other hashables are returned unchanged.
    """
    if isinstance(cls, (str, np.str_)):
        head = str(cls).split("_", 1)[0].strip()
        try:
            return int(head)
        except ValueError:
            return head
    if isinstance(cls, numbers.Integral):
        return int(cls)
    return _plain(cls)


def encode_masks(masks) -> list[dict]:
    """(N, H, W) masks -> N pycocotools compressed RLEs (``{"size": [H, W], "counts": bytes}``)."""
    from pycocotools import mask as mask_util

    masks = _as_masks(masks, "encode_masks")
    if masks.shape[0] == 0:
        return []
    m = np.asfortranarray((masks != 0).transpose(1, 2, 0).astype(np.uint8))
    return mask_util.encode(m)


def _nanmean_valid(p: np.ndarray) -> float:
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else float("nan")


def _coco_ann(ann_id: int, image_id: int, category_id: int, rle: dict) -> dict:
    """A COCO annotation for a compressed RLE (ids start at 1: COCOeval treats id 0 as "unmatched")."""
    from pycocotools import mask as mask_util

    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "segmentation": rle,
            "area": float(mask_util.area(rle)), "bbox": [float(x) for x in mask_util.toBbox(rle)], "iscrowd": 0}


def coco_mask_ap(gt: list[dict], pred: list[dict], max_dets: int = 100) -> dict:
    """COCO mask AP with pycocotools ``COCOeval(iouType="segm")``, built in memory.

    Args:
        gt: one dict per image: ``image_id`` (any hashable, unique), ``height``,
            ``width``, ``masks_rle`` (list of pycocotools RLEs of size
            [height, width], counts bytes or str), ``categories`` (same length;
            any hashables). Images without masks still count (their
            predictions are false positives).
        pred: one dict per image (images may be missing or repeated):
            ``image_id`` (must be in ``gt``), ``masks_rle``, ``categories``, ``scores``.
        max_dets: detections per image kept (maxDets = [1, 10, max_dets]).

    Returns:
        ``dict(AP=, AP50=, AP75=, per_category={category: AP})``: AP averaged
        over IoU 0.50:0.95 (area "all", max_dets), AP50 / AP75 at one IoU,
        floats in [0, 1] (nan when no category has ground truth);
        ``per_category`` holds only categories with ground truth. No
        predictions at all gives 0.
    """
    images, gt_anns, dt_anns, cat_ids = _coco_records(gt, pred)
    if not gt_anns:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan"), "per_category": {}}
    ev = _cocoeval(images, gt_anns, dt_anns, [{"id": i, "name": str(c)} for c, i in cat_ids.items()], max_dets)
    prec = ev.eval["precision"][:, :, :, 0, -1]  # (T, R, K) at area "all", largest maxDets
    thr = np.asarray(ev.params.iouThrs)
    t50 = np.flatnonzero(np.isclose(thr, 0.5))
    t75 = np.flatnonzero(np.isclose(thr, 0.75))
    inv_cat = {i: c for c, i in cat_ids.items()}
    per_category = {}
    for k, cid in enumerate(ev.params.catIds):
        ap = _nanmean_valid(prec[:, :, k])
        if not np.isnan(ap):
            per_category[inv_cat[cid]] = ap
    return {
        "AP": _nanmean_valid(prec),
        "AP50": _nanmean_valid(prec[t50]),
        "AP75": _nanmean_valid(prec[t75]),
        "per_category": per_category,
    }


def _check_rle(rle, h: int, w: int, where: str) -> None:
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise ValueError(f"{where}: not a pycocotools RLE dict: {type(rle).__name__}")
    if [int(s) for s in rle["size"]] != [h, w]:
        raise ValueError(f"{where}: RLE size {list(rle['size'])} differs from image size {[h, w]}")


def _coco_records(gt: list[dict], pred: list[dict]):
    """:func:`coco_mask_ap`'s inputs as COCO ``images``, ground-truth and detection annotations (ids from 1)
    and ``{category: COCO category id}``; ``ValueError`` naming the image for inconsistent input."""
    img_ids: dict = {}
    cat_ids: dict = {}
    images, gt_anns, dt_anns = [], [], []

    def cat_id(c):
        return cat_ids.setdefault(_plain(c), len(cat_ids) + 1)

    for g in gt:
        key = _plain(g["image_id"])
        if key in img_ids:
            raise ValueError(f"coco_mask_ap: image_id {key!r} appears twice in gt")
        iid = img_ids[key] = len(img_ids) + 1
        h, w = int(g["height"]), int(g["width"])
        images.append({"id": iid, "height": h, "width": w, "file_name": str(key)})
        rles, cats = list(g["masks_rle"]), list(g["categories"])
        if len(rles) != len(cats):
            raise ValueError(f"coco_mask_ap: gt image {key!r}: {len(rles)} masks_rle, {len(cats)} categories")
        for k, (rle, c) in enumerate(zip(rles, cats)):
            _check_rle(rle, h, w, f"coco_mask_ap: gt image {key!r} mask {k}")
            gt_anns.append(_coco_ann(len(gt_anns) + 1, iid, cat_id(c), rle))
    for p in pred:
        key = _plain(p["image_id"])
        if key not in img_ids:
            raise ValueError(f"coco_mask_ap: predicted image_id {key!r} is not in gt")
        iid = img_ids[key]
        img = images[iid - 1]
        rles, cats, scores = list(p["masks_rle"]), list(p["categories"]), list(p["scores"])
        if not len(rles) == len(cats) == len(scores):
            raise ValueError(
                f"coco_mask_ap: pred image {key!r}: {len(rles)} masks_rle, {len(cats)} categories, "
                f"{len(scores)} scores"
            )
        for k, (rle, c, s) in enumerate(zip(rles, cats, scores)):
            _check_rle(rle, img["height"], img["width"], f"coco_mask_ap: pred image {key!r} mask {k}")
            dt_anns.append(dict(_coco_ann(len(dt_anns) + 1, iid, cat_id(c), rle), score=float(s)))
    return images, gt_anns, dt_anns, cat_ids


def _cocoeval(images: list, gt_anns: list, dt_anns: list, categories: list, max_dets: int):
    """pycocotools' ``COCOeval(iouType="segm")`` evaluated and accumulated over in-memory datasets (quietly)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_gt.createIndex()
        coco_dt = COCO()
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="segm")
        ev.params.maxDets = sorted({1, 10, int(max_dets)})
        ev.evaluate()
        ev.accumulate()
    return ev



def coco_records(gt_masks, gt_classes, pred_masks, pred_classes, pred_scores=None,
                 category_of: Callable[[Hashable], Hashable] = class_to_category) -> tuple[dict, dict | None]:
    """One image's part of :func:`coco_mask_ap`'s input, without its ``image_id``: the ground truth's
    ``height, width, masks_rle, categories`` and the predictions' ``masks_rle, categories, scores`` (None
    without predictions; no scores = 1.0 each). Masks (N, H, W) as in :func:`lib.kaggle_metric.image_score`."""
    gt, pr = np.asarray(gt_masks), np.asarray(pred_masks)
    h, w = (gt.shape[1:] if gt.shape[0] or not pr.shape[0] else pr.shape[1:])
    gt_rec = {"height": int(h), "width": int(w), "masks_rle": encode_masks(gt),
              "categories": [category_of(c) for c in gt_classes]}
    if not pr.shape[0]:
        return gt_rec, None
    scores = np.ones(pr.shape[0]) if pred_scores is None else np.asarray(pred_scores, np.float64)
    return gt_rec, {"masks_rle": encode_masks(pr), "categories": [category_of(c) for c in pred_classes],
                    "scores": scores.tolist()}

