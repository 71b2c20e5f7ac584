"""Choosing the post-processing and the combination of models on validation ground truth (06's tuning).

Post-processing (:func:`tune_postprocess`): a grid search over :mod:`lib.postprocess` parameters
(:data:`DEFAULT_GRID` unless another is given) maximising the Kaggle metric, optionally followed by
dropping the categories whose predictions lower it (:func:`choose_dropped_categories`).

The combination (:func:`tune_ensemble`): every non-empty subset of
the models, each with every weight vector of :func:`weight_vectors` (distinct
ratios only), is fused (:func:`lib.fusion.combine`) on the validation predictions and scored over the
score thresholds; the few best get the full post-processing grid, and the best Kaggle metric wins; ties go to
the simpler combination (fewer models, then equal weights). The
choice is saved with the post-processing parameters (``params.json``, key
``"ensemble"``: ``models``, ``weights``, ``iou``, ``min_votes``) and
:func:`load_combination` reads it back, so 06 applies to the test predictions
exactly what won on validation.
"""
from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from .fusion import check_weights, combine
from .io import read_json
from .postprocess import POSTPROCESS_DEFAULTS, load_params, resolve_params, save_params
from .scoring import class_scores, decode_all, load_ground_truth, score_windows

__all__ = ["DEFAULT_GRID", "score_dropping", "choose_dropped_categories", "tune_postprocess", "weight_vectors",
           "combinations", "tune_ensemble", "load_combination", "initial_choice", "free_grid", "tune_choice"]


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


