"""Scoring a prediction table after post-processing against train.csv-format ground truth.

:func:`score_table`: the Kaggle metric (:mod:`lib.kaggle_metric`) of the post-processed instances and COCO mask AP
of the ranked ones, per class too, of a table in memory; :func:`score_tables`: the same for 06's tables, image by
image in worker processes (:mod:`lib.table_stream`). Both score an image with :func:`image_record`: the ground
truth decoded once (:class:`GroundTruth`), the IoUs counted on windows (:class:`ImageScorer`, which tuning uses to
score many subsets of one post-processing).
Submission placeholder rows (:data:`lib.submission_file.PLACEHOLDER`) are not part of this: an image without
any instance scores as predicting nothing.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import kaggle_data as lkaggle
from . import labels as llabels
from . import prediction_table as lpred
from .attribute_metric import matched_window_attributes, multilabel_f1
from .coco_metric import coco_records
from .evaluator import Evaluator
from .kaggle_metric import attribute_set_f1, class_score, mask_window, window_ious
from .postprocess import Params, attribute_thresholds, finalize, image_groups, rank_windows
from .prediction_table import check_images

__all__ = ["CLASS_KEYS", "class_keys_of", "ground_truth_index", "load_ground_truth", "GroundTruth", "image_ground_truth", "ImageScorer",
           "image_record", "attribute_pairs", "scored_images", "raise_problems", "summarize", "score_table",
           "score_tables", "table_attribute_pairs", "attribute_summary", "score_line", "warnings_once"]


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


# How instances are told apart as classes (06 picks them: :func:`class_keys_of`): by category; by full ClassId
# (category and attributes, matched exactly: the 2019 metric with attributes on); or by category with the 2020
# edition's attribute condition (a hit also needs the attribute sets' F1 above an F1 threshold,
# :func:`lib.kaggle_metric.class_score`).
CLASS_KEYS = ("category", "class_id", "attributes")


def class_keys_of(attributes_on: bool, edition: str = "2019") -> str:
    """The class keys 06 scores with: the 2020 edition's metric (``"attributes"``, whether or not attributes are
    emitted), else full ClassIds when attributes are on, else categories."""
    return "attributes" if edition == "2020" else "class_id" if attributes_on else "category"


def _check_keys(class_keys: str) -> str:
    if class_keys not in CLASS_KEYS:
        raise ValueError(f"class_keys must be one of {CLASS_KEYS}, got {class_keys!r}")
    return class_keys


@dataclass
class GroundTruth:
    """One image's ground truth at the output size: class ``keys`` (categories, or full ClassIds), each instance's
    ``attributes`` (ids) and masks as windows ``(y0, x0, (h, w) bool)`` cropped to their pixels
    (:func:`lib.kaggle_metric.window_ious`)."""

    keys: list
    windows: list
    size: tuple[int, int]
    attributes: list = field(default_factory=list)

    def masks(self) -> np.ndarray:
        """(N, H, W) uint8 full masks."""
        return _paste([(y, x, m) for y, x, m in self.windows], self.size)


def _paste(windows, size) -> np.ndarray:
    out = np.zeros((len(windows), *size), np.uint8)
    for o, (y0, x0, m) in zip(out, windows):
        o[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m
    return out


def image_ground_truth(rows: list, size: tuple[int, int], class_keys: str = "category") -> GroundTruth:
    """Ground-truth rows (:class:`lib.kaggle_data.Row`) of one image -> :class:`GroundTruth` at ``size``
    (:func:`lib.kaggle_data.resize_rle`, as :func:`load_ground_truth`), keyed by ``class_keys``
    (:data:`CLASS_KEYS`: full ClassIds for ``"class_id"``, else categories)."""
    full = _check_keys(class_keys) == "class_id"
    keys = [llabels.format_class_id(r.category, r.attributes) if full else r.category for r in rows]
    wins = [mask_window(lkaggle.resize_rle(r.rle, (r.height, r.width), size)) for r in rows]
    return GroundTruth(keys, wins, tuple(size), [tuple(r.attributes) for r in rows])


class ImageScorer:
    """The Kaggle score (:func:`lib.kaggle_metric.image_score`) of one image's post-processed instances, or of any subset
    of them, against its ground truth; the IoUs are counted once, on windows. ``class_keys`` as the ground truth's
    (:data:`CLASS_KEYS`); with ``"attributes"`` (the 2020 edition) a prediction's attributes are those of its
    ClassId, and a hit also needs their F1 with the ground truth's above the F1 threshold."""

    def __init__(self, gt: GroundTruth, insts: list, class_keys: str = "category"):
        self.gt = gt
        full = _check_keys(class_keys) == "class_id"
        self.keys = [i.class_id if full else i.category for i in insts]
        self.attributes = ([llabels.parse_class_id(i.class_id)[1] for i in insts] if class_keys == "attributes"
                           else None)
        self.scores = np.array([i.score for i in insts], np.float64)
        self.insts = insts
        self._gt_of: dict = {}
        for k, c in enumerate(gt.keys):
            self._gt_of.setdefault(c, []).append(k)
        self._ious: dict = {}

    def _iou(self, c) -> tuple[np.ndarray, list[int], np.ndarray | None]:
        """(Ngt_c, Npred_c) IoU of class ``c`` over all instances of that class, their indices, and with the 2020
        condition their attribute-set F1 (:func:`lib.kaggle_metric.attribute_set_f1`; else None)."""
        if c not in self._ious:
            gi = self._gt_of[c]
            pj = [j for j, k in enumerate(self.keys) if k == c]
            f1 = None if self.attributes is None else attribute_set_f1(
                [self.gt.attributes[g] for g in gi], [self.attributes[j] for j in pj])
            self._ious[c] = (window_ious([self.gt.windows[g] for g in gi],
                                         [(self.insts[j].y0, self.insts[j].x0, self.insts[j].mask) for j in pj]),
                             pj, f1)
        return self._ious[c]

    def score(self, keep: np.ndarray | None = None) -> tuple[float, dict]:
        """``(image score, {class: class score})`` of the instances ``keep`` (bool (N,); None = all)."""
        kept = np.ones(len(self.keys), bool) if keep is None else np.asarray(keep, bool)
        per_class = {}
        for c in dict.fromkeys(self.gt.keys + [k for k, on in zip(self.keys, kept) if on]):
            if c not in self._gt_of or not any(on and k == c for k, on in zip(self.keys, kept)):
                per_class[c] = 0.0
                continue
            iou, pj, f1 = self._iou(c)
            cols = [n for n, j in enumerate(pj) if kept[j]]
            order = np.argsort(-self.scores[[pj[n] for n in cols]], kind="stable")
            per_class[c] = class_score(iou[:, cols], order, f1=None if f1 is None else f1[:, cols])
        return (float(np.mean(list(per_class.values()))) if per_class else 1.0), per_class


