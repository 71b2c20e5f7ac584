"""Attribute F1 of the instances a detector found.

Attribute F1 (:func:`attribute_f1`, :class:`AttributeEvaluator`) scores predicted attributes on the
instances a detector found, leaving detection quality to the Kaggle metric (lib/kaggle_metric.py) and
COCO mask AP (lib/coco_metric.py); see :func:`attribute_f1` for the convention.
"""
from __future__ import annotations

import numpy as np

from .kaggle_metric import _check_inputs, _order_by_score, _plain, mask_iou
from .labels import ATTRIBUTE_CATEGORIES, N_ATTRIBUTES

__all__ = [
    "match_instances",
    "greedy_matches",
    "matched_attributes",
    "matched_window_attributes",
    "multilabel_f1",
    "attribute_f1",
    "AttributeEvaluator",
    "THRESHOLD_GRID",
    "MIN_POSITIVES",
    "tune_thresholds",
]

# The per-attribute thresholds :func:`tune_thresholds` tries, and the fewest ground-truth positives an attribute
# needs on the tuning split to get its own (fewer: the shared threshold; one or two examples overfit).
THRESHOLD_GRID = tuple(np.round(np.arange(0.05, 1.0, 0.05), 2))
MIN_POSITIVES = 5


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
    return greedy_matches(gt_classes, pred_classes, scores, lambda gi, pj: mask_iou(gt[gi], pr[pj]), iou_threshold)


def greedy_matches(gt_classes, pred_classes, pred_scores, iou_of, iou_threshold: float = 0.5) -> np.ndarray:
    """:func:`match_instances` with the IoUs from ``iou_of(gt indices, pred indices)`` -> (len, len) array,
    asked once per class (e.g. :func:`lib.kaggle_metric.window_ious` of cropped windows, without full masks).
    ``pred_scores``: (M,) or None (input order). Returns the (K, 2) ``(gt index, pred index)`` pairs."""
    gt_classes, pred_classes = list(gt_classes), list(pred_classes)
    pairs: list[tuple[int, int]] = []
    gt_idx: dict = {}
    for i, c in enumerate(gt_classes):
        gt_idx.setdefault(c, []).append(i)
    order = _order_by_score(None if pred_scores is None else np.asarray(pred_scores, np.float64), len(pred_classes))
    ious: dict = {}
    taken = np.zeros(len(gt_classes), bool)
    for j in order:
        gi = gt_idx.get(pred_classes[j])
        if not gi:
            continue
        c = pred_classes[j]
        if c not in ious:  # IoU of every prediction of class c with its ground truth: (Ngt_c, Npred_c)
            pj = [k for k, pc in enumerate(pred_classes) if pc == c]
            ious[c] = (dict(zip(pj, range(len(pj)))), np.asarray(iou_of(gi, pj), np.float64))
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
    return matched_window_attributes(gt_classes, gt_attributes, pred_classes, scores, pred_attr_scores,
                                     lambda gi, pj: mask_iou(gt[gi], pr[pj]), iou_threshold, categories)


def matched_window_attributes(gt_classes, gt_attributes, pred_classes, pred_scores, pred_attr_scores, iou_of,
                              iou_threshold: float = 0.5,
                              categories=ATTRIBUTE_CATEGORIES) -> tuple[np.ndarray, np.ndarray]:
    """:func:`matched_attributes` with the IoUs from ``iou_of(gt indices, pred indices)`` (as
    :func:`greedy_matches`; indices into all N / M instances), for masks kept as windows."""
    gt_classes = [_plain(c) for c in gt_classes]
    pred_classes = [_plain(c) for c in pred_classes]
    n_attr = _attribute_width(gt_attributes, pred_attr_scores)
    a_gt = _attribute_rows(gt_attributes, len(gt_classes), "gt_attributes", n_attr)
    a_pr = _attribute_rows(pred_attr_scores, len(pred_classes), "pred_attr_scores", n_attr)
    allowed = None if categories is None else {_plain(c) for c in categories}
    gi = [i for i, c in enumerate(gt_classes) if allowed is None or c in allowed]
    pj = [j for j, c in enumerate(pred_classes) if allowed is None or c in allowed]
    scores = None if pred_scores is None else np.asarray(pred_scores, np.float64)
    pairs = greedy_matches([gt_classes[i] for i in gi], [pred_classes[j] for j in pj],
                           None if scores is None else scores[pj],
                           lambda g, p: iou_of([gi[k] for k in g], [pj[k] for k in p]), iou_threshold)
    g = np.asarray(gi, np.int64)[pairs[:, 0]] if len(pairs) else np.zeros(0, np.int64)
    p = np.asarray(pj, np.int64)[pairs[:, 1]] if len(pairs) else np.zeros(0, np.int64)
    return a_gt[g] != 0, a_pr[p]


def _pair_arrays(gt, scores) -> tuple[np.ndarray, np.ndarray]:
    """Matched pairs' ``gt`` (K, A) as bool and ``scores`` (K, A) as float64; ``ValueError`` unless both are
    (K, A) of one shape."""
    gt = np.asarray(gt) != 0
    scores = np.asarray(scores, dtype=np.float64)
    if gt.shape != scores.shape or gt.ndim != 2:
        raise ValueError(f"gt and scores must be (K, A) arrays of one shape, got {gt.shape} and {scores.shape}")
    return gt, scores


