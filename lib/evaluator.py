"""The Kaggle metric (lib/kaggle_metric.py) and COCO mask AP (lib/coco_metric.py) over a dataset.

:class:`Evaluator` accumulates both image by image (or from images scored in worker processes, and from
the shards of a distributed evaluation); :func:`group_scores` averages their per-class values over
groups of categories.
"""
from __future__ import annotations

from typing import Callable, Hashable

import numpy as np

from .coco_metric import class_to_category, coco_mask_ap, coco_records
from .kaggle_metric import THRESHOLDS, _check_inputs, _plain, image_score

__all__ = [
    "Evaluator",
    "group_scores",
]


def _sorted_dict(d: dict) -> dict:
    try:
        return dict(sorted(d.items()))
    except TypeError:  # mixed key types: keep insertion order
        return dict(d)


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
