"""Choosing the post-processing and the combination of models on validation ground truth (06's tuning).

Post-processing (:func:`tune_postprocess`): a grid search over :mod:`lib.postprocess` parameters
(:data:`DEFAULT_GRID` unless another is given) maximising the Kaggle metric, optionally followed by
dropping the categories whose predictions lower it (:func:`choose_dropped_categories`).

The combination (:func:`choose_combination`): every non-empty subset of
the models, each with every weight vector of :func:`weight_vectors` (distinct
ratios only), is fused (:func:`lib.fusion.combine`) on the validation predictions and scored over the
score thresholds; the few best get the full post-processing grid, and the best Kaggle metric wins; ties go to
the simpler combination (fewer models, then equal weights). The
combination is saved with the post-processing parameters (``params.json``, key
``"ensemble"``: :meth:`lib.fusion.Combination.to_json`) and
:func:`load_combination` reads it back, so 06 applies to the test predictions
exactly what won on validation. Without a saved combination it is :meth:`lib.fusion.Combination.default` (all
models, equal weights). :func:`saved_combination` is how another stage (05's export) reads what 06 saved.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .fusion import Combination, ImageFusion
from .files import read_json
from .postprocess import Params, finalize, load_params, rank_windows, save_params
from .attribute_metric import tune_thresholds
from .scoring import (ImageScorer, attribute_summary, image_ground_truth, raise_problems, scored_images,
                      table_attribute_pairs)
from .table_stream import map_images

__all__ = ["DEFAULT_GRID", "TuningSet", "grid_points", "point_groups", "search_candidates", "score_dropping",
           "choose_dropped_categories", "tune_postprocess", "weight_vectors",
           "combinations", "choose_combination", "load_combination", "saved_combination", "initial_combination",
           "free_grid", "tune_combination", "tune_attribute_thresholds"]


# ------------------------------------------------------------------ post-processing

# Grid searched by 06_make_submission.py --tune unless another is given.
DEFAULT_GRID = dict(
    score_thresh=[0.3, 0.4, 0.5, 0.6, 0.7],
    mask_thresh=[0.35, 0.45, 0.55],
    nms_iou=[0.3, 0.5, 0.7],
    min_area=[0, 20, 50],
)


def score_dropping(table: list[tuple[dict, set]], drop) -> float:
    """The Kaggle metric of :func:`lib.scoring.class_scores`' images when the categories ``drop`` are not predicted.

    Post-processing works per category, so dropping one leaves the others' instances as they are: a
    dropped category scores 0 where the ground truth has it and leaves the image's average elsewhere.
    """
    drop, total = set(drop), 0.0
    for per_class, gt_keys in table:
        kept = [0.0 if c in drop else s for c, s in per_class.items() if c not in drop or c in gt_keys]
        total += float(np.mean(kept)) if kept else 1.0
    return total / max(1, len(table))


def choose_dropped_categories(table: list[tuple[dict, set]]) -> tuple[list[int], float]:
    """Greedy on the tuning images: the predicted categories, lowest mean class score first, are dropped
    one by one when that raises the Kaggle metric (:func:`score_dropping`). Returns ``(dropped, score)``."""
    seen: dict = {}
    for per_class, _ in table:
        for c, s in per_class.items():
            seen.setdefault(c, []).append(s)
    drop, best = [], score_dropping(table, ())
    for c in sorted(seen, key=lambda c: (float(np.mean(seen[c])), str(c))):
        score = score_dropping(table, drop + [c])
        if score > best + 1e-12:
            drop, best = drop + [c], score
    return sorted(drop, key=str), best


@dataclass
class TuningSet:
    """What tuning scores on: the validation predictions (``sources`` with their ``indexes``,
    :func:`lib.table_stream.read_sources`), their ground truth ``gt_path`` (train.csv format or COCO JSON) and
    images table (``images``: the images scored besides the ground truth's, None = those only), compared at
    ``mask_size`` (None = original size) with ``class_keys`` (:data:`lib.scoring.CLASS_KEYS`); each pass over the
    images runs in ``processes`` worker processes."""

    sources: list
    indexes: dict
    gt_path: Path
    images: pd.DataFrame | None = None
    mask_size: int | None = 512
    class_keys: str = "category"
    processes: int = 1
    progress: bool = True

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.sources]


def grid_points(grid: dict, base: Params) -> tuple[list[dict], list[Params]]:
    """The points of ``grid`` in product order: ``(grid values, full parameters)`` of each (``base`` with
    them, :meth:`lib.postprocess.Params.replace`)."""
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError(f"tune: empty grid {grid}")
    values = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())]
    return values, [base.replace(**v) for v in values]


def point_groups(points: list[Params]) -> list[tuple[Params, list[tuple[int, float, int]]]]:
    """Points that differ only in ``score_thresh`` and ``min_area`` share one post-processing: those two are
    filters of its output (a threshold keeps the instances scoring above it, which no lower one changes; the
    area filter comes last). Returns ``[(the group's finalize parameters: its lowest threshold, no area
    filter), [(point index, score_thresh, min_area)]]``."""
    groups: dict = {}
    for k, p in enumerate(points):
        key = tuple(getattr(p, n) for n in Params.names() if n not in ("score_thresh", "min_area"))
        groups.setdefault(key, []).append((k, p.score_thresh, p.min_area))
    return [(points[m[0][0]].replace(score_thresh=min(t for _, t, _ in m), min_area=0), m) for m in groups.values()]


def _image_points(candidates, groups, n_points, floor, class_keys, classes, task, masks):
    """In a worker: one image's Kaggle score at every point of every candidate.

    Returns ``(image id, its ground-truth categories, [(scores (P,), distinct class-score dicts or None, which
    dict each point has (P,) or None)] per candidate)``. The ground truth is decoded once; each candidate is
    fused once; each group of points is post-processed once and its IoUs counted once; points keeping the same
    instances are scored once.
    """
    gt = image_ground_truth(task.gt, task.size, class_keys)
    fusion = ImageFusion(masks, task.orig_hw)
    out = []
    for combination in candidates:
        probs = rank_windows(fusion.combine(combination), task.size, floor)
        index = np.zeros(n_points, np.int64)
        distinct: list[tuple[float, dict]] = []
        memo: dict = {}
        for g, (params, members) in enumerate(groups):
            insts = finalize(probs, params, task.size)
            scorer = ImageScorer(gt, insts, class_keys)
            areas = np.array([i.area for i in insts], np.int64)
            for k, thresh, min_area in members:
                keep = (scorer.scores >= thresh) & (areas >= max(1, min_area))
                key = (g, keep.tobytes())
                if key not in memo:
                    memo[key] = len(distinct)
                    distinct.append(scorer.score(keep))
                index[k] = memo[key]
        scores = np.array([distinct[i][0] for i in index], np.float64)
        out.append((scores, [d for _, d in distinct], index) if classes else (scores, None, None))
    return task.image_id, set(gt.keys), out


def _score_pass(ts: TuningSet, candidates: list[Combination], points: list[Params], classes: bool, desc: str):
    """One pass over the tuning images: per candidate, (P, N) image scores (images in
    :func:`lib.scoring.scored_images`' order), and with ``classes`` per image its (class-score dicts, index)."""
    groups = point_groups(points)
    floor = min(p.score_thresh for p in points)
    fused = [c.min_score or 0.0 for c in candidates if len(c.models) > 1]
    needed = {m for c in candidates for m in c.models}
    problems: list = []
    tasks, total, positions = scored_images(ts.gt_path, ts.images, ts.mask_size, problems)
    work = functools.partial(_image_points, candidates, groups, len(points), floor, ts.class_keys, classes)
    scores = np.zeros((len(candidates), len(points), len(positions)), np.float64)
    per_image: list = [[None] * len(positions) for _ in candidates]
    gt_keys: list = [set()] * len(positions)
    for image_id, keys, results in map_images(work, tasks, total, [s for s in ts.sources if s.name in needed],
                                              ts.indexes, ts.processes, min([floor] + fused), ts.progress, desc):
        pos = positions[image_id]
        gt_keys[pos] = keys
        for c, (sc, dicts, index) in enumerate(results):
            scores[c, :, pos] = sc
            per_image[c][pos] = (dicts, index)
    raise_problems(ts.gt_path, problems)
    return scores, per_image, gt_keys


def search_candidates(ts: TuningSet, candidates: list[Combination], grid: dict, base: Params,
                      drop_categories: bool = False, desc: str = "tune") -> list[tuple[Params, list[dict]]]:
    """The grid search of each candidate combination, in one pass over the images.

    Per candidate: ``(best parameters, results)`` as :func:`tune_postprocess` returns them: one
    ``{"params": grid values, "kaggle": score}`` per point in grid order (ties go to the first point), then,
    with ``drop_categories`` (not with full ClassIds), the categories whose predictions lower the score dropped
    (:func:`choose_dropped_categories`) and one more entry when any are.
    """
    values, points = grid_points(grid, base)
    drop = drop_categories and ts.class_keys != "class_id"
    scores, per_image, gt_keys = _score_pass(ts, candidates, points, drop, desc)
    out = []
    for c in range(len(candidates)):
        results = [{"params": v, "kaggle": float(np.mean(scores[c, k]))} for k, v in enumerate(values)]
        best = max(range(len(points)), key=lambda k: (results[k]["kaggle"], -k))
        params = points[best]
        if drop:
            table = [(dicts[index[best]], keys) for (dicts, index), keys in zip(per_image[c], gt_keys)]
            dropped, score = choose_dropped_categories(table)
            if dropped:
                params = params.replace(drop_categories=sorted(set(params.drop_categories) | set(dropped)))
                results.append({"params": dict(values[best], drop_categories=list(params.drop_categories)),
                                "kaggle": score})
        out.append((params, results))
    return out


def tune_postprocess(ts: TuningSet, combination: Combination, grid: dict[str, Sequence] | None = None,
                     base_params: Params | None = None, out_path: str | Path | None = None,
                     drop_categories: bool = False) -> tuple[Params, list[dict]]:
    """Grid search of post-processing parameters maximising the Kaggle metric of one ``combination``
    (one model: ``Combination.default([name])``) on the tuning set (and, with ``drop_categories``, then the
    categories to drop).

    Args:
        grid: ``{param: [values, ...]}`` over :class:`lib.postprocess.Params` fields
            (default :data:`DEFAULT_GRID`); other parameters from ``base_params`` (None = the recipe).
        out_path: when given, the best parameters are saved there
            (:func:`lib.postprocess.save_params`, with the score and the grid) for 06 to load.
        drop_categories: after the grid, with the best parameters, drop the categories whose
            predictions lower the score (:func:`choose_dropped_categories`; categories the model never
            gets right only add zeros to the images' averages). Not with full ClassIds. Off by default:
            on a small tuning split it overfits (the demo's 12 val images: test 0.42 -> 0.36).

    Returns:
        ``(best_params, results)``; ``results`` is one dict ``{"params":
        {grid values}, "kaggle": score}`` per combination in grid order; ties
        go to the first combination; when categories were dropped, one more entry
        ``{"params": {grid values of the best, "drop_categories": [...]}, "kaggle": score}`` follows.

    Each image is post-processed once per group of points that differ only in their score threshold and
    minimum area (:func:`point_groups`).
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    base = Params() if base_params is None else base_params
    best, results = search_candidates(ts, [combination], grid, base, drop_categories)[0]
    if out_path is not None:
        save_params(out_path, best, kaggle=max(r["kaggle"] for r in results), mask_size=ts.mask_size,
                    gt=str(ts.gt_path), grid={k: list(v) for k, v in grid.items()})
    return best, results


# ------------------------------------------------------------------ choosing the combination on validation


def weight_vectors(k: int, choices: Sequence[float] = (1.0, 2.0)) -> list[tuple[float, ...]]:
    """Every weight vector of length ``k`` over ``choices``, one per distinct ratio, equal weights first.

    Vectors are normalised to sum to ``k`` (equal weights = all 1), e.g. ``k=2``,
    choices (1, 2): ``[(1, 1), (2/3, 4/3), (4/3, 2/3)]``; (1, 1) and (2, 2) are one ratio.
    """
    if k < 1:
        raise ValueError(f"weight_vectors: k must be >= 1, got {k}")
    vals = sorted({float(c) for c in choices})
    if not vals or vals[0] <= 0:
        raise ValueError(f"weight choices must be > 0, got {list(choices)}")
    out: dict[tuple[float, ...], None] = {tuple([1.0] * k): None}
    for v in itertools.product(vals, repeat=k):
        out.setdefault(tuple(round(x * k / sum(v), 6) for x in v), None)
    return list(out)


def combinations(names: Sequence[str], weight_choices: Sequence[float] = (1.0, 2.0), max_models: int | None = None,
                 iou: float = 0.5, min_votes: int = 1, min_score: float | None = None) -> list[Combination]:
    """Candidate combinations: each non-empty subset of ``names`` (at most ``max_models`` models; fewer models
    first, in ``names`` order), with each of its :func:`weight_vectors` (a single model has weight 1), fused at
    ``iou`` keeping clusters of ``min_votes`` models (capped at the candidate's model count) after dropping the
    instances below ``min_score``."""
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("combinations: no models")
    top = len(names) if max_models is None else max(1, min(int(max_models), len(names)))
    out = []
    for k in range(1, top + 1):
        for subset in itertools.combinations(names, k):
            for w in (weight_vectors(k, weight_choices) if k > 1 else [(1.0,)]):
                out.append(Combination(subset, w, iou, min(int(min_votes), k), min_score))
    return out


def choose_combination(ts: TuningSet, grid: dict | None = None, base_params: Params | None = None,
                       weight_choices: Sequence[float] = (1.0, 2.0), iou_thr: float = 0.5, min_votes: int = 1,
                       max_models: int | None = None, min_score: float | None = None, refine: int = 3,
                       out_path: str | Path | None = None,
                       drop_categories: bool = False) -> tuple[Combination, Params, list[dict]]:
    """Choose the model combination, its weights and its post-processing on validation ground truth.

    Two stages, each one pass over the images (:func:`search_candidates`): every candidate
    (:func:`combinations` of ``ts``' models) is fused and scored over the grid's ``score_thresh`` values alone
    (the other parameters at ``base_params``); the ``refine`` best are then searched over the whole grid, and
    the best of those wins. ``refine <= 0`` searches the whole grid for every candidate in the first pass
    (exhaustive; 19 candidates x 135 points for three models).

    Args:
        ts: the validation predictions and their ground truth.
        grid: post-processing grid (:func:`tune_postprocess`; None = :data:`DEFAULT_GRID`).
        base_params: the parameters the grid leaves (None = the recipe).
        weight_choices, max_models: the candidates (:func:`combinations`).
        iou_thr, min_votes: fusion settings of every multi-model candidate (``min_votes`` is
            capped at the candidate's model count).
        min_score: instances scoring below this are dropped before fusing (None = half the grid's
            lowest ``score_thresh``). A fused instance scores at most its best member, so one made only
            of such instances could not pass any threshold of the grid; dropping them changes the
            survivors by at most their small share of the vote, and makes fusion several times faster.
            It is part of the saved combination, so the test predictions are fused the same way.
        refine: how many candidates of the first stage get the full grid.
        drop_categories: each search ends by dropping the categories that lower the score
            (:func:`tune_postprocess`).
        out_path: when given, the winner is saved there (``params.json`` format of
            :func:`lib.postprocess.save_params`, plus ``"ensemble"`` and ``"candidates"``).

    Returns:
        ``(combination, params, results)``: the winning :class:`lib.fusion.Combination`,
        its tuned post-processing parameters, and per candidate (in candidate order) ``{"models",
        "weights", "kaggle_first", "kaggle", "params"}``, where ``kaggle_first`` is the first-stage score
        and ``kaggle`` / ``params`` the full-grid result (None for candidates not refined). Ties go to the
        earlier (simpler) candidate.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    base = Params() if base_params is None else base_params
    if min_score is None:
        min_score = 0.5 * min(float(v) for v in grid.get("score_thresh", [base.score_thresh]))
    first_grid = {"score_thresh": grid["score_thresh"]} if "score_thresh" in grid else dict([next(iter(grid.items()))])
    cands = combinations(ts.names, weight_choices, max_models, iou_thr, min_votes, min_score)
    exhaustive = refine <= 0 or refine >= len(cands) or first_grid == grid
    first = search_candidates(ts, cands, grid if exhaustive else first_grid, base, drop_categories,
                              desc=f"tune {len(cands)} combinations")
    results, tuned = [], []  # tuned: (combination, its tuned parameters) per candidate
    for combination, (params, res) in zip(cands, first):
        score = max(r["kaggle"] for r in res)
        results.append({"models": list(combination.models), "weights": list(combination.weights),
                        "kaggle_first": score, "kaggle": score if exhaustive else None,
                        "params": {k: getattr(params, k) for k in grid} if exhaustive else None})
        tuned.append((combination, params))
    chosen = list(range(len(cands)))
    if not exhaustive:
        chosen = sorted(sorted(range(len(cands)), key=lambda i: -results[i]["kaggle_first"])[:refine])
        refined = search_candidates(ts, [cands[i] for i in chosen], grid, base, drop_categories,
                                    desc=f"refine {len(chosen)}")
        for i, (params, res) in zip(chosen, refined):
            results[i].update(kaggle=max(r["kaggle"] for r in res), params={k: getattr(params, k) for k in grid})
            tuned[i] = (tuned[i][0], params)
    best = max(chosen, key=lambda i: (results[i]["kaggle"], -i))
    combination, params = tuned[best]
    if out_path is not None:
        save_params(out_path, params, kaggle=results[best]["kaggle"], mask_size=ts.mask_size,
                    gt=str(ts.gt_path), grid={k: list(v) for k, v in grid.items()}, ensemble=combination.to_json(),
                    candidates=results)
    return combination, params, results


def load_combination(path: str | Path) -> Combination | None:
    """The combination saved in a params JSON (its ``"ensemble"`` entry, :meth:`lib.fusion.Combination.from_json`)
    by :func:`choose_combination`, or None if it has none; ``ValueError`` naming the file when the entry is
    malformed."""
    obj = read_json(path)
    entry = obj.get("ensemble") if isinstance(obj, dict) else None
    if entry is None:
        return None
    try:
        return Combination.from_json(entry)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def saved_combination(path: str | Path | None, models: Sequence[str]) -> tuple[Combination | None, Params]:
    """What 06 saved in ``path`` (its ``params.json``; None: nothing saved), for predictions of ``models``
    (names in order): ``(combination, params)``.

    ``params``: :func:`lib.postprocess.load_params` of ``path``, else the recipe. ``combination``: None without
    models; the model alone for one model (its own masks; the saved combination is not read); for several, the
    one saved in ``path`` (:func:`load_combination`) when it has one, else
    :meth:`lib.fusion.Combination.default`. Not checked against ``models``.
    ``ValueError`` naming ``path`` when what it holds is malformed.
    """
    params = load_params(path) if path else Params()
    names = list(models)
    if len(names) <= 1:
        return (Combination.default(names) if names else None), params
    saved = load_combination(path) if path else None
    return (Combination.default(names) if saved is None else saved), params


# ------------------------------------------------------------------ 06's combination


def initial_combination(names: Sequence[str], params_path: str | Path, use_saved: bool, overrides: dict,
                        weights: Sequence[float] | None = None, iou: float = 0.5, min_votes: int = 1,
                        explicit: bool = False) -> tuple[Params, Combination, str]:
    """The post-processing parameters and model combination 06 starts from: ``(params, combination, where from)``.

    ``params``: those saved in ``params_path`` when ``use_saved`` (else the recipe), with ``overrides`` (the
    flags; None values = not given). ``combination``: the flags' (``names`` with ``weights``, else equal ones, at
    ``iou`` / ``min_votes``) when ``explicit`` (models or weights given), else the one saved in ``params_path``
    (when ``use_saved`` and it has one, :func:`load_combination`), else all ``names`` with equal weights
    (:meth:`lib.fusion.Combination.default`).
    """
    base = load_params(params_path) if use_saved else Params()
    if overrides.get("attr_thresh") is not None:  # a threshold given replaces the saved per-attribute ones
        base = dataclasses.replace(base, attr_thresholds=None)
    params = base.replace(**overrides)
    saved = load_combination(params_path) if use_saved and not explicit else None
    if saved is not None:
        return params, saved, str(params_path)
    combination = Combination(tuple(names), tuple(weights) if weights else None, iou, min_votes)
    return params, combination, "flags" if explicit else "all models, equal weights"


def free_grid(grid: dict | None, fixed: dict) -> dict:
    """``grid`` (None = :data:`DEFAULT_GRID`) without the parameters ``fixed`` gives a value (not None) for."""
    free = {k: v for k, v in dict(DEFAULT_GRID if grid is None else grid).items() if fixed.get(k) is None}
    if not free:
        raise ValueError("--tune: every grid parameter is fixed by a flag; nothing to tune")
    return free


def tune_combination(ts: TuningSet, grid: dict, params: Params, combination: Combination, explicit: bool,
                     out_path: str | Path, weight_choices: Sequence[float] = (1.0, 2.0), max_models: int | None = None,
                     refine: int = 3, drop_categories: bool = False) -> tuple[Combination, Params]:
    """06's tuning on the tuning set ``ts``: returns ``(combination, params)``, saved to ``out_path``
    (``params.json``).

    A combination given by flags (``explicit``), or a single model, gets its post-processing tuned
    (:func:`tune_postprocess`); otherwise the combination and its post-processing are chosen together
    (:func:`choose_combination`, with ``combination``'s fusion IoU and minimum votes). Prints the outcome.
    """
    names = ts.names
    if explicit or len(names) == 1:
        if len(names) == 1 and not explicit:
            combination = dataclasses.replace(combination, models=tuple(names), weights=(1.0,))
        missing = [n for n in combination.models if n not in names]
        if missing:
            raise ValueError(f"--tune-on: models {missing} are not in the tuning predictions (they have "
                             f"{names})")
        params, results = tune_postprocess(ts, combination, grid, params, drop_categories=drop_categories)
        best = max(r["kaggle"] for r in results)
        save_params(out_path, params, kaggle=best, mask_size=ts.mask_size, gt=str(ts.gt_path),
                    grid={k: list(v) for k, v in grid.items()}, ensemble=combination.to_json())
        print(f"tuned {len(results)} post-processing combinations on {ts.gt_path}: best kaggle {best:.4f} with "
              f"{ {k: getattr(params, k) for k in grid} } -> {out_path}")
        return combination, params
    print(f"tuning the combination of {names} and its post-processing on {ts.gt_path} ...")
    combination, params, results = choose_combination(
        ts, grid, params, weight_choices=weight_choices, iou_thr=combination.iou, min_votes=combination.min_votes,
        max_models=max_models, refine=refine, out_path=out_path, drop_categories=drop_categories)
    ranked = sorted(results, key=lambda r: (-(r["kaggle"] if r["kaggle"] is not None else -1), -r["kaggle_first"]))
    for r in ranked[:5]:
        full = "  n/a " if r["kaggle"] is None else f"{r['kaggle']:.4f}"
        print(f"  kaggle {full} (thresholds only {r['kaggle_first']:.4f})  {r['models']} "
              f"weights {[round(w, 2) for w in r['weights']]}")
    print(f"best of {len(results)} combinations -> {out_path}")
    return combination, params


# ------------------------------------------------------------------ per-attribute thresholds


def _submission_masks(combination: Combination, task, masks) -> dict:
    """In a worker: the one table ``combination`` makes of an image's masks."""
    return {"submission": ImageFusion(masks, task.orig_hw).combine(combination)}


def tune_attribute_thresholds(ts: TuningSet, combination: Combination, params: Params,
                              out_path: str | Path | None = None) -> tuple[Params, dict | None]:
    """Per-attribute thresholds on the tuning set, around ``params.attr_thresh``.

    The instances ``combination`` post-processed with ``params`` gives (06's tuned submission) are matched to the
    ground truth (:func:`lib.scoring.table_attribute_pairs`), and the thresholds maximise micro F1 on the matched
    pairs (:func:`lib.attribute_metric.tune_thresholds`, one attribute at a time; attributes with few positives
    keep ``attr_thresh``). With ``out_path`` (the params.json tuning wrote) the result is saved into it, with the
    attribute F1 before and after (``"attributes"``).

    Returns ``(params with attr_thresholds, {"before": ..., "after": ...})`` (:func:`lib.scoring.attribute_summary`
    each); ``(params, None)`` unchanged when the predictions have no attribute scores or nothing matched.
    """
    shared = dataclasses.replace(params, attr_thresholds=None)
    pairs = table_attribute_pairs({"sources": ts.sources, "indexes": ts.indexes}, ts.gt_path, shared, ts.mask_size,
                                  ts.images, functools.partial(_submission_masks, combination), ts.processes,
                                  ts.progress).get("submission")
    if pairs is None or not len(pairs[0]):
        print("attribute thresholds: the tuning predictions have no attribute scores on matched instances; "
              f"attr_thresh {params.attr_thresh} stays")
        return params, None
    tuned = dataclasses.replace(shared, attr_thresholds=tuple(tune_thresholds(*pairs, default=shared.attr_thresh)))
    info = {"before": attribute_summary(pairs, shared), "after": attribute_summary(pairs, tuned)}
    if out_path is not None:
        saved = read_json(out_path)
        save_params(out_path, tuned, **{k: v for k, v in saved.items() if k != "params"}, attributes=info)
    b, a = info["before"], info["after"]
    print(f"attribute thresholds tuned on {ts.gt_path} ({b['num_instances']} matched instances): micro / macro F1 "
          f"{b['micro_f1']:.4f} / {b['macro_f1']:.4f} at {shared.attr_thresh} -> {a['micro_f1']:.4f} / "
          f"{a['macro_f1']:.4f} per attribute")
    return tuned, info
