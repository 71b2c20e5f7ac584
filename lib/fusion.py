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
:func:`combine` fuses the tables of one :class:`Combination` (models, weights, IoU, votes, score floor), as
:mod:`lib.tuning` chose it on the validation split.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import prediction_table as lpred
from .boxes import prob_boxes
from .postprocess import window_at
from .kaggle_metric import mask_window, window_ious

__all__ = ["fuse_windows", "fuse_instances", "fusion_plan", "fused_attributes", "Combination", "ImageFusion",
           "combine_image", "ensemble_tables", "combine", "check_weights", "compared_names", "compared_masks"]


def check_weights(weights, n: int) -> np.ndarray:
    w = np.ones(n, np.float64) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != n:
        raise ValueError(f"{len(w)} weights for {n} sources")
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w


@dataclass(frozen=True)
class Combination:
    """Which models' predictions are combined and how they are fused (:func:`combine`; 06's submission, saved
    as params.json's ``"ensemble"`` entry: :meth:`to_json`).

    ``models``: names, in fusion order (one model: its own masks, nothing fused); ``weights``: one per model,
    finite, >= 0, not all 0 (None = equal); ``iou``: a pooled instance joins a cluster at mask IoU ``>= iou``;
    ``min_votes``: clusters with fewer distinct models are dropped (1..len(models) when fused); ``min_score``:
    instances scoring below it are dropped before fusing (None = not given: none dropped, as at 0; the flags'
    combination, which params.json and scores.json write without it). Checked once, when made: ``ValueError``
    naming a bad value.
    """

    models: tuple[str, ...]
    weights: tuple[float, ...] | None = None
    iou: float = 0.5
    min_votes: int = 1
    min_score: float | None = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        put("models", tuple(str(m) for m in self.models))
        if not self.models:
            raise ValueError("a combination needs at least one model")
        put("weights", tuple(float(w) for w in check_weights(self.weights, len(self.models))))
        put("iou", float(self.iou))
        put("min_votes", int(self.min_votes))
        if len(self.models) > 1 and not 1 <= self.min_votes <= len(self.models):
            raise ValueError(f"min_votes must be 1..{len(self.models)}, got {self.min_votes}")
        if self.min_score is not None:
            put("min_score", float(self.min_score))

    @classmethod
    def default(cls, names: Sequence[str], iou: float = 0.5, min_votes: int = 1) -> Combination:
        """The combination when none is chosen: all ``names`` with equal weights, fused at ``iou`` keeping
        clusters of at least ``min_votes`` models (``min_score`` not given)."""
        return cls(tuple(names), None, iou, min_votes)

    @classmethod
    def from_json(cls, obj) -> Combination:
        """params.json's ``"ensemble"`` entry (:meth:`to_json`; missing ``weights``: equal, ``iou`` 0.5,
        ``min_votes`` 1, ``min_score`` 0); ``ValueError`` for a malformed entry or a bad value."""
        try:
            models = [str(m) for m in obj["models"]]
            weights = [float(w) for w in obj.get("weights") or [1.0] * len(models)]
            values = float(obj.get("iou", 0.5)), int(obj.get("min_votes", 1)), float(obj.get("min_score", 0.0))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed \"ensemble\" entry {obj!r:.200} ({e})") from None
        if not models or len(weights) != len(models):
            raise ValueError(f"\"ensemble\" needs one weight per model, got {obj!r:.200}")
        return cls(tuple(models), tuple(weights), *values)

    def to_json(self) -> dict:
        """``{"models", "weights", "iou", "min_votes"[, "min_score"]}`` (``min_score`` when given), as params.json,
        scores.json and meta.json hold it."""
        out = {"models": list(self.models), "weights": list(self.weights), "iou": self.iou, "min_votes": self.min_votes}
        return out if self.min_score is None else {**out, "min_score": self.min_score}

    def check_models(self, available) -> None:
        """``ValueError`` naming the models of the combination that ``available`` (names) lacks."""
        missing = [m for m in self.models if m not in available]
        if missing:
            raise ValueError(f"combination needs models {missing}, the predictions have {sorted(available)}")