def tune_postprocess(pred_table: pd.DataFrame, gt_csv_path: str | Path, grid: dict[str, Sequence] | None = None,
         mask_size: int | None = 512, base_params: dict | None = None, full_class_ids: bool = False,
         out_path: str | Path | None = None, images: pd.DataFrame | None = None,
         progress: bool = True, drop_categories: bool = False) -> tuple[dict, list[dict]]:
    """Grid search of post-processing parameters maximising the Kaggle metric on ``gt_csv_path`` (and, with
    ``drop_categories``, then the categories to drop).

    Args:
        grid: ``{param: [values, ...]}`` over :data:`lib.postprocess.POSTPROCESS_DEFAULTS` keys
            (default :data:`DEFAULT_GRID`); other parameters from ``base_params``.
        out_path: when given, the best parameters are saved there
            (:func:`lib.postprocess.save_params`, with the score and the grid) for 06 to load.
        images: also score these images (as :func:`lib.scoring.score_table`).
        drop_categories: after the grid, with the best parameters, drop the categories whose
            predictions lower the score (:func:`choose_dropped_categories`; categories the model never
            gets right only add zeros to the images' averages). Not with ``full_class_ids``. Off by default:
            on a small tuning split it overfits (the demo's 12 val images: test 0.42 -> 0.36).

    Returns:
        ``(best_params, results)``; ``results`` is one dict ``{"params":
        {grid values}, "kaggle": score}`` per combination in grid order; ties
        go to the first combination; when categories were dropped, one more entry
        ``{"params": {grid values of the best, "drop_categories": [...]}, "kaggle": score}`` follows.

    Probability windows are decoded and resized once (at the lowest
    score_thresh of the grid) and reused for every combination.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    base = resolve_params(base_params)
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError(f"tune: empty grid {grid}")
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())]
    checked = [resolve_params(base, **c) for c in combos]
    gt = load_ground_truth(gt_csv_path, mask_size, full_class_ids, progress=progress)
    floor = min(p["score_thresh"] for p in checked)
    windows, sizes, _ = decode_all(pred_table, gt, images, mask_size, floor, progress)
    results = []
    best, best_score, best_combo = None, -math.inf, None
    for combo, params in tqdm(list(zip(combos, checked)), desc="tune", unit="combo", disable=not progress):
        score = score_windows(windows, gt, sizes, params, full_class_ids, coco=False)["kaggle"]
        results.append({"params": combo, "kaggle": score})
        if score > best_score:
            best, best_score, best_combo = params, score, combo
    if drop_categories and not full_class_ids:
        dropped, score = choose_dropped_categories(class_scores(windows, gt, sizes, best))
        if dropped:
            best = resolve_params(best, drop_categories=sorted(set(best["drop_categories"]) | set(dropped)))
            best_score = score
            results.append({"params": dict(best_combo, drop_categories=list(best["drop_categories"])),
                            "kaggle": score})
    if out_path is not None:
        save_params(out_path, best, kaggle=best_score, mask_size=mask_size, gt=str(gt_csv_path),
                    grid={k: list(v) for k, v in grid.items()})
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


def combinations(names: Sequence[str], weight_choices: Sequence[float] = (1.0, 2.0),
                 max_models: int | None = None) -> list[dict]:
    """Candidate combinations ``{"models": [...], "weights": [...]}``: each non-empty subset of ``names``
    (at most ``max_models`` models; fewer models first, in ``names`` order), with each of its
    :func:`weight_vectors` (a single model has weight 1)."""
    names = list(dict.fromkeys(names))
    if not names:
        raise ValueError("combinations: no models")
    top = len(names) if max_models is None else max(1, min(int(max_models), len(names)))
    out = []
    for k in range(1, top + 1):
        for subset in itertools.combinations(names, k):
            for w in (weight_vectors(k, weight_choices) if k > 1 else [(1.0,)]):
                out.append({"models": list(subset), "weights": list(w)})
    return out


def tune_ensemble(sources: dict[str, pd.DataFrame], gt_csv_path: str | Path, grid: dict | None = None,
                  mask_size: int | None = 512, base_params: dict | None = None,
                  weight_choices: Sequence[float] = (1.0, 2.0), iou_thr: float = 0.5, min_votes: int = 1,
                  max_models: int | None = None, min_score: float | None = None, refine: int = 3,
                  full_class_ids: bool = False, images: pd.DataFrame | None = None,
                  out_path: str | Path | None = None, progress: bool = True,
                  drop_categories: bool = False) -> tuple[dict, dict, list[dict]]:
    """Choose the model combination, its weights and its post-processing on validation ground truth.

    Two stages: every candidate (:func:`combinations`) is fused and scored over the grid's
    ``score_thresh`` values alone (the other parameters at ``base_params``); the ``refine`` best are
    then searched over the whole grid, and the best of those wins. ``refine <= 0`` searches the whole
    grid for every candidate (exhaustive; 19 candidates x 135 points for three models).

    Args:
        sources: model name -> prediction table of the validation images.
        gt_csv_path: train.csv-format ground truth of those images.
        grid: post-processing grid (:func:`tune_postprocess`; None = :data:`DEFAULT_GRID`).
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
        ``(combo, params, results)``: the winning ``{"models", "weights", "iou", "min_votes", "min_score"}``,
        its tuned post-processing parameters, and per candidate (in candidate order) ``{"models",
        "weights", "kaggle_first", "kaggle", "params"}``, where ``kaggle_first`` is the first-stage score
        and ``kaggle`` / ``params`` the full-grid result (None for candidates not refined). Ties go to the
        earlier (simpler) candidate.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    base = resolve_params(base_params)
    if min_score is None:
        min_score = 0.5 * min(float(v) for v in grid.get("score_thresh", [base["score_thresh"]]))
    first_grid = {"score_thresh": grid["score_thresh"]} if "score_thresh" in grid else dict([next(iter(grid.items()))])
    cands = combinations(list(sources), weight_choices, max_models)
    exhaustive = refine <= 0 or refine >= len(cands) or first_grid == grid

    def search(table, g):
        params, res = tune_postprocess(table, gt_csv_path, g, mask_size, base, full_class_ids, images=images,
                                progress=False, drop_categories=drop_categories)
        return max(r["kaggle"] for r in res), params

    results, tuned = [], []  # tuned: (combination, its tuned parameters) per candidate
    for c in tqdm(cands, desc="combinations", unit="combo", disable=not progress or len(cands) == 1):
        combo = dict(c, iou=float(iou_thr), min_votes=min(int(min_votes), len(c["models"])),
                     min_score=float(min_score))
        table = combine(sources, combo)
        score, params = search(table, grid if exhaustive else first_grid)
        results.append({"models": combo["models"], "weights": combo["weights"], "kaggle_first": score,
                        "kaggle": score if exhaustive else None,
                        "params": {k: params[k] for k in grid} if exhaustive else None})
        tuned.append((combo, params))  # fused tables are not kept (memory): the few refined are fused again
    if exhaustive:
        chosen = list(range(len(cands)))
    else:
        chosen = sorted(sorted(range(len(cands)), key=lambda i: -results[i]["kaggle_first"])[:refine])
        for i in tqdm(chosen, desc="refine", unit="combo", disable=not progress):
            score, params = search(combine(sources, tuned[i][0]), grid)
            results[i].update(kaggle=score, params={k: params[k] for k in grid})
            tuned[i] = (tuned[i][0], params)
    best = max(chosen, key=lambda i: (results[i]["kaggle"], -i))
    combo, params = tuned[best]
    if out_path is not None:
        save_params(out_path, params, kaggle=results[best]["kaggle"], mask_size=mask_size,
                         gt=str(gt_csv_path), grid={k: list(v) for k, v in grid.items()}, ensemble=combo,
                         candidates=results)
    return combo, params, results


def load_combination(path: str | Path) -> dict | None:
    """The ``"ensemble"`` choice saved in a params JSON by :func:`tune_ensemble`, or None if it has none.

    Returns ``{"models": [...], "weights": [...], "iou": float, "min_votes": int, "min_score": float}``;
    raises ``ValueError`` naming the file when the entry is malformed.
    """
    obj = read_json(path)
    combo = obj.get("ensemble") if isinstance(obj, dict) else None
    if combo is None:
        return None
    try:
        models = [str(m) for m in combo["models"]]
        weights = [float(w) for w in combo.get("weights") or [1.0] * len(models)]
        out = {"models": models, "weights": weights, "iou": float(combo.get("iou", 0.5)),
               "min_votes": int(combo.get("min_votes", 1)), "min_score": float(combo.get("min_score", 0.0))}
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: malformed \"ensemble\" entry {combo!r:.200} ({e})") from None
    if not models or len(weights) != len(models):
        raise ValueError(f"{path}: \"ensemble\" needs one weight per model, got {combo!r:.200}")
    check_weights(weights, len(models))
    return out


