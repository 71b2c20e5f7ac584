"""Post-processing of a prediction table (:mod:`lib.prediction_table`): the parameters and one image's steps.

Post-processing of one image (:func:`postprocess_image`; :func:`finalize` on decoded windows), in this order:

1. keep / drop categories (``keep_categories``, ``drop_categories``);
2. drop instances scoring below ``score_thresh``;
3. resize each soft probability map to the output size (bilinear, only the
   window around its stored crop), then binarise at ``>= mask_thresh``;
4. mask NMS per category: by descending score, an instance whose mask IoU
   with an already kept instance of its category is ``> nms_iou`` is
   dropped (``nms_iou >= 1`` disables it);
5. same-class overlap suppression (``overlap="score"``): by descending score,
   each mask loses the pixels already taken by higher-scoring masks of the
   same *category* (Kaggle requires same-class masks not to overlap; the
   category is the stricter reading, since ClassIds with attributes of one
   category are still the same garment). ``overlap="none"`` skips it, which
   can produce files :func:`lib.submission_file.validate_submission` rejects (useful for scoring
   experiments only);
6. drop masks smaller than ``min_area`` pixels (empty masks always);
7. ClassId: the category, plus (``attributes="on"``, categories in
   :data:`lib.labels.ATTRIBUTE_CATEGORIES` only) the attributes whose score
   is ``>= attr_thresh`` (or, when 06 tuned them, ``>=`` its own of ``attr_thresholds``).

The parameters are a :class:`Params` record, checked once when made; its defaults are the recipe of the
competition's winning solution (score 0.5, mask threshold 0.45, NMS 0.3, same-class overlap
suppression, minimum area 20 px). Masks come out at ``mask_size x
mask_size`` (512 by the competition's convention) or, with ``mask_size=None``,
at each image's original size.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import cv2
import numpy as np
import pandas as pd

from . import labels as llabels
from . import prediction_table as lpred
from . import rle as lrle
from .files import atomic_write_json, read_json

__all__ = ["Params", "load_params", "save_params", "ProbWindow", "Instance",
           "window_at", "decode_windows", "rank_windows", "attribute_thresholds", "finalize", "postprocess_image",
           "image_groups"]


def _category_set(value, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return llabels.resolve_category_spec(value) if value.strip() else ()
    try:
        out = tuple(sorted({int(v) for v in value}))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a category spec string or a list of ids, got {value!r:.80}") from None
    bad = [c for c in out if not 0 <= c < llabels.N_CATEGORIES]
    if bad:
        raise ValueError(f"{name}: categories {bad} out of range 0-{llabels.N_CATEGORIES - 1}")
    return out


@dataclass(frozen=True)
class Params:
    """The post-processing parameters (the steps of the module docstring); the defaults are the winning recipe.

    Checked once, when made (``ValueError`` naming a bad value): the thresholds become floats (``score_thresh``,
    ``mask_thresh``, ``attr_thresh`` in [0, 1]; ``nms_iou`` >= 0), ``min_area`` an int >= 0; ``attr_thresholds``
    (one per attribute, tuned by 06: :func:`lib.tuning.tune_attribute_thresholds`) None or a tuple of values in
    [0, 1] that replaces ``attr_thresh``; ``overlap`` is
    "score" or "none", ``attributes`` "off" or "on"; the category sets become sorted tuples (``keep_categories``
    None = all), given as such or as strings such as ``"garments"`` or ``"0-26,31"``. Made from a dict of some
    fields (:meth:`from_dict`, params.json's ``"params"``), changed with :meth:`replace`, written by
    :meth:`to_json`.
    """

    score_thresh: float = 0.5
    mask_thresh: float = 0.45
    nms_iou: float = 0.3
    overlap: str = "score"
    min_area: int = 20
    keep_categories: tuple[int, ...] | None = None
    drop_categories: tuple[int, ...] = ()
    attributes: str = "off"
    attr_thresh: float = 0.5
    attr_thresholds: tuple[float, ...] | None = None

    def __post_init__(self):
        def put(name, value):
            object.__setattr__(self, name, value)

        for k in ("score_thresh", "mask_thresh", "attr_thresh"):
            value = float(getattr(self, k))
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{k} must be in [0, 1], got {value}")
            put(k, value)
        put("nms_iou", float(self.nms_iou))
        if not 0.0 <= self.nms_iou:
            raise ValueError(f"nms_iou must be >= 0, got {self.nms_iou}")
        put("min_area", int(self.min_area))
        if self.min_area < 0:
            raise ValueError(f"min_area must be >= 0, got {self.min_area}")
        if self.overlap not in ("score", "none"):
            raise ValueError(f"overlap must be 'score' or 'none', got {self.overlap!r}")
        if self.attributes not in ("off", "on"):
            raise ValueError(f"attributes must be 'off' or 'on', got {self.attributes!r}")
        if self.attr_thresholds is not None:
            thr = tuple(float(t) for t in self.attr_thresholds)
            if not thr or not all(0.0 <= t <= 1.0 for t in thr):
                raise ValueError(f"attr_thresholds must be a non-empty list of values in [0, 1], got "
                                 f"{list(self.attr_thresholds)[:8]}...")
            put("attr_thresholds", thr)
        put("keep_categories", _category_set(self.keep_categories, "keep_categories"))
        put("drop_categories", _category_set(self.drop_categories, "drop_categories") or ())

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """The parameters' names, in the order :meth:`to_json` writes them."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def _check_names(cls, values) -> None:
        unknown = sorted(set(values) - set(cls.names()))
        if unknown:
            raise ValueError(f"unknown post-processing parameters {unknown}; known: {sorted(cls.names())}")

    @classmethod
    def from_dict(cls, values: Mapping | None) -> Params:
        """The recipe updated with ``values`` (some of the parameters; None = none), checked; ``ValueError``
        naming an unknown key."""
        values = values or {}
        cls._check_names(values)
        return cls(**values)

    @classmethod
    def of(cls, params: Params | Mapping | None) -> Params:
        """``params`` as a record: itself, the recipe for None, :meth:`from_dict` of a dict."""
        return params if isinstance(params, Params) else cls.from_dict(params)

    def replace(self, **overrides) -> Params:
        """This record with ``overrides`` (None values = not given, ignored), checked; ``ValueError`` naming an
        unknown key."""
        self._check_names(overrides)
        given = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self, **given) if given else self

    def to_json(self) -> dict:
        """The parameters as params.json's ``"params"`` holds them (category sets as lists; ``attr_thresholds``
        only when tuned, so untuned files keep the format of before it)."""
        values = {k: getattr(self, k) for k in self.names() if k != "attr_thresholds" or self.attr_thresholds}
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in values.items()}