def _source_arrays(src: dict, k: int):
    """A source's ``(windows, categories, scores, attr_scores)`` checked; windows ``(y0, x0, prob)``."""
    for key in ("windows", "categories", "scores"):
        if key not in src:
            raise ValueError(f"source {k}: missing {key!r}")
    wins = [(int(y), int(x), np.asarray(p, np.float32)) for y, x, p in src["windows"]]
    cats = np.asarray(src["categories"]).astype(np.int64).reshape(-1)
    scores = np.asarray(src["scores"], np.float64).reshape(-1)
    attrs = src.get("attr_scores")
    n = len(wins)
    if len(cats) != n or len(scores) != n:
        raise ValueError(f"source {k}: {n} masks, {len(cats)} categories, {len(scores)} scores")
    if attrs is not None:
        attrs = np.asarray(attrs, np.float64)
        if attrs.ndim != 2 or attrs.shape[0] != n:
            raise ValueError(f"source {k}: attr_scores must be (N, A) with N={n}, got shape {attrs.shape}")
    return wins, cats, scores, attrs


def _foreground(win) -> tuple[int, int, np.ndarray]:
    """A probability window -> the window of its pixels ``>= 0.5`` cropped to them (empty: a 0 x 0 window)."""
    y0, x0, p = win
    return mask_window(p >= 0.5, y0, x0)


def _weighted_sum(terms: list[tuple[tuple, float]]) -> tuple[int, int, np.ndarray]:
    """``clip(sum c * p, 0, 1)`` of windows ``(y0, x0, p)`` over the union of their extents, summed in order in
    float32 (as over whole maps: outside a window its map adds 0)."""
    y0 = min(w[0] for w, _ in terms)
    x0 = min(w[1] for w, _ in terms)
    y1 = max(w[0] + w[2].shape[0] for w, _ in terms)
    x1 = max(w[1] + w[2].shape[1] for w, _ in terms)
    out = np.zeros((y1 - y0, x1 - x0), np.float32)
    for (wy, wx, p), c in terms:
        out[wy - y0:wy - y0 + p.shape[0], wx - x0:wx - x0 + p.shape[1]] += np.float32(c) * p
    return y0, x0, np.clip(out, 0, 1, out=out)


