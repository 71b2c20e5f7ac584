"""The iMaterialist (Fashion) 2019 competition metric and COCO mask AP.

Kaggle metric (as described on the competition's evaluation page):

* For each image and each class key (the full ``ClassId`` string such as
  ``"10_7_20"``; any hashable works, e.g. an int category), at the IoU
  thresholds ``THRESHOLDS`` = 0.50, 0.55, ..., 0.95:

  - predictions of that class are taken in descending score order (stable:
    ties keep input order; no scores = input order); each is matched to the
    still-unmatched ground-truth mask of the same class with the highest IoU,
    provided that IoU is **strictly greater** than the threshold ("a predicted
    object is considered a hit if its IoU with a ground truth object is
    greater than t"). Equal IoUs go to the lower ground-truth index.
  - TP = matched pairs, FP = unmatched predictions, FN = unmatched ground
    truth; ``precision(t) = TP / (TP + FP + FN)``.

* class score = mean of precision(t) over the thresholds;
* image score = mean over the classes present in the ground truth or in the
  predictions (a predicted class absent from the ground truth scores 0, a
  missed class scores 0); an image with neither ground truth nor predictions
  scores 1;
* dataset score = mean of the image scores.

Mask arrays are ``(N, H, W)`` (bool / uint8 / any dtype, nonzero =
foreground); ``N`` may be 0 (shape ``(0, H, W)``). IoU of two empty masks is
defined as 0.

Attribute F1 (:func:`attribute_f1`, :class:`AttributeEvaluator`) scores predicted attributes on the
instances a detector found, leaving detection quality to the metrics above; see :func:`attribute_f1`
for the convention.

COCO mask AP (:func:`coco_mask_ap`) runs pycocotools' ``COCOeval`` with
``iouType="segm"`` on datasets built in memory from compressed RLEs
(``pycocotools.mask.encode``), using categories rather than full ClassIds
(:func:`class_to_category`).
"""
from __future__ import annotations

import contextlib
import io
import numbers
from typing import Callable, Hashable, Sequence

import numpy as np

from .labels import ATTRIBUTE_CATEGORIES, N_ATTRIBUTES

__all__ = [
    "THRESHOLDS",
    "mask_iou",
    "window_ious",
    "class_score",
    "image_score",
    "class_to_category",
    "encode_masks",
    "coco_mask_ap",
    "coco_records",
    "Evaluator",
    "match_instances",
    "matched_attributes",
    "multilabel_f1",
    "attribute_f1",
    "AttributeEvaluator",
    "group_scores",
]

# 0.50, 0.55, ..., 0.95 (rounded so that e.g. 0.55 is the double nearest to 0.55).
THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)
assert len(THRESHOLDS) == 10

# Above this many pixels per mask float32 sums of 0/1 are no longer exact.
_FLOAT32_EXACT = 2**24
# Rows of the left operand converted to float at once in mask_iou (bytes).
_CHUNK_BYTES = 64 * 2**20