def load_params(path: str | Path) -> Params:
    """Read a params JSON (``{"params": {...}, ...}`` as :func:`save_params` writes, or a flat dict), checked
    (:meth:`Params.from_dict`; a problem names ``path``)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object of post-processing parameters")
    params = obj.get("params", obj)
    try:
        return Params.from_dict(params)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def save_params(path: str | Path, params: Params, **info) -> None:
    """Write ``{"params": params.to_json(), **info}`` atomically (the format :func:`load_params` reads)."""
    atomic_write_json(path, {"params": params.to_json(), **info})


@dataclass
class ProbWindow:
    """One instance's probability map at the output size, kept as a window: ``prob`` covers rows y0.., cols x0.."""

    category: int
    score: float
    attrs: np.ndarray | None
    y0: int
    x0: int
    prob: np.ndarray  # (h, w) float32


@dataclass
class Instance:
    """A post-processed instance: binary ``mask`` window at (y0, x0) of the output canvas."""

    category: int
    score: float
    class_id: str
    y0: int
    x0: int
    mask: np.ndarray  # (h, w) bool
    area: int
    rank: int = 0  # position in score order (ties keep table order)

    def full(self, size: tuple[int, int]) -> np.ndarray:
        out = np.zeros(size, np.uint8)
        h, w = self.mask.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.mask
        return out

    def rle(self, size: tuple[int, int]) -> str:
        """Kaggle RLE of the mask on the (H, W) canvas ``size``, computed from the window only.

        The window is padded with a background row above and below so no
        run crosses a column; runs are shifted to canvas indices, and runs
        that touch across columns (full-height windows) are merged.
        """
        h, w = self.mask.shape
        pad = np.zeros((h + 2, w), np.uint8)
        pad[1:-1] = self.mask
        starts, lengths = lrle.encode_runs(pad)
        col, row = np.divmod(starts - 1, h + 2)
        g = (self.x0 + col) * int(size[0]) + self.y0 + row - 1  # 0-based canvas starts
        e = g + lengths
        if len(g) > 1:
            brk = np.flatnonzero(g[1:] != e[:-1]) + 1
            g, e = g[np.concatenate([[0], brk])], e[np.concatenate([brk - 1, [len(e) - 1]])]
        return lrle.runs_to_string(g + 1, e - g)