def fuse_windows(sources: list[dict], weights: Sequence[float] | None = None, iou_thr: float = 0.5,
                 min_votes: int = 1, iou: Callable | None = None) -> dict:
    """Fuse the instances of several sources of one image (module docstring rules), masks given as windows.

    Args:
        sources: K dicts ``windows`` (N_k windows ``(y0, x0, prob)``: (h, w) float probabilities at rows
            ``y0..``, columns ``x0..`` of one common frame, zero elsewhere), ``categories`` (N_k,), ``scores``
            (N_k,), ``attr_scores`` (N_k, A) or None.
        weights, iou_thr, min_votes: as :func:`fuse_instances`.
        iou: ``iou(idx) -> (n, n)`` IoU of the masks binarised at 0.5 among the pooled instances ``idx`` (the
            sources' instances in order), when already known (:class:`ImageFusion`); None = counted here.

    Returns:
        ``windows`` (M fused windows ``(y0, x0, prob)``, float32, over the union of their members' windows),
        ``categories`` (M,) int64, ``scores`` (M,) float64, ``attr_scores`` (M, A) float32 or None,
        ``votes`` (M,) int64; sorted by fused score, best first. Equal to :func:`fuse_instances` of the
        pasted maps.
    """
    if not sources:
        raise ValueError("fuse_windows: no sources")
    w = check_weights(weights, len(sources))
    if min_votes < 1 or min_votes > len(sources):
        raise ValueError(f"min_votes must be 1..{len(sources)}, got {min_votes}")
    arrays = [_source_arrays(s, k) for k, s in enumerate(sources)]
    n_attr = next((a.shape[1] for *_r, a in arrays if a is not None), None)
    for k, (*_r, a) in enumerate(arrays):
        if a is not None and a.shape[1] != n_attr:
            raise ValueError(f"source {k}: {a.shape[1]} attribute scores, another source has {n_attr}")
    wins = [win for a in arrays for win in a[0]]
    src = np.concatenate([np.full(len(a[1]), k, np.int64) for k, a in enumerate(arrays)])
    cats = np.concatenate([a[1] for a in arrays])
    scores = np.concatenate([a[2] for a in arrays])
    if iou is None:
        fg = [_foreground(win) for win in wins]

        def iou(idx):
            return window_ious([fg[i] for i in idx], [fg[i] for i in idx])

    plan = fusion_plan(cats, scores, src, w, iou, iou_thr, min_votes)
    attrs = None
    if n_attr is not None:
        pooled = np.concatenate([a[3] if a[3] is not None else np.zeros((len(a[1]), n_attr)) for a in arrays])
        attrs = fused_attributes(plan, pooled, [a[3] is not None for a in arrays])
    return {
        "windows": [_weighted_sum([(wins[p], c) for p, c in members]) for members in plan["members"]],
        "categories": plan["categories"],
        "scores": plan["scores"],
        "attr_scores": attrs,
        "votes": plan["votes"],
    }


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
        distinct sources per instance; sorted by fused score, best first. (:func:`fuse_windows` on whole
        maps.)
    """
    if not sources:
        raise ValueError("fuse_instances: no sources")
    shapes = [np.asarray(s.get("masks")).shape for s in sources]
    hw = next((sh[1:] for sh in shapes if len(sh) == 3), None)
    if hw is None:
        raise ValueError("fuse_instances: no source has (N, H, W) masks to take the size from")
    windowed = []
    for k, (s, sh) in enumerate(zip(sources, shapes)):
        if "masks" not in s:
            raise ValueError(f"source {k}: missing 'masks'")
        masks = np.asarray(s["masks"], np.float32)
        if masks.ndim != 3 and masks.size == 0:
            masks = np.zeros((0, *hw), np.float32)
        if masks.ndim != 3:
            raise ValueError(f"source {k}: masks must be (N, H, W), got shape {masks.shape}")
        if masks.shape[1:] != hw:
            raise ValueError(f"source {k}: masks are {masks.shape[1:]}, source 0's are {hw}: resize first")
        windowed.append({**s, "windows": [(0, 0, m) for m in masks]})
    fused = fuse_windows(windowed, weights, iou_thr, min_votes)
    masks = np.zeros((len(fused["windows"]), *hw), np.float32)
    for m, (y0, x0, p) in zip(masks, fused["windows"]):
        m[y0:y0 + p.shape[0], x0:x0 + p.shape[1]] = p
    return {**{k: fused[k] for k in ("categories", "attr_scores", "votes")}, "masks": masks,
            "scores": fused["scores"].astype(np.float32), "boxes": prob_boxes(masks)}


def fusion_plan(categories: np.ndarray, scores: np.ndarray, sources: np.ndarray, weights: np.ndarray, iou,
                iou_thr: float = 0.5, min_votes: int = 1) -> dict:
    """The clusters of :func:`fuse_instances` and their fusion coefficients, from small arrays only.

    The rules are the module docstring's; the mask arithmetic is left to the caller, so the same plan drives
    the numpy fusion of :func:`fuse_instances` and the on-device fusion of TTA views in :mod:`lib.tta`.

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


def _stored_source(masks: list, hw: tuple[int, int]) -> dict:
    """:class:`lib.prediction_table.StoredMask` of one model and image -> a :func:`fuse_windows` source at the
    stored size ``hw`` (masks stored at another size are resized, bilinear, whole); ``attr_scores`` None unless
    every mask has attributes."""
    wins = []
    for m in masks:
        if m.hw == tuple(hw):
            win = window_at(m.q, m.x0, m.y0, m.hw, m.hw)
            wins.append(win if win is not None else (m.y0, m.x0, np.zeros((0, 0), np.float32)))
        else:
            full = np.zeros(m.hw, np.float32)
            full[m.y0:m.y0 + m.q.shape[0], m.x0:m.x0 + m.q.shape[1]] = m.q[:m.hw[0] - m.y0, :m.hw[1] - m.x0] / 255.0
            wins.append((0, 0, cv2.resize(full, (int(hw[1]), int(hw[0])), interpolation=cv2.INTER_LINEAR)))
    attrs = None
    if masks and all(m.attrs is not None for m in masks):
        attrs = np.stack([m.attrs for m in masks])
    return {"windows": wins, "categories": [m.category for m in masks], "scores": [m.score for m in masks],
            "attr_scores": attrs}