def _as_masks(masks, name: str, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Return ``masks`` as an (N, H, W) array; empty inputs get shape (0, *hw)."""
    arr = np.asarray(masks)
    if arr.size == 0 and arr.ndim != 3:
        if arr.ndim >= 1 and arr.shape[0] == 0:
            return np.zeros((0, *(hw or (0, 0))), np.uint8)
    if arr.ndim != 3:
        raise ValueError(f"{name}: masks must have shape (N, H, W), got shape {arr.shape}")
    return arr


def _flat_bool(masks: np.ndarray) -> np.ndarray:
    flat = masks.reshape(masks.shape[0], -1)
    return flat if flat.dtype == np.bool_ else flat != 0


def mask_iou(a, b) -> np.ndarray:
    """IoU matrix of two stacks of masks.

    Args:
        a: (Na, H, W) masks, nonzero = foreground.
        b: (Nb, H, W) masks of the same H, W.

    Returns:
        (Na, Nb) float64 array, ``iou[i, j] = |a_i & b_j| / |a_i | b_j|``
        (0 where both masks are empty).

    Intersections come from one matrix product of the flattened masks
    (float32, exact while H*W < 2**24; float64 beyond), in row chunks to bound
    memory.
    """
    a = _as_masks(a, "mask_iou(a)")
    b = _as_masks(b, "mask_iou(b)")
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(f"mask_iou: mask sizes differ: a is {a.shape}, b is {b.shape}")
    na, nb = a.shape[0], b.shape[0]
    if na == 0 or nb == 0:
        return np.zeros((na, nb), np.float64)
    fa, fb = _flat_bool(a), _flat_bool(b)
    hw = fa.shape[1]
    dtype = np.float32 if hw < _FLOAT32_EXACT else np.float64
    area_a = fa.sum(1, dtype=np.int64)
    area_b = fb.sum(1, dtype=np.int64)
    fbt = fb.astype(dtype).T
    inter = np.empty((na, nb), np.float64)
    step = max(1, _CHUNK_BYTES // max(1, hw * np.dtype(dtype).itemsize))
    for s in range(0, na, step):
        inter[s : s + step] = fa[s : s + step].astype(dtype) @ fbt
    inter = np.rint(inter)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def window_ious(a, b) -> np.ndarray:
    """IoU matrix of masks given as windows of one canvas: :func:`mask_iou` of the full masks, without them.

    Args:
        a: Na windows ``(y0, x0, mask)``: ``mask`` (h, w) bool is the part of the canvas at rows ``y0..``,
            columns ``x0..``; the canvas is empty elsewhere.
        b: Nb windows of the same canvas.

    Returns:
        (Na, Nb) float64, equal to ``mask_iou`` of the pasted masks (integer counts, 0 where both are empty).
        Pairs whose windows do not overlap are not looked at: crop each mask to its foreground first.
    """
    out = np.zeros((len(a), len(b)), np.float64)
    if not len(a) or not len(b):
        return out
    ba = np.array([(y, x, y + m.shape[0], x + m.shape[1]) for y, x, m in a], np.int64).reshape(-1, 4)
    bb = np.array([(y, x, y + m.shape[0], x + m.shape[1]) for y, x, m in b], np.int64).reshape(-1, 4)
    area_a = [int(np.count_nonzero(m)) for _, _, m in a]
    area_b = [int(np.count_nonzero(m)) for _, _, m in b]
    y0, x0 = np.maximum(ba[:, None, 0], bb[None, :, 0]), np.maximum(ba[:, None, 1], bb[None, :, 1])
    y1, x1 = np.minimum(ba[:, None, 2], bb[None, :, 2]), np.minimum(ba[:, None, 3], bb[None, :, 3])
    for i, j in zip(*np.nonzero((y1 > y0) & (x1 > x0))):
        (ya, xa, ma), (yb, xb, mb) = a[i], b[j]
        r0, r1, c0, c1 = int(y0[i, j]), int(y1[i, j]), int(x0[i, j]), int(x1[i, j])
        inter = int(np.count_nonzero(ma[r0 - ya:r1 - ya, c0 - xa:c1 - xa] & mb[r0 - yb:r1 - yb, c0 - xb:c1 - xb]))
        union = area_a[i] + area_b[j] - inter
        out[i, j] = inter / union if union else 0.0
    return out


def _greedy_tp(iou: np.ndarray, order: np.ndarray, threshold: float) -> int:
    """Number of greedy one-to-one matches with IoU > threshold (see module docstring)."""
    hit = iou > threshold
    if not hit.any():
        return 0
    matched = np.zeros(iou.shape[0], bool)
    tp = 0
    for j in order:
        cand = hit[:, j] & ~matched
        if not cand.any():
            continue
        g = int(np.argmax(np.where(cand, iou[:, j], -1.0)))
        matched[g] = True
        tp += 1
    return tp


def class_score(iou, pred_order=None, thresholds=THRESHOLDS) -> float:
    """Kaggle score of one class in one image.

    Args:
        iou: (Ngt, Npred) IoU matrix between the ground-truth and predicted
            masks of the class.
        pred_order: processing order of the prediction columns (a permutation
            of ``range(Npred)``, best score first); None = column order.
        thresholds: IoU thresholds; a pair is a hit when IoU > threshold.

    Returns:
        mean over thresholds of TP / (TP + FP + FN); 1.0 when Ngt = Npred = 0.
    """
    iou = np.asarray(iou, dtype=np.float64)
    if iou.ndim != 2:
        raise ValueError(f"class_score: iou must be 2-D (Ngt, Npred), got shape {iou.shape}")
    n_gt, n_pred = iou.shape
    if n_gt == 0 and n_pred == 0:
        return 1.0
    if pred_order is None:
        order = np.arange(n_pred)
    else:
        order = np.asarray(pred_order, dtype=np.int64).reshape(-1)
        if len(order) != n_pred or not np.array_equal(np.sort(order), np.arange(n_pred)):
            raise ValueError(
                f"class_score: pred_order must be a permutation of range({n_pred}), got {order.tolist()}"
            )
    thresholds = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if len(thresholds) == 0:
        raise ValueError("class_score: thresholds is empty")
    if n_gt == 0 or n_pred == 0:
        return 0.0
    scores = []
    for t in thresholds:
        tp = _greedy_tp(iou, order, float(t))
        scores.append(tp / (n_gt + n_pred - tp))
    return float(np.mean(scores))


def _plain(key):
    """numpy scalars -> Python scalars (so dict keys print and compare cleanly)."""
    return key.item() if isinstance(key, np.generic) else key


def _order_by_score(scores: np.ndarray | None, n: int) -> np.ndarray:
    if scores is None:
        return np.arange(n)
    return np.argsort(-scores, kind="stable")


def _check_inputs(gt_masks, gt_classes, pred_masks, pred_classes, pred_scores):
    gt = np.asarray(gt_masks)
    pr = np.asarray(pred_masks)
    hw = None
    for arr in (gt, pr):
        if arr.ndim == 3:
            hw = arr.shape[1:]
            break
    gt = _as_masks(gt, "gt_masks", hw)
    pr = _as_masks(pr, "pred_masks", hw)
    if gt.shape[1:] != pr.shape[1:] and gt.shape[0] and pr.shape[0]:
        raise ValueError(f"mask sizes differ: gt_masks {gt.shape}, pred_masks {pr.shape}")
    gt_classes = [_plain(c) for c in gt_classes]
    pred_classes = [_plain(c) for c in pred_classes]
    if len(gt_classes) != gt.shape[0]:
        raise ValueError(f"{len(gt_classes)} gt_classes for {gt.shape[0]} gt_masks")
    if len(pred_classes) != pr.shape[0]:
        raise ValueError(f"{len(pred_classes)} pred_classes for {pr.shape[0]} pred_masks")
    scores = None
    if pred_scores is not None:
        scores = np.asarray(pred_scores, dtype=np.float64).reshape(-1)
        if len(scores) != pr.shape[0]:
            raise ValueError(f"{len(scores)} pred_scores for {pr.shape[0]} pred_masks")
        if np.isnan(scores).any():
            raise ValueError("pred_scores contains NaN")
    return gt, gt_classes, pr, pred_classes, scores


def image_score(
    gt_masks,
    gt_classes: Sequence[Hashable],
    pred_masks,
    pred_classes: Sequence[Hashable],
    pred_scores=None,
    thresholds=THRESHOLDS,
    return_per_class: bool = False,
):
    """Kaggle score of one image.

    Args:
        gt_masks: (N, H, W) ground-truth masks (N may be 0).
        gt_classes: N hashable class keys (full ClassId strings, or categories).
        pred_masks: (M, H, W) predicted masks (M may be 0).
        pred_classes: M class keys.
        pred_scores: (M,) confidences (higher first, stable), or None for input order.
        thresholds: IoU thresholds (hit = IoU > threshold).
        return_per_class: also return ``{class: score}`` for the classes scored.

    Returns:
        the image score (1.0 when there is neither ground truth nor prediction),
        or ``(score, per_class)`` with ``return_per_class``.
    """
    gt, gt_classes, pr, pred_classes, scores = _check_inputs(
        gt_masks, gt_classes, pred_masks, pred_classes, pred_scores
    )
    per_class = {}
    gt_idx: dict = {}
    pr_idx: dict = {}
    for i, c in enumerate(gt_classes):
        gt_idx.setdefault(c, []).append(i)
    for j, c in enumerate(pred_classes):
        pr_idx.setdefault(c, []).append(j)
    for c in dict.fromkeys(gt_classes + pred_classes):
        gi = gt_idx.get(c, [])
        pj = pr_idx.get(c, [])
        if not gi or not pj:
            per_class[c] = 0.0
            continue
        iou = mask_iou(gt[gi], pr[pj])
        order = _order_by_score(None if scores is None else scores[pj], len(pj))
        per_class[c] = class_score(iou, order, thresholds)
    score = float(np.mean(list(per_class.values()))) if per_class else 1.0
    return (score, per_class) if return_per_class else score


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


def _sorted_dict(d: dict) -> dict:
    try:
        return dict(sorted(d.items()))
    except TypeError:  # mixed key types: keep insertion order
        return dict(d)


def coco_records(gt_masks, gt_classes, pred_masks, pred_classes, pred_scores=None,
                 category_of: Callable[[Hashable], Hashable] = class_to_category) -> tuple[dict, dict | None]:
    """One image's part of :func:`coco_mask_ap`'s input, without its ``image_id``: the ground truth's
    ``height, width, masks_rle, categories`` and the predictions' ``masks_rle, categories, scores`` (None
    without predictions; no scores = 1.0 each). Masks (N, H, W) as in :func:`image_score`."""
    gt, pr = np.asarray(gt_masks), np.asarray(pred_masks)
    h, w = (gt.shape[1:] if gt.shape[0] or not pr.shape[0] else pr.shape[1:])
    gt_rec = {"height": int(h), "width": int(w), "masks_rle": encode_masks(gt),
              "categories": [category_of(c) for c in gt_classes]}
    if not pr.shape[0]:
        return gt_rec, None
    scores = np.ones(pr.shape[0]) if pred_scores is None else np.asarray(pred_scores, np.float64)
    return gt_rec, {"masks_rle": encode_masks(pr), "categories": [category_of(c) for c in pred_classes],
                    "scores": scores.tolist()}


class Evaluator:
    """Accumulates the Kaggle metric (and optionally COCO mask AP) over images.

    Usage::

        ev = Evaluator(coco=True)
        for image_id, ... in data:
            ev.add(image_id, gt_masks, gt_classes, pred_masks, pred_classes, pred_scores)
        ev.summary()  # {"kaggle", "num_images", "per_class", "coco"}

    Args:
        thresholds: IoU thresholds of the Kaggle metric.
        coco: also keep masks as compressed RLEs for :func:`coco_mask_ap`
            (categories from :func:`class_to_category`).
        category_of: class key -> COCO category.
        max_dets: COCO detections per image.
    """

    def __init__(
        self,
        thresholds=THRESHOLDS,
        coco: bool = True,
        category_of: Callable[[Hashable], Hashable] = class_to_category,
        max_dets: int = 100,
    ):
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.coco = bool(coco)
        self.category_of = category_of
        self.max_dets = int(max_dets)
        self.image_scores: dict = {}  # image_id -> score
        self._class_scores: dict = {}  # class -> list of scores
        self._coco_gt: list[dict] = []
        self._coco_pred: list[dict] = []

    def __len__(self) -> int:
        return len(self.image_scores)

    def add(self, image_id, gt_masks, gt_classes, pred_masks, pred_classes, pred_scores=None) -> float:
        """Score one image (arguments as :func:`image_score`); returns its score.

        Without ``pred_scores`` the COCO evaluation gives every prediction
        score 1.0 (its stable sort then keeps input order within an image).
        """
        gt, gt_classes, pr, pred_classes, scores = _check_inputs(
            gt_masks, gt_classes, pred_masks, pred_classes, pred_scores
        )
        score, per_class = image_score(
            gt, gt_classes, pr, pred_classes, scores, self.thresholds, return_per_class=True
        )
        coco = coco_records(gt, gt_classes, pr, pred_classes, scores, self.category_of) if self.coco else (None, None)
        return self.add_scored(image_id, score, per_class, *coco)

    def add_scored(self, image_id, score: float, per_class: dict, coco_gt: dict | None = None,
                   coco_pred: dict | None = None) -> float:
        """Add an image scored elsewhere (e.g. in a worker process): its Kaggle ``score`` and ``per_class``
        (:func:`image_score`) and, with ``coco``, its :func:`coco_records`. Returns ``score``."""
        image_id = _plain(image_id)
        if image_id in self.image_scores:
            raise ValueError(f"Evaluator.add: image_id {image_id!r} was already added")
        self.image_scores[image_id] = score
        for c, s in per_class.items():
            self._class_scores.setdefault(c, []).append(s)
        if self.coco:
            self._coco_gt.append({"image_id": image_id, **coco_gt})
            if coco_pred is not None:
                self._coco_pred.append({"image_id": image_id, **coco_pred})
        return score

    def merge(self, other: "Evaluator") -> "Evaluator":
        """Append ``other``'s images after this one's (as if they had been added here, in that order; e.g. the
        shards of a distributed evaluation, in rank order); returns self."""
        dup = set(self.image_scores) & set(other.image_scores)
        if dup:
            raise ValueError(f"Evaluator.merge: image_ids in both: {sorted(map(str, dup))[:5]}")
        self.image_scores.update(other.image_scores)
        for c, v in other._class_scores.items():
            self._class_scores.setdefault(c, []).extend(v)
        self._coco_gt.extend(other._coco_gt)
        self._coco_pred.extend(other._coco_pred)
        return self

    def summary(self) -> dict:
        """``dict(kaggle, num_images, per_class, coco)``.

        ``kaggle`` is the mean image score (nan with no images); ``per_class``
        maps each class key to its mean score over the images where it is in
        the ground truth or the predictions; ``coco`` is :func:`coco_mask_ap`'s
        dict, or None when ``coco=False``.
        """
        n = len(self.image_scores)
        kaggle = float(np.mean(list(self.image_scores.values()))) if n else float("nan")
        per_class = _sorted_dict({c: float(np.mean(v)) for c, v in self._class_scores.items()})
        coco = None
        if self.coco:
            coco = coco_mask_ap(self._coco_gt, self._coco_pred, max_dets=self.max_dets)
            coco["per_category"] = _sorted_dict(coco["per_category"])
        return {"kaggle": kaggle, "num_images": n, "per_class": per_class, "coco": coco}


# --------------------------------------------------------------------------------------------- attributes
def match_instances(gt_masks, gt_classes, pred_masks, pred_classes, pred_scores=None,
                    iou_threshold: float = 0.5) -> np.ndarray:
    """Greedy one-to-one matching of predicted to ground-truth instances of the same class.

    Predictions are taken in descending score order (stable; ``pred_scores=None`` = input order); each
    takes the still-unmatched ground-truth instance of its class with the highest mask IoU, provided that
    IoU is ``>= iou_threshold`` (equal IoUs go to the lower ground-truth index).

    Args:
        gt_masks: (N, H, W) masks; gt_classes: N class keys (category ids).
        pred_masks: (M, H, W) masks; pred_classes: M class keys; pred_scores: (M,) or None.

    Returns:
        (K, 2) int64 array of ``(gt index, pred index)`` pairs, in matching order.
    """
    gt, gt_classes, pr, pred_classes, scores = _check_inputs(
        gt_masks, gt_classes, pred_masks, pred_classes, pred_scores
    )
    pairs: list[tuple[int, int]] = []
    gt_idx: dict = {}
    for i, c in enumerate(gt_classes):
        gt_idx.setdefault(c, []).append(i)
    order = _order_by_score(scores, len(pred_classes))
    ious: dict = {}
    taken = np.zeros(len(gt_classes), bool)
    for j in order:
        gi = gt_idx.get(pred_classes[j])
        if not gi:
            continue
        c = pred_classes[j]
        if c not in ious:  # IoU of every prediction of class c with its ground truth: (Ngt_c, Npred_c)
            pj = [k for k, pc in enumerate(pred_classes) if pc == c]
            ious[c] = (dict(zip(pj, range(len(pj)))), mask_iou(gt[gi], pr[pj]))
        col, iou = ious[c]
        cand = np.where(~taken[gi] & (iou[:, col[j]] >= iou_threshold), iou[:, col[j]], -1.0)
        if cand.max() < 0:
            continue
        g = gi[int(np.argmax(cand))]
        taken[g] = True
        pairs.append((g, int(j)))
    return np.array(pairs, np.int64).reshape(-1, 2)


def _attribute_width(*arrays) -> int:
    """A (number of attributes) from the first 2-D array given; N_ATTRIBUTES when none is."""
    for x in arrays:
        if x is not None and np.ndim(x) == 2:
            return int(np.shape(x)[1])
    return N_ATTRIBUTES


def _attribute_rows(x, n: int, name: str, num_attributes: int) -> np.ndarray:
    """``x`` as an (n, num_attributes) float64 array (None, or an empty ``x`` with n = 0: zeros)."""
    if x is None or (n == 0 and np.size(x) == 0):
        return np.zeros((n, num_attributes))
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape != (n, num_attributes):
        raise ValueError(f"{name} must have shape ({n}, {num_attributes}) (instances x attributes), got {arr.shape}")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def matched_attributes(gt_masks, gt_classes, gt_attributes, pred_masks, pred_classes, pred_scores,
                       pred_attr_scores, iou_threshold: float = 0.5,
                       categories=ATTRIBUTE_CATEGORIES) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth attributes and predicted attribute scores of the matched instances of one image.

    Only instances whose class is in ``categories`` (None = all) take part; they are matched with
    :func:`match_instances`. ``gt_attributes``: (N, A) multi-hot (nonzero = present);
    ``pred_attr_scores``: (M, A) scores, or None (a model without attributes: all scores 0). A is taken
    from ``gt_attributes`` when 2-D, else from ``pred_attr_scores`` (92 when neither is).

    Returns:
        ``(gt, scores)``: (K, A) bool and (K, A) float64, one row per matched pair.
    """
    gt, gt_classes, pr, pred_classes, scores = _check_inputs(
        gt_masks, gt_classes, pred_masks, pred_classes, pred_scores
    )
    n_attr = _attribute_width(gt_attributes, pred_attr_scores)
    a_gt = _attribute_rows(gt_attributes, len(gt_classes), "gt_attributes", n_attr)
    a_pr = _attribute_rows(pred_attr_scores, len(pred_classes), "pred_attr_scores", n_attr)
    allowed = None if categories is None else {_plain(c) for c in categories}
    gi = [i for i, c in enumerate(gt_classes) if allowed is None or c in allowed]
    pj = [j for j, c in enumerate(pred_classes) if allowed is None or c in allowed]
    pairs = match_instances(
        gt[gi], [gt_classes[i] for i in gi], pr[pj], [pred_classes[j] for j in pj],
        None if scores is None else scores[pj], iou_threshold,
    )
    g = np.asarray(gi, np.int64)[pairs[:, 0]] if len(pairs) else np.zeros(0, np.int64)
    p = np.asarray(pj, np.int64)[pairs[:, 1]] if len(pairs) else np.zeros(0, np.int64)
    return a_gt[g] != 0, a_pr[p]