def _resize_window(crop: np.ndarray, x0: int, y0: int, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
    """Resize the nonzero window of a (src_h, src_w) map to (dst_h, dst_w) without building the full map.

    ``crop`` (h, w) float32 sits at (y0, x0) of an otherwise zero map. The
    result equals (up to OpenCV's 1/32-pixel interpolation grid)
    ``cv2.resize(full_map, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)``
    restricted to the output window it touches: source coordinate
    ``u = (X + 0.5) * src_w / dst_w - 0.5``, clamped at the map's borders.
    Returns ``(Y0, X0, window)``.
    """
    (sh, sw), (dh, dw) = src_hw, dst_hw
    h, w = crop.shape
    sx, sy = dw / sw, dh / sh
    # Pad by one pixel: zeros inside the map, the edge value at the map's border (cv2.resize clamps there).
    pad = np.pad(crop, 1, mode="constant")
    if y0 == 0:
        pad[0, 1:-1] = crop[0]
    if y0 + h >= sh:
        pad[-1, 1:-1] = crop[-1]
    if x0 == 0:
        pad[:, 0] = pad[:, 1]
    if x0 + w >= sw:
        pad[:, -1] = pad[:, -2]
    X0 = max(0, math.floor((x0 - 0.5) * sx - 0.5))
    X1 = min(dw, math.ceil((x0 + w + 0.5) * sx - 0.5) + 1)
    Y0 = max(0, math.floor((y0 - 0.5) * sy - 0.5))
    Y1 = min(dh, math.ceil((y0 + h + 0.5) * sy - 0.5) + 1)
    if X1 <= X0 or Y1 <= Y0:
        return 0, 0, np.zeros((0, 0), np.float32)
    m = np.array([[1 / sx, 0, (X0 + 0.5) / sx - 0.5 - x0 + 1],
                  [0, 1 / sy, (Y0 + 0.5) / sy - 0.5 - y0 + 1]], np.float64)
    out = cv2.warpAffine(pad, m, (X1 - X0, Y1 - Y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return Y0, X0, out


def window_at(q: np.ndarray, x0: int, y0: int, stored_hw: tuple[int, int],
              out_size: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """A stored crop -> its probability window at ``out_size``: ``(y0, x0, (h, w) float32)``, or None when empty.

    ``q`` (h, w) uint8 ``round(p * 255)`` sits at (y0, x0) of a ``stored_hw`` map that is zero elsewhere (the
    ``mask_png`` of a prediction-table row); resized (:func:`_resize_window`) when ``out_size`` differs."""
    mh, mw = stored_hw
    crop = q[:max(0, mh - y0), :max(0, mw - x0)].astype(np.float32) / 255.0
    if crop.size == 0:
        return None
    if (mh, mw) != tuple(out_size):
        y0, x0, crop = _resize_window(crop, x0, y0, (mh, mw), tuple(out_size))
    return y0, x0, crop


def decode_windows(rows: pd.DataFrame, out_size: tuple[int, int], min_score: float = 0.0) -> list[ProbWindow]:
    """Rows of one image -> probability windows at ``out_size``, best score first (stable)."""
    if rows is None or len(rows) == 0:
        return []
    return rank_windows(lpred.stored_masks(rows[rows["score"].to_numpy() >= min_score]), out_size)


def rank_windows(masks: list, out_size: tuple[int, int], min_score: float = 0.0) -> list[ProbWindow]:
    """:class:`lib.prediction_table.StoredMask` of one image -> probability windows at ``out_size`` of those
    scoring ``>= min_score`` (compared in float32, as the table's column), best score first (stable)."""
    scores = np.array([m.score for m in masks], np.float32)
    keep = np.flatnonzero(scores >= min_score)
    out = []
    for i in keep[np.argsort(-scores[keep].astype(np.float64), kind="stable")]:
        m = masks[i]
        win = window_at(m.q, m.x0, m.y0, m.hw, (int(out_size[0]), int(out_size[1])))
        if win is not None:
            out.append(ProbWindow(m.category, m.score, m.attrs, *win))
    return out


def _window_iou(a: Instance, b: Instance) -> float:
    ya, yb = max(a.y0, b.y0), min(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    xa, xb = max(a.x0, b.x0), min(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    if yb <= ya or xb <= xa:
        return 0.0
    inter = int(np.count_nonzero(a.mask[ya - a.y0:yb - a.y0, xa - a.x0:xb - a.x0]
                                 & b.mask[ya - b.y0:yb - b.y0, xa - b.x0:xb - b.x0]))
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def attribute_thresholds(params: Params, num_attributes: int):
    """The threshold of each of ``num_attributes`` attribute scores: ``params.attr_thresholds`` ((A,) array;
    ``ValueError`` when A is not ``num_attributes``), else ``params.attr_thresh``."""
    if params.attr_thresholds is None:
        return params.attr_thresh
    if len(params.attr_thresholds) != num_attributes:
        raise ValueError(f"attr_thresholds has {len(params.attr_thresholds)} values, the predictions "
                         f"{num_attributes} attribute scores")
    return np.asarray(params.attr_thresholds)


def _class_id(p: ProbWindow, params: Params) -> str:
    if params.attributes == "on" and p.attrs is not None and p.category in llabels.ATTRIBUTE_CATEGORIES:
        return llabels.format_class_id(p.category, np.flatnonzero(p.attrs >= attribute_thresholds(params,
                                                                                                 len(p.attrs))))
    return str(p.category)


def finalize(probs: list[ProbWindow], params: Params, out_size: tuple[int, int]) -> list[Instance]:
    """Steps 1-7 of the module docstring on decoded windows (already sorted by score)."""
    keep, drop = params.keep_categories, set(params.drop_categories)
    kept: dict[int, list[Instance]] = {}
    for rank, p in enumerate(probs):
        if p.score < params.score_thresh or p.category in drop or (keep is not None and p.category not in keep):
            continue
        fg = p.prob >= params.mask_thresh
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        if rows.size == 0:
            continue
        fg = fg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        inst = Instance(p.category, p.score, _class_id(p, params), p.y0 + int(rows[0]), p.x0 + int(cols[0]), fg,
                     int(np.count_nonzero(fg)), rank)
        same = kept.setdefault(p.category, [])
        if any(_window_iou(inst, k) > params.nms_iou for k in same):
            continue
        same.append(inst)
    out = []
    for insts in kept.values():
        if params.overlap == "score":
            for n, inst in enumerate(insts):  # remove the pixels of every higher-scoring mask of the category
                for k in insts[:n]:
                    ya, yb = max(inst.y0, k.y0), min(inst.y0 + inst.mask.shape[0], k.y0 + k.mask.shape[0])
                    xa, xb = max(inst.x0, k.x0), min(inst.x0 + inst.mask.shape[1], k.x0 + k.mask.shape[1])
                    if yb > ya and xb > xa:
                        inst.mask[ya - inst.y0:yb - inst.y0, xa - inst.x0:xb - inst.x0] &= \
                            ~k.mask[ya - k.y0:yb - k.y0, xa - k.x0:xb - k.x0]
                inst.area = int(np.count_nonzero(inst.mask))
        out += [i for i in insts if i.area >= max(1, params.min_area)]
    out.sort(key=lambda i: i.rank)
    return out


def postprocess_image(rows: pd.DataFrame, params: Params | Mapping | None = None,
                      out_size: tuple[int, int] = (512, 512)) -> list[tuple[str, np.ndarray, float]]:
    """Post-process the prediction-table rows of one image (steps in the module docstring).

    Args:
        rows: the rows of one image (:mod:`lib.prediction_table` columns).
        params: post-processing parameters (:meth:`Params.of`: None = the recipe; a dict of some of them).
        out_size: (h, w) of the output masks (512x512, or the original size).

    Returns:
        ``[(class_id, mask, score), ...]`` best score first; ``mask`` is
        (h, w) uint8 0/1.
    """
    params = Params.of(params)
    out_size = (int(out_size[0]), int(out_size[1]))
    insts = finalize(decode_windows(rows, out_size), params, out_size)
    return [(i.class_id, i.full(out_size), i.score) for i in insts]


def image_groups(pred_table: pd.DataFrame) -> dict[str, np.ndarray]:
    if len(pred_table) == 0:
        return {}
    return pred_table.groupby("image_id", sort=False).indices
