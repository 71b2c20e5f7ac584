"""Fusing instance predictions: test-time augmentation inside one model (05), and several models (06).

:func:`fuse_instances` works on arrays at one common resolution; a *source*
is one set of predictions for one image (one model, or one TTA view already
mapped back to the original frame)::

    {"masks": (N, H, W) float32 probabilities in [0, 1],
     "categories": (N,) int category ids,
     "scores": (N,) float confidences,
     "attr_scores": (N, A) float attribute probabilities, or None}

Fusion, category by category (instances of different categories never fuse):

1. All instances of the category from every source are pooled and sorted by
   ``weight[source] * score``, best first (stable).
2. Greedy clustering: each instance joins the cluster whose *seed* (first
   member) it overlaps most, if that mask IoU (masks binarised at 0.5) is
   ``>= iou_thr``; otherwise it seeds a new cluster. Comparing with the seed
   only (not with the growing fused mask) keeps the result independent of
   how many members a cluster already has, as in weighted boxes fusion.
3. Per cluster and source present in it: the source's vote is its best
   member score ``s_k``; its map ``p_k`` is the score-weighted mean of its
   members (usually one; several when a source predicted near-duplicates).
4. Fused score ``= sum_k w_k s_k / sum_all w``: the denominator runs over
   *all* sources, so an instance found by only some of them loses their
   weight share (voting). Identical sources give back the input scores.
5. Fused mask ``= sum_k w_k s_k p_k / (s_bar * sum_all w)`` with
   ``s_bar = sum_k w_k s_k / sum_k w_k`` (present sources): the
   score*weight-weighted average of the members' maps in which every absent
   source counts as an all-zero map of weight ``w * s_bar``. Equivalently,
   the weighted mean of the present maps times the present sources' weight
   share, so pixels that only some sources mark are damped the same way the
   score is, and a later mask threshold acts as a pixel-level vote.
6. Clusters with fewer than ``min_votes`` distinct sources are dropped.
7. Attribute scores: the ``w_k s_k``-weighted mean over the present sources
   that have attributes (a row of NaN when none of them has).

:func:`ensemble_tables` applies this image by image to prediction tables in
the :mod:`lib.prediction_table` format and returns a table of the same format.
:func:`combine` fuses the tables of one combination (models, weights, IoU, votes), as
:mod:`lib.tuning` chose it on the validation split.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import prediction_table as lpred
from .boxes import prob_boxes
from .metric import mask_iou

__all__ = ["fuse_instances", "fusion_plan", "fused_attributes", "table_sources", "ensemble_tables",
           "combine", "check_weights", "compared_tables"]


def check_weights(weights, n: int) -> np.ndarray:
    w = np.ones(n, np.float64) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} sources")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w


def _source_arrays(src: dict, k: int, hw: tuple[int, int] | None):
    for key in ("masks", "categories", "scores"):
        if key not in src:
            raise ValueError(f"source {k}: missing {key!r}")
    masks = np.asarray(src["masks"], np.float32)
    if masks.ndim != 3:
        if masks.size == 0 and hw is not None:
            masks = np.zeros((0, *hw), np.float32)
        else:
            raise ValueError(f"source {k}: masks must be (N, H, W), got shape {masks.shape}")
    cats = np.asarray(src["categories"]).astype(np.int64).reshape(-1)
    scores = np.asarray(src["scores"], np.float64).reshape(-1)
    attrs = src.get("attr_scores")
    n = masks.shape[0]
    if len(cats) != n or len(scores) != n:
        raise ValueError(f"source {k}: {n} masks, {len(cats)} categories, {len(scores)} scores")
    if attrs is not None:
        attrs = np.asarray(attrs, np.float64)
        if attrs.ndim != 2 or attrs.shape[0] != n:
            raise ValueError(f"source {k}: attr_scores must be (N, A) with N={n}, got shape {attrs.shape}")
    return masks, cats, scores, attrs



def fuse_instances(
    sources: list[dict], weights: Sequence[float] | None = None, iou_thr: float = 0.5, min_votes: int = 1
) -> dict:
    """Fuse the instances of several sources of one image (see the module docstring for the rules).

    Args:
        sources: K dicts ``masks`` (N_k, H, W) float probabilities (same H, W
            for all), ``categories`` (N_k,), ``scores`` (N_k,), ``attr_scores``
            (N_k, A) or None.
        weights: K non-negative weights (None = all 1).
        iou_thr: a pooled instance joins a cluster when its mask IoU with the
            cluster's seed is ``>= iou_thr`` (masks binarised at 0.5).
        min_votes: keep clusters with at least this many distinct sources.

    Returns:
        ``masks`` (M, H, W) float32, ``categories`` (M,) int64, ``scores``
        (M,) float32, ``attr_scores`` (M, A) float32 (NaN rows where no member
        had attributes) or None when no source has attributes, ``boxes`` (M, 4)
        float32 in mask pixels (:func:`lib.boxes.prob_boxes`), ``votes`` (M,) int64
        distinct sources per instance; sorted by fused score, best first.
    """
    if not sources:
        raise ValueError("fuse_instances: no sources")
    w = check_weights(weights, len(sources))
    if min_votes < 1 or min_votes > len(sources):
        raise ValueError(f"min_votes must be 1..{len(sources)}, got {min_votes}")
    hw = None
    for s in sources:
        m = np.asarray(s.get("masks"))
        if m.ndim == 3:
            hw = m.shape[1:]
            break
    arrays = [_source_arrays(s, k, hw) for k, s in enumerate(sources)]
    if hw is None:
        raise ValueError("fuse_instances: no source has (N, H, W) masks to take the size from")
    for k, (masks, *_rest) in enumerate(arrays):
        if masks.shape[1:] != hw:
            raise ValueError(f"source {k}: masks are {masks.shape[1:]}, source 0's are {hw}: resize first")
    n_attr = next((a.shape[1] for *_r, a in arrays if a is not None), None)
    for k, (*_r, a) in enumerate(arrays):
        if a is not None and a.shape[1] != n_attr:
            raise ValueError(f"source {k}: {a.shape[1]} attribute scores, another source has {n_attr}")

    src = np.concatenate([np.full(len(a[1]), k, np.int64) for k, a in enumerate(arrays)])
    cats = np.concatenate([a[1] for a in arrays])
    scores = np.concatenate([a[2] for a in arrays])
    local = np.concatenate([np.arange(len(a[1])) for a in arrays])
    maps = [arrays[src[i]][0][local[i]] for i in range(len(src))]  # views, no copy

    def iou(idx):
        binary = np.stack([maps[i] >= 0.5 for i in idx])
        return mask_iou(binary, binary)

    plan = fusion_plan(cats, scores, src, w, iou, iou_thr, min_votes)
    out_masks = []
    for members in plan["members"]:
        fused = np.zeros(hw, np.float32)
        for p, c in members:
            fused += np.float32(c) * maps[p]
        out_masks.append(np.clip(fused, 0, 1, out=fused))
    masks = np.stack(out_masks) if out_masks else np.zeros((0, *hw), np.float32)
    attrs = None
    if n_attr is not None:
        pooled = np.concatenate([a[3] if a[3] is not None else np.zeros((len(a[1]), n_attr)) for a in arrays])
        attrs = fused_attributes(plan, pooled, [a[3] is not None for a in arrays])
    return {
        "masks": masks,
        "categories": plan["categories"],
        "scores": plan["scores"].astype(np.float32),
        "attr_scores": attrs,
        "boxes": prob_boxes(masks),
        "votes": plan["votes"],
    }


def fusion_plan(categories: np.ndarray, scores: np.ndarray, sources: np.ndarray, weights: np.ndarray, iou,
                iou_thr: float = 0.5, min_votes: int = 1) -> dict:
    """The clusters of :func:`fuse_instances` and their fusion coefficients, from small arrays only.

    The rules are the module docstring's; the mask arithmetic is left to the caller, so the same plan drives
    the numpy fusion of :func:`fuse_instances` and the on-device fusion of TTA views in :mod:`lib.inference`.

    Args:
        categories, scores, sources: (N,) the pooled instances' category, score and source index (0..K-1).
        weights: (K,) source weights, finite, >= 0, not all 0 (not checked here: :func:`fuse_instances` checks them).
        iou: ``iou(idx) -> (n, n)`` mask IoU (masks binarised at 0.5) among the pooled instances ``idx``
            (an int array of n indices, all of one category).
        iou_thr, min_votes: as in :func:`fuse_instances`.

    Returns a dict over the M fused instances, sorted by fused score (best first, stable):
    ``members`` (M lists of ``(pooled index, coefficient)``: fused mask = ``clip(sum coefficient * map, 0,
    1)``, summed in that order; every pooled instance is in at most one list), ``categories`` (M,) int64, ``scores`` (M,) float64, ``votes`` (M,) int64, and for attributes
    ``vote`` (M lists of ``(source, weight, member indices)``) used by :func:`fused_attributes`.
    """
    cats = np.asarray(categories, np.int64).reshape(-1)
    scores = np.asarray(scores, np.float64).reshape(-1)
    src = np.asarray(sources, np.int64).reshape(-1)
    w = np.asarray(weights, np.float64)
    order = np.argsort(-(w[src] * scores), kind="stable")
    w_total = w.sum()
    out_members, out_cats, out_scores, out_votes, out_vote = [], [], [], [], []
    for c in np.unique(cats):
        idx = order[cats[order] == c]
        ious = iou(idx)
        seeds: list[int] = []
        clusters: list[list[int]] = []
        for p in range(len(idx)):
            if seeds:
                j = int(np.argmax(ious[p, seeds]))
                if ious[p, seeds[j]] >= iou_thr:
                    clusters[j].append(p)
                    continue
            seeds.append(p)
            clusters.append([p])
        for members in clusters:
            by_src: dict[int, list[int]] = {}
            for p in members:
                by_src.setdefault(int(src[idx[p]]), []).append(int(idx[p]))
            if len(by_src) < min_votes:
                continue
            ks = sorted(by_src)
            s_k = np.array([max(scores[i] for i in by_src[k]) for k in ks])
            wk = w[ks]
            ws = wk * s_k
            vote = ws if ws.sum() > 0 else (wk if wk.sum() > 0 else np.ones(len(ks)))
            coef = vote / vote.sum() * (wk.sum() / w_total)  # weighted mean x present weight share
            terms = []
            for ck, k in zip(coef, ks):
                ms = by_src[k]
                sw = np.array([scores[i] for i in ms])
                sw = sw / sw.sum() if sw.sum() > 0 else np.full(len(ms), 1 / len(ms))
                terms += [(i, float(ck * a)) for a, i in zip(sw, ms)]
            out_members.append(terms)
            out_cats.append(int(c))
            out_scores.append(ws.sum() / w_total)
            out_votes.append(len(ks))
            out_vote.append([(k, float(v), by_src[k]) for k, v in zip(ks, vote)])
    srt = np.argsort(-np.asarray(out_scores, np.float64), kind="stable")
    return {
        "members": [out_members[j] for j in srt],
        "categories": np.asarray(out_cats, np.int64)[srt],
        "scores": np.asarray(out_scores, np.float64)[srt],
        "votes": np.asarray(out_votes, np.int64)[srt],
        "vote": [out_vote[j] for j in srt],
    }


def fused_attributes(plan: dict, pooled: np.ndarray, has_attrs: Sequence[bool]) -> np.ndarray:
    """(M, A) float32 attribute scores of a :func:`fusion_plan`: per fused instance, the vote-weighted mean
    over its sources that have attributes (``has_attrs[k]``) of each source's mean member row of ``pooled``
    (N, A); a row of NaN where none of its sources has attributes."""
    n_attr = pooled.shape[1]
    out = np.full((len(plan["vote"]), n_attr), np.nan)
    for m, votes in enumerate(plan["vote"]):
        have = [(v, ms) for k, v, ms in votes if has_attrs[k]]
        if have:
            a = np.stack([np.average(pooled[ms], axis=0) for _, ms in have])
            aw = np.array([v for v, _ in have])
            out[m] = np.average(a, axis=0, weights=aw if aw.sum() > 0 else np.ones(len(have)))
    return out.astype(np.float32)


def table_sources(rows: pd.DataFrame, size: tuple[int, int] | None = None) -> dict:
    """The rows of one image of a prediction table -> a :func:`fuse_instances` source.

    Probabilities are decoded at the rows' ``mask_height x mask_width`` and
    resized (bilinear) to ``size`` = (H, W) when given and different.
    ``attr_scores`` is None unless every row has attributes.
    """
    masks = []
    for r in rows.itertuples(index=False):
        p = lpred.decode_prob(r)
        if size is not None and p.shape != tuple(size):
            p = cv2.resize(p, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
        masks.append(p)
    hw = tuple(size) if size is not None else (
        (int(rows["mask_height"].iloc[0]), int(rows["mask_width"].iloc[0])) if len(rows) else (0, 0))
    attrs = None
    if len(rows) and all(a is not None and not (np.isscalar(a) and pd.isna(a)) for a in rows["attr_scores"]):
        attrs = np.stack([np.asarray(a, np.float32) for a in rows["attr_scores"]])
    return {
        "masks": np.stack(masks) if masks else np.zeros((0, *hw), np.float32),
        "categories": rows["category"].to_numpy(np.int64),
        "scores": rows["score"].to_numpy(np.float64),
        "attr_scores": attrs,
    }


def ensemble_tables(
    tables: list[pd.DataFrame],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.5,
    min_votes: int = 1,
    model_name: str = "ensemble",
    min_score: float = 0.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Fuse prediction tables (one source each, :mod:`lib.prediction_table` format) image by image.

    Args:
        tables: K prediction tables; each is one source (split a table holding
            several models by its ``model`` column first).
        weights: K weights (None = equal).
        iou_thr, min_votes: as :func:`fuse_instances`.
        model_name: the ``model`` value of the output rows.
        min_score: rows scoring below this are dropped before fusing (memory).
        progress: tqdm over images.

    Images are taken in order of first appearance over the tables. A table
    with no row for an image counts as a source that found nothing there
    (it votes against). The first table with rows for an image sets the
    mask resolution and the original size; other tables' probabilities are
    resized (bilinear) to it. Boxes are recomputed from the fused masks and
    scaled to original-image pixels.
    """
    if not tables:
        raise ValueError("ensemble_tables: no tables")
    w = check_weights(weights, len(tables))
    groups = []
    order: dict[str, None] = {}
    for t in tables:
        missing = [c for c in lpred.COLUMNS if c not in t.columns]
        if missing:
            raise ValueError(f"ensemble_tables: not a prediction table (missing columns {missing})")
        t = t[t["score"] >= min_score] if min_score > 0 else t
        g = {k: t.iloc[v] for k, v in t.groupby("image_id", sort=False).indices.items()}
        groups.append(g)
        order.update(dict.fromkeys(g))
    out_rows = []
    for image_id in tqdm(list(order), desc="ensemble", unit="img", disable=not progress):
        ref = next(g[image_id] for g in groups if image_id in g)
        mh, mw = int(ref["mask_height"].iloc[0]), int(ref["mask_width"].iloc[0])
        oh, ow = int(ref["orig_height"].iloc[0]), int(ref["orig_width"].iloc[0])
        sources = [table_sources(g[image_id] if image_id in g else ref.iloc[:0], (mh, mw)) for g in groups]
        fused = fuse_instances(sources, w, iou_thr=iou_thr, min_votes=min_votes)
        sx, sy = ow / mw, oh / mh
        for i in range(len(fused["scores"])):
            x0, y0, png = lpred.encode_prob(fused["masks"][i])
            bx = fused["boxes"][i]
            attrs = None
            if fused["attr_scores"] is not None and not np.isnan(fused["attr_scores"][i]).any():
                attrs = fused["attr_scores"][i].astype(np.float32).tolist()
            out_rows.append({
                "image_id": image_id, "model": model_name, "category": int(fused["categories"][i]),
                "score": float(fused["scores"][i]),
                "x1": bx[0] * sx, "y1": bx[1] * sy, "x2": bx[2] * sx, "y2": bx[3] * sy,
                "orig_height": oh, "orig_width": ow, "mask_height": mh, "mask_width": mw,
                "mask_x0": x0, "mask_y0": y0, "mask_png": png, "attr_scores": attrs,
            })
    return lpred.make_table(out_rows)