def multilabel_f1(gt, scores, threshold: float = 0.5) -> dict:
    """Micro and macro F1 of ``scores >= threshold`` against ``gt``, both (K, A) (rows = instances).

    Per attribute a: TP/FP/FN over the K rows; F1_a = 2 TP / (2 TP + FP + FN), defined when that
    denominator is > 0 (the attribute is in the ground truth or predicted at least once).

    Returns:
        ``micro_f1`` (TP/FP/FN summed over attributes), ``macro_f1`` (mean F1_a over the attributes
        where it is defined), ``precision`` / ``recall`` (micro), ``tp, fp, fn`` (totals),
        ``per_attribute`` ({attribute id: F1_a} for defined ones), ``num_instances`` (K),
        ``threshold``. Undefined scores (nothing in the ground truth nor predicted) are nan.
    """
    gt = np.asarray(gt) != 0
    scores = np.asarray(scores, dtype=np.float64)
    if gt.shape != scores.shape or gt.ndim != 2:
        raise ValueError(f"gt and scores must be (K, A) arrays of one shape, got {gt.shape} and {scores.shape}")
    pred = scores >= threshold
    tp = (gt & pred).sum(0)
    fp = (~gt & pred).sum(0)
    fn = (gt & ~pred).sum(0)
    den = 2 * tp + fp + fn
    f1 = np.divide(2.0 * tp, den, out=np.full(den.shape, np.nan), where=den > 0)
    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    nan = float("nan")
    return {
        "micro_f1": 2 * TP / (2 * TP + FP + FN) if 2 * TP + FP + FN else nan,
        "macro_f1": float(np.mean(f1[den > 0])) if (den > 0).any() else nan,
        "precision": TP / (TP + FP) if TP + FP else nan,
        "recall": TP / (TP + FN) if TP + FN else nan,
        "tp": TP,
        "fp": FP,
        "fn": FN,
        "per_attribute": {int(a): float(f1[a]) for a in np.flatnonzero(den > 0)},
        "num_instances": int(gt.shape[0]),
        "threshold": float(threshold),
    }


