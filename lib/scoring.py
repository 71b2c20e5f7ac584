"""Scoring a prediction table after post-processing against train.csv-format ground truth.

:func:`score_table`: the Kaggle metric (:mod:`lib.metric`) of the post-processed instances and COCO mask AP
of the ranked ones, per class too; :func:`class_scores`: per image, the class scores tuning reads.
Submission placeholder rows (:data:`lib.submission.PLACEHOLDER`) are not part of this: an image without
any instance scores as predicting nothing.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import kaggle_data as lkaggle
from . import labels as llabels
from .metric import Evaluator, image_score
from .postprocess import decode_windows, finalize, image_groups, resolve_params
from .prediction_table import check_images

__all__ = ["ground_truth_index", "load_ground_truth", "decode_all", "score_windows", "score_table", "class_scores",
           "score_line", "warnings_once"]


_SEEN: list[set[str]] = []  # the messages printed in each open warnings_once() scope


@contextlib.contextmanager
def warnings_once():
    """Inside, each warning of this module is printed once: a run that reads one ground truth for every table
    it scores (06: each model, the ensemble, the submission, the report) warns about it once."""
    _SEEN.append(set())
    try:
        yield
    finally:
        _SEEN.pop()


def _warn(message: str) -> None:
    if _SEEN:
        if message in _SEEN[-1]:
            return
        _SEEN[-1].add(message)
    print(message)


def ground_truth_index(gt_path: str | Path):
    """Index ground truth for per-image reading: ``(sizes, rows_of, problems)``. ``sizes``: image id -> (h, w)
    (None for a CSV: the rows carry it), in file order; ``rows_of(image_id) -> (rows, problems)``
    (:class:`lib.kaggle_data.Row`); ``problems``: those of the file as a whole.

    ``gt_path``: a train.csv-format CSV, or a COCO-format JSON (``.json``; every image it lists, also those
    without annotations; its categories not among the 46 are left out with a printed warning; read and
    rasterised by :mod:`lib.coco_data` as 01 reads it, so bad image entries and annotations, NaN polygons or
    malformed RLE included, are problems, never handed to pycocotools)."""
    gt_path = Path(gt_path)
    if gt_path.suffix.lower() == ".json":
        from .coco_data import annotation_rows, read_coco

        src = read_coco(gt_path, gt_path.parent, llabels.competition_labels())
        if src.unmapped_annotations:  # categories of the file that annotations use and none of the 46 matches
            used = sorted(src.unmapped_categories[i] for i in src.unmapped_annotations)
            _warn(f"WARNING: {gt_path}: categories {used} are not among the 46; their "
                  f"{sum(src.unmapped_annotations.values())} annotations are not scored")
        return (dict(src.images), lambda name: annotation_rows(src, name, llabels.N_ATTRIBUTES),
                src.entry_problems())  # all but the unmapped categories warned about above
    groups, problems = lkaggle.index_csv(gt_path)
    if lkaggle.csv_layout(gt_path) == "2020":  # attribute ids of its own label file, mapped by name
        mapping, theirs = llabels.map_vocabulary(gt_path.parent / "label_descriptions.json",
                                                 llabels.competition_labels())

        def rows_of(image_id):
            rows, probs = lkaggle.read_rows(gt_path, groups[image_id], num_attributes=max(theirs, default=-1) + 1)
            return lkaggle.remap_attributes(rows, mapping), probs

        return dict.fromkeys(groups), rows_of, problems
    return dict.fromkeys(groups), lambda image_id: lkaggle.read_rows(gt_path, groups[image_id]), problems


def load_ground_truth(gt_csv_path: str | Path, mask_size: int | None = 512, full_class_ids: bool = False,
                      progress: bool = True) -> dict[str, tuple[np.ndarray, list]]:
    """Ground truth -> ``{image_id: (masks (N, h, w) uint8, class keys)}`` at the output size.

    ``gt_csv_path``: a train.csv-format CSV, or a COCO-format JSON (``.json``: Fashionpedia's val file; its
    images without annotations are scored as having none). Masks are decoded at their Height x Width and
    resized with :func:`lib.kaggle_data.resize_mask` to ``mask_size x mask_size`` (None = kept).
    Class keys are categories (int), or normalised full ClassId strings with
    ``full_class_ids``. Raises ``ValueError`` listing bad rows.
    """
    out = {}
    sizes, rows_of, problems = ground_truth_index(gt_csv_path)
    for image_id, hw in tqdm(sizes.items(), desc="ground truth", unit="img", disable=not progress):
        rows, probs = rows_of(image_id)
        problems += probs
        if not rows and hw is None:
            continue
        hw = hw or (rows[0].height, rows[0].width)
        size = (int(mask_size), int(mask_size)) if mask_size else hw
        masks = (np.stack([lkaggle.resize_rle(r.rle, (r.height, r.width), size) for r in rows]) if rows
                 else np.zeros((0, *size), np.uint8))
        keys = [llabels.format_class_id(r.category, r.attributes) if full_class_ids else r.category for r in rows]
        out[image_id] = (masks, keys)
    if problems:
        lines = "\n".join(f"row {p.row} ({p.image_id}): {p.reason}" for p in problems[:20])
        raise ValueError(f"{gt_csv_path}: {len(problems)} bad ground-truth rows:\n{lines}")
    return out


def _scored_images(windows: dict, gt: dict, sizes: dict, params: dict, full_class_ids: bool):
    """Per scored image: ``(image_id, gt masks, gt keys, post-processed masks, their keys, their scores)``."""
    for image_id, size in sizes.items():
        insts = finalize(windows.get(image_id, []), params, size)
        gt_masks, gt_keys = gt.get(image_id, (np.zeros((0, *size), np.uint8), []))
        pred = np.stack([i.full(size) for i in insts]) if insts else np.zeros((0, *size), np.uint8)
        keys = [i.class_id if full_class_ids else i.category for i in insts]
        yield image_id, gt_masks, list(gt_keys), pred, keys, [i.score for i in insts]


def score_windows(windows: dict, gt: dict, sizes: dict, params: dict, full_class_ids: bool, coco: bool):
    ev = Evaluator(coco=coco)
    for image_id, *scored in _scored_images(windows, gt, sizes, params, full_class_ids):
        ev.add(image_id, *scored)
    return ev.summary()


def decode_all(pred_table, gt, images, mask_size, min_score, progress):
    """Probability windows of every scored image and the output size of each."""
    groups = image_groups(pred_table)
    sizes: dict[str, tuple[int, int]] = {}
    for image_id, (masks, _) in gt.items():
        sizes[image_id] = masks.shape[1:]
    if images is not None:
        for r in check_images(images).itertuples(index=False):
            if r.image_id not in sizes:
                sizes[r.image_id] = (mask_size, mask_size) if mask_size else (int(r.orig_height), int(r.orig_width))
    windows = {}
    for image_id in tqdm(list(sizes), desc="predictions", unit="img", disable=not progress):
        idx = groups.get(image_id)
        if idx is not None:
            windows[image_id] = decode_windows(pred_table.iloc[idx], sizes[image_id], min_score)
    ignored = sum(1 for k in groups if k not in sizes)
    return windows, sizes, ignored


def score_table(pred_table: pd.DataFrame, gt_csv_path: str | Path, params: dict | None = None,
                mask_size: int | None = 512, per_class: bool = True, full_class_ids: bool = False,
                coco: bool = True, images: pd.DataFrame | None = None, progress: bool = True) -> dict:
    """Kaggle metric and COCO mask AP of a prediction table after post-processing.

    Scores every image of the ground truth (an image the table has no row
    for counts as predicting nothing), plus the images of ``images`` (image_id,
    orig_height, orig_width) when given (those absent from the ground truth
    have no objects). Masks are compared at ``mask_size x mask_size`` (None =
    original size). Classes are categories unless ``full_class_ids`` (for
    ``attributes="on"``). Submission placeholder rows are not part of this.
    The Kaggle metric uses the post-processed instances; COCO mask AP ranks
    every instance (the same post-processing with ``score_thresh`` 0), as AP
    is defined over a ranked list.

    Returns:
        ``kaggle``, ``AP``, ``AP50``, ``AP75`` (COCO mask AP; nan unless
        ``coco``), ``num_images``, ``ignored_pred_images`` (table images not
        scored), ``params``, ``mask_size``, and with ``per_class``:
        ``per_class`` (class -> Kaggle class score) and ``per_category_AP``.
    """
    params = resolve_params(params)
    gt = load_ground_truth(gt_csv_path, mask_size, full_class_ids, progress=progress)
    min_score = 0.0 if coco else params["score_thresh"]
    windows, sizes, ignored = decode_all(pred_table, gt, images, mask_size, min_score, progress)
    s = score_windows(windows, gt, sizes, params, full_class_ids, False)
    # COCO AP ranks every instance: the same post-processing without the score threshold.
    c = (score_windows(windows, gt, sizes, dict(params, score_thresh=0.0), full_class_ids, True)["coco"]
         if coco else None) or {}
    out = {
        "kaggle": s["kaggle"],
        "AP": c.get("AP", float("nan")),
        "AP50": c.get("AP50", float("nan")),
        "AP75": c.get("AP75", float("nan")),
        "num_images": s["num_images"],
        "ignored_pred_images": ignored,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "mask_size": mask_size,
    }
    if per_class:
        out["per_class"] = s["per_class"]
        out["per_category_AP"] = c.get("per_category", {})
    return out


def class_scores(windows: dict, gt: dict, sizes: dict, params: dict) -> list[tuple[dict, set]]:
    """Per scored image: ``({category: Kaggle class score}`` over the categories of its ground truth and
    post-processed predictions, ``{ground-truth categories})`` (categories as class keys)."""
    out = []
    for _, gt_masks, gt_keys, pred, keys, scores in _scored_images(windows, gt, sizes, params, False):
        _, per_class = image_score(gt_masks, gt_keys, pred, keys, scores, return_per_class=True)
        out.append((per_class, set(gt_keys)))
    return out


def score_line(name: str, s: dict) -> str:
    """One printed line of a :func:`score_table` result."""
    return (f"  {name:<30} kaggle {s['kaggle']:.4f}   mask AP {s['AP']:.4f}  AP50 {s['AP50']:.4f}  "
            f"AP75 {s['AP75']:.4f}   ({s['num_images']} images)")
