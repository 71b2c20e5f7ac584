"""The iMaterialist (Fashion) 2019 competition metric (Kaggle) and the mask IoU it is built on.

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

The 2020 edition's metric (iMaterialist Fashion 2020, as its evaluation page reads) adds an attribute condition:
classes are categories, and at each pair of thresholds (IoU t_i, attribute F1 t_f), both over 0.50:0.05:0.95, a
prediction hits a ground-truth object when their IoU > t_i and, if the object has attributes, the F1 of the two
attribute sets > t_f (:func:`attribute_set_f1`; ``class_score(..., f1=...)``); the class score is the mean over
all pairs. The page's quoted precision TP / (TP + FP) is read here as the 2019 one, TP / (TP + FP + FN).

The other metrics build on this module: COCO mask AP in lib/coco_metric.py, attribute F1 in
lib/attribute_metric.py; lib/evaluator.py accumulates the Kaggle metric and COCO mask AP over a dataset.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

__all__ = [
    "THRESHOLDS",
    "mask_iou",
    "mask_window",
    "window_ious",
    "class_score",
    "attribute_set_f1",
    "image_score",
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


def mask_window(mask: np.ndarray, y0: int = 0, x0: int = 0) -> tuple[int, int, np.ndarray]:
    """A mask (nonzero = foreground) at rows ``y0..``, columns ``x0..`` of a canvas -> the window
    :func:`window_ious` takes: ``(y, x, (h, w) bool)`` cropped to its foreground (a 0 x 0 window when empty)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return y0, x0, np.zeros((0, 0), bool)
    return y0 + int(rows[0]), x0 + int(cols[0]), mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1] != 0


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


def attribute_set_f1(gt_attributes, pred_attributes) -> np.ndarray:
    """(Ngt, Npred) F1 of each ground-truth and predicted instance's attribute sets, ``2 |G & P| / (|G| + |P|)``;
    NaN in the rows of ground truth without attributes (no condition on them, the 2020 edition's rule).
    ``gt_attributes`` / ``pred_attributes``: one iterable of attribute ids per instance."""
    gs, ps = [set(g) for g in gt_attributes], [set(p) for p in pred_attributes]
    out = np.full((len(gs), len(ps)), np.nan)
    for i, g in enumerate(gs):
        if g:
            out[i] = [2 * len(g & p) / (len(g) + len(p)) for p in ps]
    return out


def class_score(iou, pred_order=None, thresholds=THRESHOLDS, f1=None, f1_thresholds=THRESHOLDS) -> float:
    """Kaggle score of one class in one image.

    Args:
        iou: (Ngt, Npred) IoU matrix between the ground-truth and predicted
            masks of the class.
        pred_order: processing order of the prediction columns (a permutation
            of ``range(Npred)``, best score first); None = column order.
        thresholds: IoU thresholds; a pair is a hit when IoU > threshold.
        f1: None (2019), or the 2020 edition's attribute condition: (Ngt, Npred) attribute-set F1
            (:func:`attribute_set_f1`; NaN = ground truth without attributes, no condition). At each pair of
            thresholds (IoU, F1) a pair is then a hit when IoU > the IoU threshold and, where ``f1`` is not NaN,
            F1 > the F1 threshold; the score is the mean over all such pairs (``thresholds`` x ``f1_thresholds``).

    Returns:
        mean over thresholds of TP / (TP + FP + FN); 1.0 when Ngt = Npred = 0.
    """
    if f1 is not None:
        iou, f1 = np.asarray(iou, dtype=np.float64), np.asarray(f1, dtype=np.float64)
        if f1.shape != iou.shape:
            raise ValueError(f"class_score: f1 must have the shape of iou {iou.shape}, got {f1.shape}")
        can_hit = iou > np.min(thresholds)  # the pairs any IoU threshold lets through
        memo: dict = {}  # F1 thresholds that let the same of those pairs through score alike
        out = []
        for tf in np.asarray(f1_thresholds, np.float64).reshape(-1):
            gate = np.isnan(f1) | (f1 > tf)
            key = (gate & can_hit).tobytes()
            if key not in memo:
                memo[key] = class_score(np.where(gate, iou, 0.0), pred_order, thresholds)
            out.append(memo[key])
        return float(np.mean(out))
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