def attribute_f1(gt_masks, gt_classes, gt_attributes, pred_masks, pred_classes, pred_scores, pred_attr_scores,
                 threshold: float = 0.5, iou_threshold: float = 0.5, categories=ATTRIBUTE_CATEGORIES) -> dict:
    """Attribute F1 of one image's predictions (for a dataset use :class:`AttributeEvaluator`).

    Convention:

    * only instances whose class (category id) is in ``categories`` take part (default
      ``lib.labels.ATTRIBUTE_CATEGORIES``, the categories whose ClassIds carry attributes; None = all);
    * predictions are matched to ground-truth instances of the same category by mask IoU
      ``>= iou_threshold`` (0.5), greedily by descending score (:func:`match_instances`); unmatched
      predictions and ground truth are ignored (detection quality is the Kaggle metric's business);
    * on the matched pairs an attribute is predicted when its score is ``>= threshold``, and
      :func:`multilabel_f1` gives micro F1 (TP/FP/FN pooled over attributes and instances) and macro
      F1 (mean over the attributes present in the ground truth or the predictions of the matched pairs).

    Args:
        gt_masks: (N, H, W); gt_classes: N category ids; gt_attributes: (N, A) multi-hot.
        pred_masks: (M, H, W); pred_classes: M category ids; pred_scores: (M,) or None (input order);
        pred_attr_scores: (M, A) attribute scores in 0..1, or None (no attributes predicted).

    Returns:
        :func:`multilabel_f1`'s dict plus ``num_gt`` / ``num_pred`` (instances of ``categories``).
    """
    ev = AttributeEvaluator(threshold=threshold, iou_threshold=iou_threshold, categories=categories)
    ev.add(gt_masks, gt_classes, gt_attributes, pred_masks, pred_classes, pred_scores, pred_attr_scores)
    return ev.summary()