def multilabel_f1(gt, scores, threshold=0.5) -> dict:
    """Micro and macro F1 of ``scores >= threshold`` against ``gt``, both (K, A) (rows = instances);
    ``threshold`` one float, or (A,) per attribute (:func:`tune_thresholds`).

    Per attribute a: TP/FP/FN over the K rows; F1_a = 2 TP / (2 TP + FP + FN), defined when that
    denominator is > 0 (the attribute is in the ground truth or predicted at least once).

    Returns:
        ``micro_f1`` (TP/FP/FN summed over attributes), ``macro_f1`` (mean F1_a over the attributes
        where it is defined), ``precision`` / ``recall`` (micro), ``tp, fp, fn`` (totals),
        ``per_attribute`` ({attribute id: F1_a} for defined ones), ``num_instances`` (K),
        ``threshold`` (a float, or a list of A). Undefined scores (nothing in the ground truth nor predicted) are
        nan.
    """
    gt, scores = _pair_arrays(gt, scores)
    thr = np.asarray(threshold, np.float64)
    if thr.ndim and thr.shape != (gt.shape[1],):
        raise ValueError(f"threshold must be a float or one per attribute ({gt.shape[1]}), got shape {thr.shape}")
    pred = scores >= thr
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
        "threshold": thr.tolist() if thr.ndim else float(thr),
    }


def tune_thresholds(gt, scores, default: float = 0.5, grid=THRESHOLD_GRID, min_positives: int = MIN_POSITIVES,
                    objective: str = "micro") -> np.ndarray:
    """Per-attribute thresholds tuned on matched pairs (06's tuning split), starting from one shared threshold.

    ``objective``:

    * ``"micro"`` (06's): micro F1 (TP / FP / FN pooled over attributes), by coordinate ascent: each
      attribute in turn takes the threshold that maximises the pooled F1 given the others', until none changes
      (at most 5 sweeps). It never ends below the shared threshold's micro F1 on these pairs. Per-instance
      correctness, which the Kaggle metrics count (2019: the exact ClassId), follows the frequent attributes
      that micro F1 weighs.
    * ``"macro"``: each attribute's own F1 (independent per attribute), which lowers the thresholds of rare
      attributes and trades micro F1 for macro F1.

    Args:
        gt: (K, A) multi-hot ground truth of the matched pairs; scores: (K, A) attribute scores
            (:meth:`AttributeEvaluator.pairs`).
        default: the shared threshold: the start, and kept by the attributes with fewer than ``min_positives``
            ground-truth positives.
        grid: the thresholds tried (with ``default``); ties go to the one nearest ``default``, then the lower.

    Returns:
        (A,) float64 thresholds.
    """
    if objective not in ("micro", "macro"):
        raise ValueError(f"objective must be 'micro' or 'macro', got {objective!r}")
    gt, scores = _pair_arrays(gt, scores)
    cand = np.unique(np.append(np.asarray(grid, np.float64), default))
    cand = cand[np.argsort(np.abs(cand - default), kind="stable")]  # nearest the default first: argmax keeps it
    pred = scores[:, :, None] >= cand[None, None, :]  # (K, A, G); cand[0] is the default
    tp = (pred & gt[:, :, None]).sum(0)
    fp = (pred & ~gt[:, :, None]).sum(0)
    fn = gt.sum(0)[:, None] - tp  # (A, G) each
    own = np.flatnonzero(gt.sum(0) >= max(1, min_positives))
    pick = np.zeros(gt.shape[1], np.int64)
    if objective == "macro":
        den = 2 * tp + fp + fn
        f1 = np.divide(2.0 * tp, den, out=np.zeros(den.shape), where=den > 0)
        pick[own] = np.argmax(f1[own], axis=1)
    else:
        rows = np.arange(gt.shape[1])
        for _ in range(5):
            changed = False
            for a in own:
                TP, FP, FN = (x[rows, pick].sum() - x[a, pick[a]] + x[a] for x in (tp, fp, fn))  # (G,) each
                den = 2 * TP + FP + FN
                f1 = np.divide(2.0 * TP, den, out=np.zeros(den.shape), where=den > 0)
                best = int(np.argmax(f1))
                if f1[best] > f1[pick[a]]:
                    pick[a], changed = best, True
            if not changed:
                break
    return cand[pick]


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
        """Append ``other``'s instances after this one's (see :meth:`lib.evaluator.Evaluator.merge`); returns self."""
        self._gt.extend(other._gt)
        self._scores.extend(other._scores)
        self.num_gt += other.num_gt
        self.num_pred += other.num_pred
        return self

    def pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """Every matched pair so far: ``(gt, scores)``, (K, A) bool and (K, A) float64."""
        n_attr = self._gt[0].shape[1] if self._gt else N_ATTRIBUTES
        gt = np.concatenate(self._gt) if self._gt else np.zeros((0, n_attr), bool)
        scores = np.concatenate(self._scores) if self._scores else np.zeros((0, n_attr))
        return gt, scores

    def summary(self, threshold=None) -> dict:
        """:func:`multilabel_f1` of every matched pair so far (at ``threshold``: a float or (A,); None = the
        evaluator's), plus ``num_gt`` / ``num_pred``."""
        out = multilabel_f1(*self.pairs(), self.threshold if threshold is None else threshold)
        out.update(num_gt=self.num_gt, num_pred=self.num_pred)
        return out

