"""Choosing the combination of models to fuse, and its post-processing, on the validation split (06).

Choosing the combination (:func:`tune_ensemble`): every non-empty subset of
the models, each with every weight vector of :func:`weight_vectors` (distinct
ratios only), is fused (:func:`lib.fusion.combine`) on the validation predictions and scored over the
score thresholds; the few best get the full post-processing grid
(:func:`lib.submission.tune`), and the best Kaggle metric wins; ties go to
the simpler combination (fewer models, then equal weights). The
choice is saved with the post-processing parameters (``params.json``, key
``"ensemble"``: ``models``, ``weights``, ``iou``, ``min_votes``) and
:func:`load_combination` reads it back, so 06 applies to the test predictions
exactly what won on validation.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

import pandas as pd
from tqdm import tqdm

from . import submission as lsub
from .fusion import check_weights, combine
from .io import read_json

__all__ = ["weight_vectors", "combinations", "tune_ensemble", "load_combination"]


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
        grid: post-processing grid (:func:`lib.submission.tune`; None = :data:`lib.submission.DEFAULT_GRID`).
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
            (:func:`lib.submission.tune`).
        out_path: when given, the winner is saved there (``params.json`` format of
            :func:`lib.submission.save_params`, plus ``"ensemble"`` and ``"candidates"``).

    Returns:
        ``(combo, params, results)``: the winning ``{"models", "weights", "iou", "min_votes", "min_score"}``,
        its tuned post-processing parameters, and per candidate (in candidate order) ``{"models",
        "weights", "kaggle_first", "kaggle", "params"}``, where ``kaggle_first`` is the first-stage score
        and ``kaggle`` / ``params`` the full-grid result (None for candidates not refined). Ties go to the
        earlier (simpler) candidate.
    """
    grid = dict(lsub.DEFAULT_GRID if grid is None else grid)
    base = lsub.resolve_params(base_params)
    if min_score is None:
        min_score = 0.5 * min(float(v) for v in grid.get("score_thresh", [base["score_thresh"]]))
    first_grid = {"score_thresh": grid["score_thresh"]} if "score_thresh" in grid else dict([next(iter(grid.items()))])
    cands = combinations(list(sources), weight_choices, max_models)
    exhaustive = refine <= 0 or refine >= len(cands) or first_grid == grid

    def search(table, g):
        params, res = lsub.tune(table, gt_csv_path, g, mask_size, base, full_class_ids, images=images,
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
        lsub.save_params(out_path, params, kaggle=results[best]["kaggle"], mask_size=mask_size,
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