# ------------------------------------------------------------------ 06's choice


def initial_choice(names: Sequence[str], params_path: str | Path, use_saved: bool, overrides: dict,
                   weights: Sequence[float] | None = None, iou: float = 0.5, min_votes: int = 1,
                   explicit: bool = False) -> tuple[dict, dict, str]:
    """The post-processing parameters and model combination 06 starts from: ``(params, combo, where from)``.

    ``params``: those saved in ``params_path`` when ``use_saved`` (else :data:`lib.postprocess.POSTPROCESS_DEFAULTS`),
    updated with ``overrides`` (None values = not given). ``combo``: ``{"models", "weights", "iou", "min_votes"}``
    of the flags when ``explicit`` (models or weights given), else the one saved in ``params_path`` (when
    ``use_saved`` and it has one, :func:`load_combination`), else all ``names`` with equal weights.
    """
    base = load_params(params_path) if use_saved else dict(POSTPROCESS_DEFAULTS)
    params = resolve_params(base, **overrides)
    combo = {"models": list(names), "weights": list(weights or [1.0] * len(names)), "iou": iou,
             "min_votes": min_votes}
    origin = "flags" if explicit else "all models, equal weights"
    if use_saved and not explicit:
        saved = load_combination(params_path)
        if saved is not None:
            combo, origin = saved, str(params_path)
    return params, combo, origin


def free_grid(grid: dict | None, fixed: dict) -> dict:
    """``grid`` (None = :data:`DEFAULT_GRID`) without the parameters ``fixed`` gives a value (not None) for."""
    free = {k: v for k, v in dict(DEFAULT_GRID if grid is None else grid).items() if fixed.get(k) is None}
    if not free:
        raise ValueError("--tune: every grid parameter is fixed by a flag; nothing to tune")
    return free


def tune_choice(sources: dict[str, pd.DataFrame], gt_csv_path: str | Path, images: pd.DataFrame | None, grid: dict,
                mask_size: int | None, params: dict, combo: dict, explicit: bool, out_path: str | Path,
                weight_choices: Sequence[float] = (1.0, 2.0), max_models: int | None = None, refine: int = 3,
                full_class_ids: bool = False, drop_categories: bool = False,
                progress: bool = True) -> tuple[dict, dict]:
    """06's tuning on the ground truth ``gt_csv_path`` of ``sources``' images: returns ``(combo, params)``, saved
    to ``out_path`` (``params.json``).

    A combination given by flags (``explicit``), or a single model, gets its post-processing tuned
    (:func:`tune_postprocess`); otherwise the combination and its post-processing are chosen together
    (:func:`tune_ensemble`, with ``combo``'s fusion IoU and minimum votes). Prints the outcome.
    """
    if explicit or len(sources) == 1:
        if len(sources) == 1 and not explicit:
            combo = dict(combo, models=list(sources), weights=[1.0])
        missing = [n for n in combo["models"] if n not in sources]
        if missing:
            raise ValueError(f"--tune-on: models {missing} are not in the tuning predictions (they have "
                             f"{list(sources)})")
        params, results = tune_postprocess(combine(sources, combo, progress), gt_csv_path, grid, mask_size, params,
                                           full_class_ids, images=images, progress=progress,
                                           drop_categories=drop_categories)
        best = max(r["kaggle"] for r in results)
        save_params(out_path, params, kaggle=best, mask_size=mask_size, gt=str(gt_csv_path),
                    grid={k: list(v) for k, v in grid.items()}, ensemble=combo)
        print(f"tuned {len(results)} post-processing combinations on {gt_csv_path}: best kaggle {best:.4f} with "
              f"{ {k: params[k] for k in grid} } -> {out_path}")
        return combo, params
    print(f"tuning the combination of {list(sources)} and its post-processing on {gt_csv_path} ...")
    combo, params, results = tune_ensemble(
        sources, gt_csv_path, grid, mask_size, params, weight_choices=weight_choices, iou_thr=combo["iou"],
        min_votes=combo["min_votes"], max_models=max_models, refine=refine, full_class_ids=full_class_ids,
        images=images, out_path=out_path, progress=progress, drop_categories=drop_categories)
    ranked = sorted(results, key=lambda r: (-(r["kaggle"] if r["kaggle"] is not None else -1), -r["kaggle_first"]))
    for r in ranked[:5]:
        full = "  n/a " if r["kaggle"] is None else f"{r['kaggle']:.4f}"
        print(f"  kaggle {full} (thresholds only {r['kaggle_first']:.4f})  {r['models']} "
              f"weights {[round(w, 2) for w in r['weights']]}")
    print(f"best of {len(results)} combinations -> {out_path}")
    return combo, params