def image_record(probs: list, gt: GroundTruth, params: Params, class_keys: str = "category", coco: bool = True):
    """One image's :meth:`lib.evaluator.Evaluator.add_scored` arguments (after the image id): its Kaggle score and
    class scores after post-processing with ``params`` (:func:`lib.postprocess.finalize` of ``probs``, windows at
    ``gt.size`` best first), and with ``coco`` its COCO records of every instance (the same post-processing
    without the score threshold: AP ranks them all; by category unless ``class_keys`` is ``"class_id"``)."""
    return _record(*_post_processed(probs, params, gt.size, coco), gt, class_keys, coco)


def _post_processed(probs: list, params: Params, size, coco: bool) -> tuple[list, np.ndarray]:
    """:func:`image_record`'s instances and which of them the score threshold keeps: with ``coco`` all of the
    post-processing without the threshold (a threshold keeps a prefix of those, the instances post-processing
    with it gives: nothing below a kept instance changes it), else those of ``params``."""
    insts = finalize(probs, params.replace(score_thresh=0.0) if coco else params, size)
    return insts, np.array([i.score >= params.score_thresh for i in insts], bool)


def _record(insts: list, keep: np.ndarray, gt: GroundTruth, class_keys: str, coco: bool):
    scorer = ImageScorer(gt, insts, class_keys)
    score, per_class = scorer.score(keep)
    if not coco:
        return score, per_class
    pred = _paste([(i.y0, i.x0, i.mask) for i in insts], gt.size)
    return (score, per_class, *coco_records(gt.masks(), gt.keys, pred, scorer.keys, [i.score for i in insts]))