def _stored(win, category: int, score: float, attrs, hw: tuple[int, int], scale: tuple[float, float] | None):
    """A fused window -> the :class:`lib.prediction_table.StoredMask` a table row would hold (quantized and
    cropped as :func:`lib.prediction_table.encode_prob`), computed on the window; with ``scale`` (x, y: original
    pixels per mask pixel) its box (:func:`lib.boxes.prob_boxes` of the fused map), else no box."""
    y0, x0, p = win
    p = p[:max(0, hw[0] - y0), :max(0, hw[1] - x0)]
    qx, qy, q = lpred.nonzero_crop(np.clip(np.rint(p * 255), 0, 255).astype(np.uint8))
    if q.any():
        qx, qy = qx + x0, qy + y0
    box = None
    if scale is not None:
        b = prob_boxes(p[None])[0] + np.array([x0, y0, x0, y0], np.float32) if (p > 0).any() else np.zeros(4)
        box = (b[0] * scale[0], b[1] * scale[1], b[2] * scale[0], b[3] * scale[1])
    keep = attrs is not None and not np.isnan(attrs).any()
    return lpred.StoredMask(int(category), float(np.float32(score)), attrs.astype(np.float32) if keep else None,
                            qx, qy, q, tuple(hw), box)


class ImageFusion:
    """One image's masks of several models (``masks``: model name -> its
    :class:`lib.prediction_table.StoredMask` list, table order; ``orig_hw``: the image's original size),
    prepared once for every combination fused from them (:meth:`combine`; 06's tuning fuses up to 16 per
    image): each model's windows at a stored size and the IoUs of each category's instances over all models are
    computed once, the weights and the subset of models being all that differs."""

    def __init__(self, masks: dict[str, list], orig_hw: tuple[int, int] | None = None):
        self.masks = masks
        self.orig_hw = orig_hw
        self._kept: dict = {}  # min_score -> {name: masks scoring >= min_score}
        self._sources: dict = {}  # (min_score, name, hw) -> fuse_windows source with "fg"
        self._ious: dict = {}  # (min_score, hw, category) -> ({(name, j): row}, IoU matrix)

    def _scoring(self, min_score: float) -> dict[str, list]:
        if min_score not in self._kept:
            self._kept[min_score] = {n: [m for m, ok in zip(ms, np.array([m.score for m in ms], np.float32)
                                                              >= min_score) if ok] if min_score > 0 else ms
                                     for n, ms in self.masks.items()}
        return self._kept[min_score]

    def _source(self, min_score: float, name: str, hw) -> dict:
        key = (min_score, name, hw)
        if key not in self._sources:
            src = _stored_source(self._scoring(min_score)[name], hw)
            self._sources[key] = dict(src, fg=[_foreground(w) for w in src["windows"]])
        return self._sources[key]

    def _iou(self, min_score: float, hw, category: int, keys: list) -> np.ndarray:
        """IoU among the instances ``keys`` ((model name, index) pairs, all of ``category``)."""
        cache = (min_score, hw, category)
        if cache not in self._ious:
            everyone = [(n, j) for n in self.masks for j, c in enumerate(self._source(min_score, n, hw)["categories"])
                        if c == category]
            fg = [self._source(min_score, n, hw)["fg"][j] for n, j in everyone]
            self._ious[cache] = ({k: r for r, k in enumerate(everyone)}, window_ious(fg, fg))
        rows, matrix = self._ious[cache]
        at = [rows[k] for k in keys]
        return matrix[np.ix_(at, at)]

    def combine(self, combination: Combination, boxes: bool = False) -> list:
        """The masks of one combination (:func:`combine`'s rules): a model's own for one model, else its models
        fused (:func:`fuse_windows` with the combination's ``weights``, ``iou``, ``min_votes`` and ``min_score``)
        into the masks a fused table row stores (:func:`ensemble_tables`' rules; empty when no model has a mask
        scoring ``>= min_score``); their boxes only with ``boxes`` (what a table row needs)."""
        names = list(combination.models)
        combination.check_models(self.masks)
        if len(names) == 1:
            return self.masks[names[0]]
        min_score = combination.min_score or 0.0
        kept = self._scoring(min_score)
        ref = next((kept[n] for n in names if kept[n]), None)
        if ref is None:
            return []
        hw = ref[0].hw
        sources = [self._source(min_score, n, hw) for n in names]
        pooled = [(n, j) for n, src in zip(names, sources) for j in range(len(src["windows"]))]
        cats = [c for src in sources for c in src["categories"]]

        def iou(idx):
            return self._iou(min_score, hw, cats[idx[0]], [pooled[i] for i in idx]) if len(idx) else np.zeros((0, 0))

        fused = fuse_windows(sources, combination.weights, combination.iou, combination.min_votes, iou)
        scale = None
        if boxes:
            scale = (self.orig_hw[1] / hw[1], self.orig_hw[0] / hw[0]) if self.orig_hw else (1.0, 1.0)
        attrs = fused["attr_scores"]
        return [_stored(win, c, sc, None if attrs is None else attrs[i], hw, scale)
                for i, (win, c, sc) in enumerate(zip(fused["windows"], fused["categories"], fused["scores"]))]