class AttributeEvaluator:
    """Accumulates :func:`attribute_f1` over images (TP/FP/FN pooled over every matched pair).

    Usage::

        ev = AttributeEvaluator()
        for ... in data:
            ev.add(gt_masks, gt_classes, gt_attributes, pred_masks, pred_classes, pred_scores, pred_attr_scores)
        ev.summary()  # at the default threshold; ev.summary(0.3) for another one
    """

    def __init__(self, threshold: float = 0.5, iou_threshold: float = 0.5, categories=ATTRIBUTE_CATEGORIES):
        self.threshold = float(threshold)
        self.iou_threshold = float(iou_threshold)
        self.categories = None if categories is None else tuple(categories)
        self._gt: list[np.ndarray] = []
        self._scores: list[np.ndarray] = []
        self.num_gt = 0
        self.num_pred = 0

    def add(self, gt_masks, gt_classes, gt_attributes, pred_masks, pred_classes, pred_scores=None,
            pred_attr_scores=None) -> int:
        """Match one image (arguments as :func:`attribute_f1`); returns its number of matched pairs."""
        gt, scores = matched_attributes(gt_masks, gt_classes, gt_attributes, pred_masks, pred_classes,
                                        pred_scores, pred_attr_scores, self.iou_threshold, self.categories)
        if self._gt and gt.shape[1] != self._gt[0].shape[1]:
            raise ValueError(f"AttributeEvaluator.add: {gt.shape[1]} attributes, earlier images had "
                             f"{self._gt[0].shape[1]}")
        self._gt.append(gt)
        self._scores.append(scores)
        allowed = None if self.categories is None else set(self.categories)
        self.num_gt += sum(1 for c in gt_classes if allowed is None or _plain(c) in allowed)
        self.num_pred += sum(1 for c in pred_classes if allowed is None or _plain(c) in allowed)
        return int(gt.shape[0])

    def merge(self, other: "AttributeEvaluator") -> "AttributeEvaluator":
        """Append ``other``'s instances after this one's (see :meth:`Evaluator.merge`); returns self."""
        self._gt.extend(other._gt)
        self._scores.extend(other._scores)
        self.num_gt += other.num_gt
        self.num_pred += other.num_pred
        return self

    def summary(self, threshold: float | None = None) -> dict:
        """:func:`multilabel_f1` of every matched pair so far, plus ``num_gt`` / ``num_pred``."""
        n_attr = self._gt[0].shape[1] if self._gt else N_ATTRIBUTES
        gt = np.concatenate(self._gt) if self._gt else np.zeros((0, n_attr), bool)
        scores = np.concatenate(self._scores) if self._scores else np.zeros((0, n_attr))
        out = multilabel_f1(gt, scores, self.threshold if threshold is None else threshold)
        out.update(num_gt=self.num_gt, num_pred=self.num_pred)
        return out