def attribute_pairs(insts: list, probs: list, gt: GroundTruth, rows: list):
    """One image's attribute pairs: its post-processed instances ``insts`` (:func:`lib.postprocess.finalize` of
    ``probs``, which their ``rank`` indexes) that carry attribute scores, matched to its ground truth (``gt`` by
    category, ``rows`` its :class:`lib.kaggle_data.Row` list in the same order) as
    :func:`lib.attribute_metric.matched_attributes` matches (same category, mask IoU >= 0.5, attribute categories
    only; IoUs on windows).

    Returns ``(gt, scores)``: (K, A) bool and (K, A) float64, or None when no instance has attribute scores
    (a model without an attribute head; fused instances none of whose models has one). ``ValueError`` naming
    the row when a ground-truth attribute id is not below A."""
    insts = [i for i in insts if probs[i.rank].attrs is not None and not np.isnan(probs[i.rank].attrs).any()]
    if not insts:
        return None
    n_attr = len(probs[insts[0].rank].attrs)
    gt_attr = np.zeros((len(rows), n_attr), bool)
    for k, r in enumerate(rows):
        bad = [a for a in r.attributes if not 0 <= a < n_attr]
        if bad:
            raise ValueError(f"row {r.row} ({r.image_id}): attribute ids {bad} outside the predictions' {n_attr}")
        gt_attr[k, list(r.attributes)] = True
    pred_windows = [(i.y0, i.x0, i.mask) for i in insts]
    return matched_window_attributes(
        [r.category for r in rows], gt_attr, [i.category for i in insts], [i.score for i in insts],
        np.stack([probs[i.rank].attrs for i in insts]),
        lambda gi, pj: window_ious([gt.windows[g] for g in gi], [pred_windows[j] for j in pj]))


def scored_images(gt_path: str | Path, images: pd.DataFrame | None, mask_size: int | None,
                  problems: list | None = None):
    """The images a score covers, for :func:`lib.table_stream.map_images`: ``(tasks, total, positions)``.

    ``tasks`` yields an :class:`lib.table_stream.ImageTask` per image with its ground-truth rows (read as the
    tasks are taken): the images of ``images`` (image_id, orig_height, orig_width; an image absent from the
    ground truth has no objects) in its order, then those of the ground truth it does not list. ``positions``:
    image id -> its place in :func:`load_ground_truth`'s order (the ground truth's images in file order, then
    the others), in which the scores are averaged. Bad ground-truth rows are appended to ``problems``
    (:func:`raise_problems` after the pass)."""
    from .table_stream import ImageTask

    sizes, rows_of, file_problems = ground_truth_index(gt_path)
    if problems is not None:
        problems += file_problems
    listed = check_images(images) if images is not None else pd.DataFrame(columns=["image_id", "orig_height",
                                                                                 "orig_width"])
    positions = {i: n for n, i in enumerate(sizes)}
    for i in listed["image_id"]:
        positions.setdefault(i, len(positions))
    orig = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in listed.itertuples(index=False)}
    order = list(orig) + [i for i in sizes if i not in orig]

    def tasks():
        for image_id in order:
            rows, hw = [], None
            if image_id in sizes:
                rows, probs = rows_of(image_id)
                if problems is not None:
                    problems.extend(probs)
                hw = sizes[image_id] or ((rows[0].height, rows[0].width) if rows else orig.get(image_id))
            hw = hw or orig.get(image_id)
            if hw is None:  # a ground-truth image without a valid row: its problems are raised after the pass
                continue
            size = (int(mask_size), int(mask_size)) if mask_size else (int(hw[0]), int(hw[1]))
            yield ImageTask(image_id, size, orig.get(image_id, tuple(hw)), rows)

    return tasks(), len(order), positions


def raise_problems(gt_path, problems: list) -> None:
    """``ValueError`` listing the bad ground-truth rows, if any."""
    if problems:
        lines = "\n".join(f"row {p.row} ({p.image_id}): {p.reason}" for p in problems[:20])
        raise ValueError(f"{gt_path}: {len(problems)} bad ground-truth rows:\n{lines}")


def _score_image(params, class_keys, coco, floor, task, masks, attributes: bool = False):
    """:func:`score_tables`' work on one image in a worker: ``({table name: image_record}, {table name:
    attribute_pairs} with ``attributes``, else {})``; the ground truth is decoded once and each table
    post-processed once for both."""
    gt = image_ground_truth(task.gt, task.size, class_keys)
    records, pairs = {}, {}
    for name, m in masks.items():
        probs = rank_windows(m, task.size, floor)
        insts, keep = _post_processed(probs, params, gt.size, coco)
        records[name] = _record(insts, keep, gt, class_keys, coco)
        if attributes:
            pairs[name] = attribute_pairs([i for i, on in zip(insts, keep) if on], probs, gt, task.gt)
    return records, pairs