def combine(sources: dict[str, pd.DataFrame], combo: dict, progress: bool = False) -> pd.DataFrame:
    """The prediction table of one combination: the model's own table for one model, else
    :func:`ensemble_tables` of ``combo["models"]`` with ``combo["weights"]``, ``iou``, ``min_votes`` and
    ``min_score`` (defaults 0.5, 1 and 0). ``sources`` maps model name -> prediction table."""
    missing = [m for m in combo["models"] if m not in sources]
    if missing:
        raise ValueError(f"combination needs models {missing}, the predictions have {sorted(sources)}")
    if len(combo["models"]) == 1:
        return sources[combo["models"][0]]
    return ensemble_tables([sources[m] for m in combo["models"]], combo.get("weights"),
                           float(combo.get("iou", 0.5)), int(combo.get("min_votes", 1)),
                           min_score=float(combo.get("min_score", 0.0)), progress=progress)


def compared_tables(sources: dict[str, pd.DataFrame], combo: dict, submission: pd.DataFrame, with_ensemble: bool,
                    iou: float = 0.5, min_votes: int = 1, progress: bool = False) -> dict[str, pd.DataFrame]:
    """What 06 compares: each model alone, all models fused with equal weights (``"ensemble"``: the submission
    itself when ``combo`` is that, else fused here at ``iou`` / ``min_votes`` when ``with_ensemble``) and, when
    it is neither of those, the submission's combination (``"submission"``). One model alone: just it."""
    names = list(sources)
    out = dict(sources)
    if len(names) < 2:
        return out
    is_all = combo["models"] == names and np.allclose(combo["weights"], 1.0)
    if is_all:
        out["ensemble"] = submission
    else:
        if with_ensemble:
            all_models = {"models": names, "weights": [1.0] * len(names), "iou": iou,
                          "min_votes": min_votes, "min_score": 0.0}
            out["ensemble"] = combine(sources, all_models, progress)
        out["submission"] = submission
    return out