def combine_image(masks: dict[str, list], combination: Combination, orig_hw: tuple[int, int] | None = None) -> list:
    """One image's masks of one combination (:meth:`ImageFusion.combine`): ``masks`` maps model name -> its
    :class:`lib.prediction_table.StoredMask` list (table order)."""
    return ImageFusion(masks, orig_hw).combine(combination)


def ensemble_tables(
    tables: list[pd.DataFrame],
    weights: Sequence[float] | None = None,
    iou_thr: float = 0.5,
    min_votes: int = 1,
    model_name: str = "ensemble",
    min_score: float = 0.0,
    progress: bool = True,
) -> pd.DataFrame:
    """Fuse prediction tables (one source each, :mod:`lib.prediction_table` format) image by image, in memory
    (small sets: 06 fuses image by image in its passes, :func:`combine_image`).

    Args:
        tables: K prediction tables; each is one source (split a table holding
            several models by its ``model`` column first).
        weights: K weights (None = equal).
        iou_thr, min_votes: as :func:`fuse_instances`.
        model_name: the ``model`` value of the output rows.
        min_score: rows scoring below this are dropped before fusing.
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
    combination = Combination(tuple(str(k) for k in range(len(tables))), weights, iou_thr, min_votes, min_score)
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
        orig = (int(ref["orig_height"].iloc[0]), int(ref["orig_width"].iloc[0]))
        sources = [lpred.stored_masks(g[image_id]) if image_id in g else [] for g in groups]
        fused = ImageFusion(dict(zip(combination.models, sources)), orig).combine(combination, boxes=True)
        out_rows += lpred.mask_rows(image_id, model_name, fused, orig)
    return lpred.make_table(out_rows)


def combine(sources: dict[str, pd.DataFrame], combination: Combination, progress: bool = False) -> pd.DataFrame:
    """The prediction table of one combination: the model's own table for one model, else
    :func:`ensemble_tables` of its models with its ``weights``, ``iou``, ``min_votes`` and ``min_score``.
    ``sources`` maps model name -> prediction table."""
    combination.check_models(sources)
    if len(combination.models) == 1:
        return sources[combination.models[0]]
    return ensemble_tables([sources[m] for m in combination.models], combination.weights, combination.iou,
                           combination.min_votes, min_score=combination.min_score or 0.0, progress=progress)


def compared_names(names: Sequence[str], combination: Combination, with_ensemble: bool) -> list[str]:
    """The tables 06 compares (:func:`compared_masks`), in order."""
    names = list(names)
    if len(names) < 2:
        return names
    if list(combination.models) == names and np.allclose(combination.weights, 1.0):
        return names + ["ensemble"]
    return names + (["ensemble"] if with_ensemble else []) + ["submission"]


def compared_masks(names: Sequence[str], combination: Combination, ensemble: Combination | None, task,
                   masks: dict[str, list], boxes: bool = False) -> dict[str, list]:
    """What 06 compares, for one image (a :func:`lib.table_stream.map_images` function: ``task`` is its
    :class:`lib.table_stream.ImageTask`, ``masks`` its sources' masks): each model alone, all models fused with
    equal weights (``"ensemble"``: the submission itself when ``combination`` is that, else ``ensemble``, all of
    ``names`` by :meth:`Combination.default`, fused here unless None) and, when it is neither of those, the
    submission's combination (``"submission"``). One model alone: just it. Values:
    :class:`lib.prediction_table.StoredMask` lists (fused ones with their boxes only with ``boxes``)."""

    wanted = compared_names(names, combination, ensemble is not None)
    out = {n: masks[n] for n in names}
    if len(wanted) == len(out):
        return out
    fusion = ImageFusion(masks, task.orig_hw)
    submission = fusion.combine(combination, boxes)
    if "submission" not in wanted:  # the submission is all models with equal weights
        return {**out, "ensemble": submission}
    if "ensemble" in wanted:
        out["ensemble"] = fusion.combine(ensemble, boxes)
    return {**out, "submission": submission}