def summarize(ev: Evaluator, params: Params, mask_size, ignored: int, per_class: bool = True) -> dict:
    """:func:`score_table`'s result from an :class:`lib.evaluator.Evaluator` filled by :func:`image_record`."""
    s = ev.summary()
    c = s["coco"] or {}
    out = {
        "kaggle": s["kaggle"],
        "AP": c.get("AP", float("nan")),
        "AP50": c.get("AP50", float("nan")),
        "AP75": c.get("AP75", float("nan")),
        "num_images": s["num_images"],
        "ignored_pred_images": ignored,
        "params": params.to_json(),
        "mask_size": mask_size,
    }
    if per_class:
        out["per_class"] = s["per_class"]
        out["per_category_AP"] = c.get("per_category", {})
    return out


def score_table(pred_table: pd.DataFrame, gt_csv_path: str | Path, params: Params | dict | None = None,
                mask_size: int | None = 512, per_class: bool = True, class_keys: str = "category",
                coco: bool = True, images: pd.DataFrame | None = None, progress: bool = True) -> dict:
    """Kaggle metric and COCO mask AP of a prediction table (in memory) after post-processing.

    Scores every image of the ground truth (an image the table has no row
    for counts as predicting nothing), plus the images of ``images`` (image_id,
    orig_height, orig_width) when given (those absent from the ground truth
    have no objects). Masks are compared at ``mask_size x mask_size`` (None =
    original size). Classes are told apart by ``class_keys`` (:data:`CLASS_KEYS`; ``"class_id"`` for
    ``attributes="on"`` in 2019, ``"attributes"`` for the 2020 edition's metric, :func:`class_keys_of`).
    Submission placeholder rows are not part of this.
    The Kaggle metric uses the post-processed instances; COCO mask AP ranks
    every instance (the same post-processing with ``score_thresh`` 0), as AP
    is defined over a ranked list. (06 scores its tables image by image in processes, :func:`score_tables`.)
    ``params``: :meth:`lib.postprocess.Params.of` (None = the recipe; a dict of some of them).

    Returns:
        ``kaggle``, ``AP``, ``AP50``, ``AP75`` (COCO mask AP; nan unless
        ``coco``), ``num_images``, ``ignored_pred_images`` (table images not
        scored), ``params``, ``mask_size``, and with ``per_class``:
        ``per_class`` (class -> Kaggle class score) and ``per_category_AP``.
    """
    params = Params.of(params)
    problems: list = []
    tasks, total, positions = scored_images(gt_csv_path, images, mask_size, problems)
    groups = image_groups(pred_table)
    floor = 0.0 if coco else params.score_thresh
    records = {}
    for task in tqdm(tasks, total=total, desc="score", unit="img", disable=not progress):
        idx = groups.get(task.image_id)
        rows = pred_table.iloc[idx] if idx is not None else pred_table.iloc[:0]
        masks = {"t": lpred.stored_masks(rows[rows["score"].to_numpy() >= floor])}
        records[task.image_id] = _score_image(params, class_keys, coco, floor, task, masks)[0]["t"]
    raise_problems(gt_csv_path, problems)
    ev = Evaluator(coco=coco)
    for image_id in sorted(records, key=positions.__getitem__):
        ev.add_scored(image_id, *records[image_id])
    return summarize(ev, params, mask_size, sum(1 for k in groups if k not in positions), per_class)