# --------------------------------------------------------------------------------------------- class groups
def group_scores(per_class, groups, category_of: Callable[[Hashable], Hashable] = class_to_category) -> dict:
    """Mean of per-class values over the classes of each group of categories.

    Args:
        per_class: ``{class key: value}``, e.g. :meth:`Evaluator.summary`'s ``per_class`` (Kaggle class
            scores) or :func:`coco_mask_ap`'s ``per_category`` (AP per category); keys are mapped to
            categories with ``category_of`` (``"10_7_20"`` -> 10, ``6`` -> 6). NaN values are skipped.
        groups: ``{group name: category ids}``, e.g. :data:`lib.labels.CATEGORY_GROUPS`.

    Returns:
        ``{group name: mean}`` (nan for a group without any class in ``per_class``). For COCO AP per
        category this is exactly the COCO mask AP of the group (COCO averages over categories); for
        Kaggle class scores it is the macro mean over the group's classes, not the image-averaged
        Kaggle metric of the group.
    """
    out = {}
    for name, cats in groups.items():
        members = {_plain(c) for c in cats}
        vals = [float(v) for k, v in per_class.items()
                if category_of(k) in members and v is not None and not np.isnan(float(v))]
        out[name] = float(np.mean(vals)) if vals else float("nan")
    return out