def score_tables(sources: dict, gt_path: str | Path, params: Params, mask_size: int | None, images: pd.DataFrame | None,
                 combine: Callable, class_keys: str = "category", processes: int = 1,
                 progress: bool = True, attributes: bool = False) -> dict[str, dict]:
    """:func:`score_table` of several tables at once, image by image in ``processes`` (06's scores).

    ``sources``: ``{"sources": [lib.table_stream.Source], "indexes": {file: TableIndex}}``; ``combine(task,
    masks) -> {table name: StoredMask list}`` makes each scored table of one image from its sources' masks
    (a picklable function). Returns ``{table name: score_table result}``; with ``attributes``, a table whose
    instances carry attribute scores also gets ``"attributes"``: :func:`attribute_summary` of its
    :func:`attribute_pairs`."""
    from .table_stream import map_images

    problems: list = []
    tasks, total, positions = scored_images(gt_path, images, mask_size, problems)
    work = functools.partial(_combined_records, combine, params, class_keys, attributes)
    records: dict = {}
    pairs: dict = {}
    for task_id, rec, image_pairs in map_images(work, tasks, total, sources["sources"], sources["indexes"],
                                                processes, 0.0, progress, desc="score"):
        records[task_id] = rec
        for name, p in image_pairs.items():
            pairs.setdefault(name, []).append(p)
    raise_problems(gt_path, problems)
    names = list(next(iter(records.values()))) if records else []
    predicted = set().union(*(sources["indexes"][f].rows for f in {s.path for s in sources["sources"]}))
    out = {}
    for name in names:
        ev = Evaluator(coco=True)
        for image_id in sorted(records, key=positions.__getitem__):
            ev.add_scored(image_id, *records[image_id][name])
        out[name] = summarize(ev, params, mask_size, sum(1 for k in predicted if k not in positions))
        stacked = _stacked(pairs.get(name, []))
        if stacked is not None:
            out[name]["attributes"] = attribute_summary(stacked, params)
    return out


def _combined_records(combine, params, class_keys, attributes, task, masks):
    return (task.image_id, *_score_image(params, class_keys, True, 0.0, task, combine(task, masks), attributes))


def _pairs_of(combine, params, task, masks):
    """:func:`table_attribute_pairs`' work on one image: ``{table name: attribute_pairs}``."""
    gt = image_ground_truth(task.gt, task.size)
    out = {}
    for name, m in combine(task, masks).items():
        probs = rank_windows(m, task.size, params.score_thresh)
        out[name] = attribute_pairs(finalize(probs, params, gt.size), probs, gt, task.gt)
    return out


def _stacked(pairs: list) -> tuple[np.ndarray, np.ndarray] | None:
    """The images' pairs (None = the image had no attribute scores) as one ``(gt, scores)``; None when none had."""
    had = [p for p in pairs if p is not None]
    if not had:
        return None
    return np.concatenate([g for g, _ in had]), np.concatenate([sc for _, sc in had])


def table_attribute_pairs(sources: dict, gt_path: str | Path, params: Params, mask_size: int | None,
                          images: pd.DataFrame | None, combine: Callable, processes: int = 1,
                          progress: bool = True) -> dict:
    """Every image's :func:`attribute_pairs`, of the tables ``combine`` makes (as :func:`score_tables`), in one
    pass: ``{table name: (gt (K, A) bool, scores (K, A)) or None}`` (None: no attribute scores)."""
    from .table_stream import map_images

    problems: list = []
    tasks, total, _ = scored_images(gt_path, images, mask_size, problems)
    per: dict = {}
    for tables in map_images(functools.partial(_pairs_of, combine, params), tasks, total, sources["sources"],
                             sources["indexes"], processes, params.score_thresh, progress, desc="attributes"):
        for name, p in tables.items():
            per.setdefault(name, []).append(p)
    raise_problems(gt_path, problems)
    return {name: _stacked(p) for name, p in per.items()}


def attribute_summary(pairs: tuple[np.ndarray, np.ndarray], params: Params) -> dict:
    """Attribute F1 (:func:`lib.attribute_metric.multilabel_f1`: ``micro_f1``, ``macro_f1``, ``precision``,
    ``recall``, ``num_instances``) of matched ``pairs`` at ``params``' thresholds; ``thresholds`` says
    whether they were per attribute ("tuned") or ``attr_thresh``."""
    gt, scores = pairs
    f1 = multilabel_f1(gt, scores, attribute_thresholds(params, gt.shape[1]))
    return {**{k: f1[k] for k in ("micro_f1", "macro_f1", "precision", "recall", "num_instances")},
            "thresholds": "tuned" if params.attr_thresholds else params.attr_thresh}


def score_line(name: str, s: dict) -> str:
    """One printed line of a :func:`score_table` result."""
    return (f"  {name:<30} kaggle {s['kaggle']:.4f}   mask AP {s['AP']:.4f}  AP50 {s['AP50']:.4f}  "
            f"AP75 {s['AP75']:.4f}   ({s['num_images']} images)")
