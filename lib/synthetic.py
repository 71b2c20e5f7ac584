"""A deterministic synthetic dataset in the exact Kaggle iMaterialist (Fashion) 2019 layout (offline default).

Layout written by :func:`generate_dataset` into ``out_dir``::

    train.csv                ImageId,EncodedPixels,Height,Width,ClassId (one row per instance, sorted by ImageId)
    label_descriptions.json  the competition's label file (byte-identical to the Kaggle file)
    train/<32 hex>.jpg       training images
    test/<32 hex>.jpg        test images
    sample_submission.csv    ImageId,EncodedPixels,ClassId: one placeholder row "1 1", "0" per test image
    test_ground_truth.csv    train.csv format for the test images (offline scoring)
    synthetic.json           marker: generator version, parameters, counts, sizes, category counts
    instances_train.json     (``coco=True``) the same annotations in COCO format, as Fashionpedia ships them
    instances_test.json      (``coco=True``) the test images' ground truth in COCO format

Images show 1-3 front-facing, person-like figures (head, torso, arms, legs, skin tones, hair) dressed in
garments drawn as category-typical polygons/ellipses with textures (plain, stripe, check, dot, floral,
zebra, letters) on cluttered backgrounds. Masks follow the competition's conventions:

* garment parts (hood 27, collar 28, lapel 29, epaulette 30, sleeve 31, pocket 32, neckline 33, buckle 34,
  zipper 35) and decorations (36-45) are separate instances whose masks OVERLAP their garment's mask
  (the garment mask includes the area under its parts);
* masks are the VISIBLE areas: whatever is drawn later (an outer layer, a hand, a figure further in
  front) is subtracted from earlier masks; instances with fewer than :data:`MIN_VISIBLE_PX` visible
  pixels are dropped;
* ClassId carries attribute ids only for categories 0-12, 27, 28, 33 (``lib.labels.ATTRIBUTE_CATEGORIES``),
  chosen BY NAME from ``lib.label_descriptions`` to match the drawing: length (hem height), opening type,
  silhouette, textile pattern, waistline, manufacturing technique. The 2019 table has no neckline,
  collar or hood types, so those parts carry the silhouette symmetry ('symmetrical' / 'asymmetrical')
  the drawing shows. About 20% of images carry no attributes at all, as in the real train.csv.

Everything is a pure function of the seed: ImageIds are a hash of (seed, split, index), each image has
its own ``numpy`` generator seeded from (seed, split, index), JPEG parameters are explicit and no file
holds a time stamp, so the same seed gives byte-identical files. Rare categories are forced in
round-robin (the least-seen categories of the split so far are put on the front figure), so the
default 48 training images contain all 46 categories.

Presets (``preset=``, :data:`PRESETS`) choose how hard the images are; both use the same garments, drawing
code, layout and files:

* ``"realistic"`` (the default): everything above;
* ``"demo"``: an easier set for a few minutes of CPU training from random weights: one full-body figure per
  image on a plain studio background, dressed only in the big garments of ``PRESETS["demo"]["categories"]``
  (a top/t-shirt 1 over pants 6 or a skirt 8: two instances per image); nothing else is drawn except the
  garments' own parts (sleeves, necklines, pockets, zippers), which are not annotated and belong to their
  garment's mask. (A dress was left out: it and a top over a skirt look alike to a model trained for two
  minutes, which then scores near zero on both.)

The marker records the preset's name with the other parameters, so a set generated with another preset is
regenerated; changing a preset's settings must bump :data:`GENERATOR_VERSION`.

Example::

    from lib.synthetic import generate_dataset
    generate_dataset("data/synthetic", n_train=48, n_test=12, seed=0)
"""
from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import io as lio
from . import rle as lrle
from .label_descriptions import ATTRIBUTES, CATEGORIES, label_descriptions
from .labels import ATTRIBUTE_CATEGORIES, N_CATEGORIES, format_class_id

__all__ = [
    "GENERATOR_VERSION",
    "MARKER",
    "MIN_VISIBLE_PX",
    "PRESETS",
    "attribute_id",
    "image_id_for",
    "image_size",
    "make_image",
    "preset_settings",
    "generate_dataset",
]

GENERATOR_VERSION = 1
MARKER = "synthetic.json"
MIN_VISIBLE_PX = 20  # instances with fewer visible pixels (after occlusion) are dropped
OUTPUTS = ("train", "test", "train.csv", "test_ground_truth.csv", "sample_submission.csv",
           "label_descriptions.json", MARKER)
_SPLIT_CODE = {"train": 1, "test": 2}
# Preset name -> settings. categories: the categories that may appear (None = all 46); figures: people per
# image (None = 1-3, more in landscape images); plain_background: a pale studio gradient instead of clutter;
# closeups: allow close-ups that crop the front figure; force: least-seen categories forced per image.
PRESETS = {
    "realistic": {"categories": None, "figures": None, "plain_background": False, "closeups": True, "force": 3},
    "demo": {"categories": (1, 6, 8), "figures": 1, "plain_background": True, "closeups": False, "force": 1},
}
_SHIFT = 3  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT

_ATTRIBUTE_IDS = {row[1]: row[0] for row in ATTRIBUTES}
# Category ids by their short name (the first word of the competition's name: "shirt", "headband", "sleeve", ...).
_CATEGORY = {row[1].split(",")[0]: row[0] for row in CATEGORIES}
_CATEGORY_NAME = {v: k for k, v in _CATEGORY.items()}


def attribute_id(name: str) -> int:
    """Attribute id for its exact name in ``lib.label_descriptions.ATTRIBUTES`` (KeyError naming it if unknown)."""
    try:
        return _ATTRIBUTE_IDS[name]
    except KeyError:
        raise KeyError(f"attribute {name!r} is not in lib.label_descriptions.ATTRIBUTES") from None


# Hem height (head units from the top of the head, sole at 8) for each length attribute.
_LENGTH_Y = {
    "above-the-hip (length)": 3.3, "hip (length)": 3.95, "micro (length)": 4.4, "mini (length)": 4.75,
    "above-the-knee (length)": 5.3, "knee (length)": 5.8, "below the knee (length)": 6.25, "midi": 6.7,
    "maxi (length)": 7.4, "floor (length)": 7.95,
}
_KNEE_OR_SHORTER = ("micro (length)", "mini (length)", "above-the-knee (length)", "knee (length)")

_GARMENT_COLOURS = (
    (22, 22, 26), (240, 240, 235), (32, 42, 82), (205, 188, 160), (128, 128, 134), (62, 92, 142),
    (182, 32, 42), (232, 168, 180), (92, 110, 60), (150, 92, 52), (236, 196, 78), (104, 160, 204),
    (118, 58, 118), (40, 112, 92), (228, 118, 58), (196, 196, 222), (108, 36, 40), (168, 198, 150),
)
_SKIN = ((255, 222, 196), (240, 196, 165), (224, 172, 130), (198, 134, 96), (160, 104, 72), (118, 76, 52),
         (88, 56, 40))
_HAIR = ((24, 20, 18), (58, 40, 30), (108, 74, 46), (192, 152, 92), (150, 62, 32), (168, 168, 168))
_METAL = ((196, 196, 204), (212, 176, 84), (150, 150, 158), (60, 60, 64))
_PATTERNS = ("plain (pattern)", "stripe", "check", "dot", "floral", "zebra")


# --------------------------------------------------------------------------------------------- masks
class _Mask:
    """A (H, W) uint8 0/1 mask plus the bounding box ``[y0:y1, x0:x1]`` of everything drawn into it."""

    __slots__ = ("a", "x0", "y0", "x1", "y1")

    def __init__(self, h: int, w: int):
        self.a = np.zeros((h, w), np.uint8)
        self.x0, self.y0, self.x1, self.y1 = w, h, 0, 0

    def _grow(self, xmin: float, ymin: float, xmax: float, ymax: float) -> None:
        h, w = self.a.shape
        self.x0 = min(self.x0, min(w, max(0, int(math.floor(xmin)) - 2)))
        self.y0 = min(self.y0, min(h, max(0, int(math.floor(ymin)) - 2)))
        self.x1 = max(self.x1, min(w, max(0, int(math.ceil(xmax)) + 3)))
        self.y1 = max(self.y1, min(h, max(0, int(math.ceil(ymax)) + 3)))

    @property
    def sl(self) -> tuple[slice, slice]:
        return slice(self.y0, max(self.y0, self.y1)), slice(self.x0, max(self.x0, self.x1))

    def poly(self, pts, value: int = 1) -> "_Mask":
        p = np.asarray(pts, np.float64).reshape(-1, 2)
        if value:
            self._grow(p[:, 0].min(), p[:, 1].min(), p[:, 0].max(), p[:, 1].max())
        cv2.fillPoly(self.a, [np.round(p * _ONE).astype(np.int32).reshape(-1, 1, 2)], int(value), cv2.LINE_8,
                     _SHIFT)
        return self

    def circle(self, c, r: float, value: int = 1) -> "_Mask":
        r = max(float(r), 0.6)
        if value:
            self._grow(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
        cv2.circle(self.a, (int(round(c[0] * _ONE)), int(round(c[1] * _ONE))), int(round(r * _ONE)), int(value),
                   -1, cv2.LINE_8, _SHIFT)
        return self

    def ellipse(self, c, axes, angle: float = 0.0, a0: float = 0.0, a1: float = 360.0, thick: int = -1,
                value: int = 1) -> "_Mask":
        ax, ay = max(float(axes[0]), 0.6), max(float(axes[1]), 0.6)
        r = max(ax, ay) + max(thick, 0)
        if value:
            self._grow(c[0] - r, c[1] - r, c[0] + r, c[1] + r)
        cv2.ellipse(self.a, (int(round(c[0] * _ONE)), int(round(c[1] * _ONE))),
                    (int(round(ax * _ONE)), int(round(ay * _ONE))), float(angle), float(a0), float(a1), int(value),
                    int(thick), cv2.LINE_8, _SHIFT)
        return self

    def line(self, p, q, thick: float, value: int = 1) -> "_Mask":
        t = max(1, int(round(thick)))
        if value:
            self._grow(min(p[0], q[0]) - t, min(p[1], q[1]) - t, max(p[0], q[0]) + t, max(p[1], q[1]) + t)
        cv2.line(self.a, (int(round(p[0] * _ONE)), int(round(p[1] * _ONE))),
                 (int(round(q[0] * _ONE)), int(round(q[1] * _ONE))), int(value), t, cv2.LINE_8, _SHIFT)
        return self

    def text(self, text: str, org, scale: float, thick: int, value: int = 1) -> "_Mask":
        """cv2.putText (Hershey duplex) with its baseline-left corner at ``org``."""
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_DUPLEX, scale, thick)
        self._grow(org[0] - thick, org[1] - th - thick, org[0] + tw + thick, org[1] + base + thick)
        cv2.putText(self.a, text, (int(round(org[0])), int(round(org[1]))), cv2.FONT_HERSHEY_DUPLEX, scale,
                    int(value), thick, cv2.LINE_8)
        return self

    def stroke(self, pts, hws, caps=(True, True), value: int = 1) -> "_Mask":
        """A limb-like band along ``pts`` (N, 2) with half widths ``hws`` (N,): quads plus round joints."""
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        hws = np.broadcast_to(np.asarray(hws, np.float64), (len(pts),))
        for i in range(len(pts) - 1):
            p, q = pts[i], pts[i + 1]
            d = q - p
            n = math.hypot(d[0], d[1])
            if n < 1e-6:
                continue
            nv = np.array([-d[1], d[0]]) / n
            self.poly([p + nv * hws[i], q + nv * hws[i + 1], q - nv * hws[i + 1], p - nv * hws[i]], value)
        for i in range(len(pts)):
            if (i == 0 and not caps[0]) or (i == len(pts) - 1 and not caps[1]):
                continue
            self.circle(pts[i], hws[i], value)
        return self

    def union(self, other: "_Mask") -> "_Mask":
        if other.x1 > other.x0 and other.y1 > other.y0:
            sl = other.sl
            np.maximum(self.a[sl], other.a[sl], out=self.a[sl])
            self.x0, self.y0 = min(self.x0, other.x0), min(self.y0, other.y0)
            self.x1, self.y1 = max(self.x1, other.x1), max(self.y1, other.y1)
        return self

    def subtract(self, other: "_Mask") -> "_Mask":
        if other.x1 > other.x0 and other.y1 > other.y0:
            sl = other.sl
            self.a[sl] &= 1 - other.a[sl]
        return self


# ------------------------------------------------------------------------------------------ textures
def _jitter(rng, colour, amount: float = 14.0) -> tuple[float, float, float]:
    c = np.clip(np.asarray(colour, np.float64) + rng.uniform(-amount, amount, 3), 0, 255)
    return tuple(float(v) for v in c)


def _scaled(colour, f: float) -> tuple[float, float, float]:
    return tuple(float(min(255.0, v * f)) for v in colour)


def _texture(st: dict, x0: int, y0: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) uint8 RGB patch of style ``st`` for the image window at (x0, y0).

    Patterns are functions of image coordinates, so every piece painted with one style (a garment and
    its sleeves) lines up. Shading darkens towards the sides of the figure (``cx`` +- ``hw`` pixels).
    """
    yy = np.arange(y0, y0 + h, dtype=np.float32)[:, None]
    xx = np.arange(x0, x0 + w, dtype=np.float32)[None, :]
    c1 = np.asarray(st["c1"], np.float32)
    c2 = np.asarray(st.get("c2", st["c1"]), np.float32)
    pat = st.get("pattern", "plain (pattern)")
    period = max(float(st.get("period", 8.0)), 3.0)
    t = None
    if pat in ("stripe", "zebra", "check", "dot", "letters, numbers"):
        ang = math.radians(st.get("angle", 0.0))
        ca, sa = math.cos(ang), math.sin(ang)
        s = (xx * ca + yy * sa) / period + st.get("phase", 0.0)
        if pat == "stripe":
            t = ((s - np.floor(s)) < st.get("duty", 0.5)).astype(np.float32)
        elif pat == "zebra":
            s = s + 0.35 * np.sin((yy * ca - xx * sa) / (period * 1.7))
            t = ((s - np.floor(s)) < 0.45).astype(np.float32)
        elif pat == "check":
            a = np.floor(xx / period) + np.floor(yy / period)
            b = ((xx / period - np.floor(xx / period)) < 0.25) | ((yy / period - np.floor(yy / period)) < 0.25)
            t = 0.75 * (a % 2 == 0).astype(np.float32) + 0.25 * b.astype(np.float32)
        elif pat == "dot":
            row = np.floor(yy / period)
            xs = xx + (row % 2) * (period / 2)
            dx = xs - (np.floor(xs / period) + 0.5) * period
            dy = yy - (row + 0.5) * period
            t = ((dx * dx + dy * dy) < (st.get("duty", 0.5) * period * 0.45) ** 2).astype(np.float32)
    if t is None:
        out = np.broadcast_to(c1, (h, w, 3)).astype(np.float32)
    else:
        t = np.broadcast_to(t, (h, w))[..., None]
        out = c1 * (1.0 - t) + c2 * t
    if pat == "floral":
        out = np.ascontiguousarray(out)
        _draw_flowers(out, st, x0, y0, period)
    shade = st.get("shade", 0.0)
    if shade:
        r = np.clip(((xx - st["cx"]) / max(st["hw"], 1.0)) ** 2, 0.0, 1.0)
        out = out * (1.0 - shade * r)[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def _draw_flowers(out: np.ndarray, st: dict, x0: int, y0: int, period: float) -> None:
    """Small five-petal flowers on a jittered grid in image coordinates (deterministic per style seed)."""
    p = period * 1.6
    h, w = out.shape[:2]
    seed = float(st.get("seed", 0) % 997)
    c2 = tuple(float(v) for v in st.get("c2", (255, 255, 255)))
    c3 = tuple(float(v) for v in st.get("c3", (240, 210, 60)))
    r = max(p * 0.13, 1.0)
    for j in range(int(math.floor(y0 / p)) - 1, int(math.ceil((y0 + h) / p)) + 1):
        for i in range(int(math.floor(x0 / p)) - 1, int(math.ceil((x0 + w) / p)) + 1):
            hx = math.sin(i * 12.9898 + j * 78.233 + seed) * 43758.5453
            hy = math.sin(i * 39.3468 + j * 11.135 + seed) * 24634.6345
            cx = (i + 0.5 + 0.5 * (hx - math.floor(hx) - 0.5)) * p - x0
            cy = (j + 0.5 + 0.5 * (hy - math.floor(hy) - 0.5)) * p - y0
            for k in range(5):
                a = k * 2 * math.pi / 5 + hx
                cv2.circle(out, (int(round(cx + 1.1 * r * math.cos(a))), int(round(cy + 1.1 * r * math.sin(a)))),
                           int(round(r)), c2, -1, cv2.LINE_8)
            cv2.circle(out, (int(round(cx)), int(round(cy))), max(1, int(round(r * 0.6))), c3, -1, cv2.LINE_8)


def _style(rng, fig: "_Fig", kind: str = "top", pattern: str | None = None, colour=None) -> dict:
    """A garment style: colours, a pattern whose name is a 'textile pattern' attribute, shading."""
    probs = {
        "top": (0.5, 0.16, 0.1, 0.1, 0.1, 0.04),
        "bottom": (0.78, 0.06, 0.1, 0.03, 0.02, 0.01),
        "outer": (0.72, 0.05, 0.17, 0.02, 0.02, 0.02),
        "dress": (0.42, 0.14, 0.08, 0.14, 0.18, 0.04),
        "acc": (0.8, 0.1, 0.05, 0.05, 0.0, 0.0),
    }[kind]
    if pattern is None:
        pattern = _PATTERNS[int(rng.choice(len(_PATTERNS), p=probs))]
    if colour is None:
        colour = _GARMENT_COLOURS[int(rng.integers(len(_GARMENT_COLOURS)))]
        if kind == "bottom" and rng.random() < 0.45:  # denim / black / khaki
            colour = ((62, 92, 142), (40, 56, 96), (22, 22, 26), (190, 170, 130))[int(rng.integers(4))]
    c1 = _jitter(rng, colour)
    c2 = _jitter(rng, _GARMENT_COLOURS[int(rng.integers(len(_GARMENT_COLOURS)))])
    if sum(abs(a - b) for a, b in zip(c1, c2)) < 120:  # make the pattern readable
        c2 = _scaled(c1, 0.45) if sum(c1) > 300 else tuple(min(255.0, v + 120.0) for v in c1)
    if pattern == "zebra":
        c1, c2 = (236.0, 232.0, 225.0), (25.0, 25.0, 28.0)
    return {
        "pattern": pattern, "c1": c1, "c2": c2, "c3": _jitter(rng, (240, 210, 70)),
        "period": fig.u * float(rng.uniform(0.12, 0.32)),
        "angle": float(rng.choice([0.0, 90.0, 45.0, 135.0, 0.0, 90.0])) + float(rng.uniform(-6, 6)),
        "phase": float(rng.random()), "duty": float(rng.uniform(0.3, 0.6)), "seed": int(rng.integers(1 << 30)),
        "shade": float(rng.uniform(0.1, 0.28)), "cx": fig.cx, "hw": fig.u * 1.6,
    }


def _plain(fig: "_Fig", colour, shade: float = 0.15) -> dict:
    return {"pattern": "plain (pattern)", "c1": tuple(float(v) for v in colour), "shade": shade, "cx": fig.cx,
            "hw": fig.u * 1.6}


def _variant(st: dict, f: float = 0.86, **kw) -> dict:
    """The same style slightly darker/lighter (for parts), optionally overriding keys."""
    out = dict(st, c1=_scaled(st["c1"], f), c2=_scaled(st.get("c2", st["c1"]), f))
    out.update(kw)
    return out


# ---------------------------------------------------------------------------------------------- scene
class _Item:
    """A drawn garment/accessory: its occlusion group, instance mask, style and anchors (head units)."""

    __slots__ = ("group", "mask", "style", "anchors")

    def __init__(self, group: int, mask: _Mask, style: dict, anchors: dict | None = None):
        self.group, self.mask, self.style, self.anchors = group, mask, style, anchors or {}


class _Scene:
    """The canvas, a per-pixel map of the topmost occlusion group, and the instances drawn so far.

    ``keep``: the categories recorded as instances (None = all); others are still drawn.
    """

    def __init__(self, rng, height: int, width: int, annotate: bool, keep=None):
        self.rng, self.h, self.w, self.annotate = rng, height, width, annotate
        self.keep = None if keep is None else frozenset(int(c) for c in keep)
        self.img = np.zeros((height, width, 3), np.uint8)
        self.top = np.zeros((height, width), np.int32)
        self.items: list[tuple[int, tuple, _Mask, int]] = []
        self._groups = 0

    def group(self) -> int:
        self._groups += 1
        return self._groups

    def mask(self) -> _Mask:
        return _Mask(self.h, self.w)

    def paint(self, m: _Mask, style: dict, group: int, outline: float = 1.0) -> None:
        """Fill ``m`` with ``style``, make ``group`` the topmost there, darken a thin rim (seams/edges)."""
        if m.x1 <= m.x0 or m.y1 <= m.y0:
            return
        sl = m.sl
        local = m.a[sl]
        sel = local.view(np.bool_)
        if not sel.any():
            return
        patch = _texture(style, m.x0, m.y0, local.shape[0], local.shape[1])
        sub = self.img[sl]
        sub[sel] = patch[sel]
        self.top[sl][sel] = group
        if outline > 0:
            t = max(1, int(round(outline)))
            inner = cv2.erode(np.ascontiguousarray(local), np.ones((3, 3), np.uint8), iterations=t)
            rim = sel & (inner == 0)
            sub[rim] = (sub[rim].astype(np.float32) * 0.6).astype(np.uint8)

    def mark(self, m: _Mask, draw, colour) -> None:
        """Draw details (``draw(tmp_mask)``: buttons, seams, pleats, text) in ``colour``, only inside ``m``."""
        tmp = self.mask()
        draw(tmp)
        if tmp.x1 <= tmp.x0 or tmp.y1 <= tmp.y0:
            return
        sl = tmp.sl
        sel = (tmp.a[sl] & m.a[sl]).view(np.bool_)
        self.img[sl][sel] = np.asarray(colour, np.float64).clip(0, 255).astype(np.uint8)

    def add(self, category: int, attributes, m: _Mask, group: int) -> None:
        if self.keep is not None and int(category) not in self.keep:
            return
        attrs = ()
        if self.annotate and category in ATTRIBUTE_CATEGORIES:
            attrs = tuple(sorted({attribute_id(a) if isinstance(a, str) else int(a) for a in attributes}))
        self.items.append((int(category), attrs, m, group))

    def item(self, category: int, attributes, m: _Mask, style: dict, anchors=None, outline=1.0) -> _Item:
        """Paint a new garment/accessory in its own group and record it."""
        g = self.group()
        self.paint(m, style, g, outline)
        self.add(category, attributes, m, g)
        return _Item(g, m, style, anchors)

    def part(self, category: int, attributes, m: _Mask, host: _Item, style: dict, outline=1.0,
             record: bool = True) -> None:
        """Paint a part of ``host`` (same group); the host's mask grows to include it (parts overlap it)."""
        self.paint(m, style, host.group, outline)
        host.mask.union(m)
        if record:
            self.add(category, attributes, m, host.group)

    def finish(self, min_px: int = MIN_VISIBLE_PX) -> list[dict]:
        """Visible (H, W) uint8 masks: drawn shape AND topmost group; small leftovers dropped."""
        out = []
        for cat, attrs, m, g in self.items:
            if m.x1 <= m.x0 or m.y1 <= m.y0:
                continue
            sl = m.sl
            vis = (m.a[sl] != 0) & (self.top[sl] == g)
            if int(vis.sum()) < min_px:
                continue
            full = np.zeros((self.h, self.w), np.uint8)
            full[sl] = vis
            out.append({"category": cat, "attributes": attrs, "mask": full})
        return out


# --------------------------------------------------------------------------------------------- figure
class _Fig:
    """A standing, front-facing person. Key points are in head units ``u`` from (cx, top): x right, y down.

    Head 0-1, shoulders 1.45, waist 3.0, hip 3.8, crotch 4.1, knee 5.75, ankle 7.55, sole 8.
    """

    def __init__(self, rng, cx: float, top: float, height: float, poses: dict):
        self.cx, self.top, self.u = float(cx), float(top), float(height) / 8.0
        bw = float(rng.uniform(0.88, 1.1))
        hipf = float(rng.uniform(0.92, 1.12))
        self.bw, self.sh = bw, 0.9 * bw
        self._py = np.array([1.2, 1.45, 2.0, 2.5, 3.0, 3.8, 4.15, 9.0])
        self._pw = np.array([0.3, 0.9 * bw, 0.8 * bw, 0.74 * bw, 0.62 * bw, 0.8 * bw * hipf, 0.78 * bw * hipf,
                             0.78 * bw * hipf])
        spread = float(rng.uniform(0.0, 0.3))
        self.legs = {s: np.array([(s * 0.4 * bw * hipf, 4.0), (s * (0.34 + 0.45 * spread), 5.75),
                                  (s * (0.3 + spread), 7.55)]) for s in (-1, 1)}
        self.leg_hw = np.array([0.38 * bw * hipf, 0.2, 0.12])
        self.arms = {s: self._arm(rng, s, poses.get(s, "down")) for s in (-1, 1)}
        self.arm_hw = np.array([0.21, 0.17, 0.13])

    def _arm(self, rng, s: int, pose: str) -> np.ndarray:
        if pose == "hip":
            a1 = rng.uniform(32, 46)
            a2 = a1 - rng.uniform(78, 98)
        elif pose == "raise":
            a1 = rng.uniform(45, 70)
            a2 = rng.uniform(150, 168)
        else:
            a1 = rng.uniform(7, 20)
            a2 = a1 + rng.uniform(-6, 12)

        def d(a):
            return np.array([s * math.sin(math.radians(a)), math.cos(math.radians(a))])

        j = np.array([s * 0.8 * self.bw, 1.5])
        e = j + 1.45 * d(a1)
        w = e + 1.2 * d(a2)
        return np.array([j, e, w, w + 0.15 * d(a2)])

    def P(self, pts) -> np.ndarray:
        """Head-unit points (N, 2) -> image pixel coordinates."""
        return np.asarray(pts, np.float64).reshape(-1, 2) * self.u + (self.cx, self.top)

    def hw(self, y):
        """Half width of the body (head units) at height ``y``."""
        return np.interp(y, self._py, self._pw)

    def leg(self, s: int, y):
        """(centre x, half width) of leg ``s`` at height ``y`` (head units)."""
        lg = self.legs[s]
        return np.interp(y, lg[:, 1], lg[:, 0]), np.interp(y, lg[:, 1], self.leg_hw)

    def arm_path(self, s: int, frac: float) -> np.ndarray:
        """Shoulder -> elbow -> wrist polyline cut at ``frac`` of its length (can exceed 1 a little)."""
        a = self.arms[s][:3]
        seg = np.linalg.norm(np.diff(a, axis=0), axis=1)
        target = frac * seg.sum()
        pts = [a[0]]
        acc = 0.0
        for i, L in enumerate(seg):
            if acc + L >= target or i == len(seg) - 1:
                t = (target - acc) / L
                pts.append(a[i] + (a[i + 1] - a[i]) * t)
                break
            pts.append(a[i + 1])
            acc += L
        return np.array(pts)


# ------------------------------------------------------------------------------------ shape builders
def _neck_curve(kind: str, nw: float, depth: float, y0: float = 1.2, n: int = 9) -> np.ndarray:
    """Neckline from (-nw, y0) to (nw, y0) through (0, y0 + depth), head units."""
    if kind == "v":
        return np.array([(-nw, y0), (0.0, y0 + depth), (nw, y0)])
    if kind == "square":
        return np.array([(-nw, y0), (-nw * 0.92, y0 + depth), (nw * 0.92, y0 + depth), (nw, y0)])
    t = np.linspace(math.pi, 0.0, n)
    return np.column_stack([nw * np.cos(t), y0 + depth * np.sin(t)])


def _upper_outline(fig: _Fig, hem: float, ease: float, neck: np.ndarray, shoulder: float | None = None,
                   flare: float = 0.0, one_shoulder: bool = False) -> np.ndarray:
    """Outline (head units) of an upper-body garment from the shoulders to ``hem`` with neckline ``neck``."""
    sh = fig.sh + 0.05 + ease * 0.5 if shoulder is None else shoulder
    ys = np.linspace(2.05, hem, 8)
    wd = fig.hw(ys) + ease + flare * np.clip(ys - 3.0, 0.0, None)
    right = np.column_stack([wd, ys])
    left = right[::-1] * (-1.0, 1.0)
    hem_mid = [(0.0, hem + 0.04)]
    if one_shoulder:
        return np.vstack([[(-sh, 1.42)], left[::-1], hem_mid, right[::-1][:-1], [(wd[0], 2.2)], [(-0.2, 1.24)]])
    return np.vstack([neck[-1:], [(sh, 1.42)], right, hem_mid, left, [(-sh, 1.42)], neck[:-1]])


def _skirt_outline(fig: _Fig, top_y: float, hem: float, sil: str, ease: float, wavy: bool = False) -> np.ndarray:
    """Outline of a skirt (or the skirt of a dress/coat) from ``top_y`` to ``hem``, head units."""
    k = {"pencil": -0.05, "straight": 0.02, "a-line": 0.3, "flare": 0.5, "circle": 0.7, "fit and flare": 0.45,
         "tent": 0.4}[sil]
    ys = np.linspace(top_y, hem, 9)
    hip = float(fig.hw(3.8)) + ease
    wd = np.where(ys < 3.8, fig.hw(ys) + ease, hip + k * np.clip(ys - 3.8, 0.0, None))
    xs = np.linspace(wd[-1], -wd[-1], 13)
    yh = hem + 0.08 * (1.0 - (xs / max(wd[-1], 1e-3)) ** 2)
    if wavy:
        yh = yh + 0.05 * np.sin(xs * 14.0)
    right = np.column_stack([wd, ys])
    return np.vstack([right, np.column_stack([xs, yh])[1:-1], right[::-1] * (-1.0, 1.0)])


def _pants_outline(fig: _Fig, top_y: float, hem: float, knee_w: float, hem_w: float, ease: float) -> np.ndarray:
    """Outline of pants/shorts from the waistband ``top_y`` to ``hem`` (head units)."""
    ys = np.linspace(4.1, hem, 7)
    sides = {}
    for s in (-1, 1):
        c, lw = fig.leg(s, ys)
        thigh = lw[0] + ease
        w = np.interp(ys, [4.1, 5.75, max(hem, 5.76)], [thigh, knee_w + ease, hem_w + ease])
        w = np.maximum(w, lw + ease * 0.5)
        sides[s] = (c, w)
    hips = np.linspace(top_y, 4.1, 4)[:-1]
    hw = fig.hw(hips) + ease
    c, w = sides[1]
    right_outer = np.vstack([np.column_stack([hw, hips]), np.column_stack([c + w, ys])])
    right_inner = np.column_stack([c - w, ys])[::-1]
    c, w = sides[-1]
    left_inner = np.column_stack([c + w, ys])
    left_outer = np.vstack([np.column_stack([-hw, hips]), np.column_stack([c - w, ys])])[::-1]
    crotch = [(0.0, 4.18)]
    return np.vstack([right_outer, right_inner[:-1], crotch, left_inner[1:], left_outer])


def _sleeve(sc: _Scene, fig: _Fig, s: int, frac: float, ease: float, flare: float = 0.0) -> _Mask:
    path = fig.arm_path(s, frac)
    full = fig.arm_path(s, 1.0)
    along = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    total = float(np.linalg.norm(np.diff(full, axis=0), axis=1).sum())
    hws = np.interp(along / total, [0.0, 0.55, 1.0], [0.26, 0.21, 0.17]) + ease
    hws[-1] = hws[-1] + flare
    m = sc.mask().stroke(fig.P(path), hws * fig.u, caps=(False, False))
    m.circle(fig.P([path[0] + (0.0, hws[0] * 0.55)])[0], hws[0] * fig.u)
    sh = fig.sh + 0.05 + ease * 0.5
    m.poly(fig.P([(s * (sh - 0.3), 1.42), (s * sh, 1.42), (s * (fig.hw(2.0) + ease + 0.1), 2.1),
                  (s * (fig.hw(2.1) + ease * 0.5), 2.15)]))
    return m


# --------------------------------------------------------------------------------------------- outfits
def _pick(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _ids(*names: str) -> set[int]:
    """Category ids of short names (:data:`_CATEGORY`)."""
    return {_CATEGORY[n] for n in names}


def _plan_outfit(rng, force) -> dict:
    """Decide what one figure wears; forced categories are honoured where they fit (see ``plan['cats']``).

    The planners below run in this order and draw from ``rng`` in it: garments, their parts, accessories,
    lengths, poses, decorations."""
    f = {int(c) for c in force}
    p = _plan_garments(rng, f)
    _plan_parts(rng, f, p)
    _plan_accessories(rng, f, p)
    _plan_lengths(rng, p)
    _plan_poses(rng, p)
    p["decos"] = _plan_decorations(rng, f, p)
    p["headroom"] = p["umbrella"] or p["hat"]
    p["full_body"] = bool(f) or p["legwarmers"] or p["socks"]
    p["cats"] = _planned_categories(p)
    for k in ("top_forced", "outer_forced"):
        del p[k]
    return p


def _plan_garments(rng, f: set) -> dict:
    """The base (separates, dress or jumpsuit), its top and bottom, and the outer layer."""
    C = _CATEGORY
    legs = bool(f & _ids("leg warmer", "tights", "sock"))
    if C["dress"] in f:
        base = "dress"
    elif C["jumpsuit"] in f and not legs:
        base = "jumpsuit"
    elif f & _ids("shirt", "top", "sweater", "pants", "shorts", "skirt"):
        base = "separates"
    else:
        base = _pick(rng, ["separates", "dress", "jumpsuit"], [0.6, 0.3, 0.1])
        if legs and base == "jumpsuit":
            base = "separates"
    top = bottom = None
    tops, bottoms = [C["shirt"], C["top"], C["sweater"]], [C["pants"], C["shorts"], C["skirt"]]
    if base == "separates":
        ft = sorted(f & set(tops))
        top = ft[0] if ft else _pick(rng, tops, [0.35, 0.4, 0.25])
        fb = sorted(f & set(bottoms))
        bottom = fb[0] if fb else _pick(rng, bottoms, [0.5, 0.2, 0.3])
        if bottom == C["pants"] and not fb and f & _ids("tights", "sock"):
            bottom = _pick(rng, [C["shorts"], C["skirt"]])
    outers = [C["cardigan"], C["jacket"], C["vest"], C["coat"], C["cape"]]
    fo = sorted(f & set(outers))
    outer = fo[0] if fo else (None if rng.random() < 0.5 else _pick(rng, outers, [0.2, 0.36, 0.1, 0.24, 0.1]))
    if legs and outer in (C["coat"], C["cape"]) and not fo:
        outer = None
    return {"base": base, "top": top, "bottom": bottom, "legs": legs, "outer": outer,
            "top_forced": bool(f & set(tops)), "outer_forced": bool(fo)}


def _wear_outer(p: dict, options, default: int) -> bool:
    """Make the outer layer one of ``options`` (``default`` unless it is one already) if it is not forced."""
    if p["outer"] in options:
        return True
    if not p["outer_forced"]:
        p["outer"] = default
        return True
    return False


def _wear_top(p: dict, value: int) -> bool:
    """Make the top ``value`` if the figure wears separates and its top is not forced."""
    if p["base"] == "separates" and not p["top_forced"]:
        p["top"] = value
        return True
    return False


def _plan_parts(rng, f: set, p: dict) -> None:
    """Garment parts: hood and zip hosts, collar, lapel, epaulette, sleeves, pockets, neckline, an open outer."""
    C, u = _CATEGORY, rng.random
    jacket, hooded, open_outer = C["jacket"], (C["jacket"], C["coat"], C["cape"]), (None, C["cardigan"], C["vest"])
    hood = None
    top_hood = p["base"] == "separates" and p["top"] in (C["top"], C["sweater"])
    if C["hood"] in f:
        if p["outer"] in hooded:
            hood = "outer"
        elif top_hood and p["outer"] in open_outer:
            hood = "top"
        elif _wear_outer(p, hooded, jacket):
            hood = "outer"
        elif p["outer"] in open_outer and _wear_top(p, C["top"]):
            hood = "top"
    elif p["outer"] in hooded and u() < 0.15:
        hood = "outer"
    elif top_hood and p["outer"] in open_outer and u() < 0.12:
        hood = "top"
    if C["collar"] in f and not (p["top"] == C["shirt"] or p["outer"] in hooded):
        if not _wear_top(p, C["shirt"]):
            _wear_outer(p, hooded, jacket)
    if C["lapel"] in f:
        _wear_outer(p, (jacket, C["coat"]), jacket)
    if C["epaulette"] in f and not (p["outer"] in (jacket, C["coat"]) or p["top"] == C["shirt"]):
        if not _wear_outer(p, (jacket, C["coat"]), jacket):
            _wear_top(p, C["shirt"])
    p.update(hood=hood, zip=_zip_host(rng, f, p))
    p["collar"] = C["collar"] in f or u() < 0.85
    p["lapel"] = C["lapel"] in f or u() < 0.75
    p["epaulette"] = C["epaulette"] in f or u() < 0.08
    p["sleeves"] = C["sleeve"] in f
    p["pocket"] = C["pocket"] in f
    p["neck"] = C["neckline"] in f
    p["outer_open"] = (C["neckline"] in f and p["outer"] not in (None, C["cape"])) or u() < 0.45


def _zip_host(rng, f: set, p: dict) -> str | None:
    """What carries the zipper: the outer layer (a jacket), the jumpsuit, the bottom or the top; or nothing."""
    C, u = _CATEGORY, rng.random
    bottom_zip = p["bottom"] in (C["pants"], C["shorts"])
    if C["zipper"] in f:
        if p["outer"] == C["jacket"] or (p["outer"] is None and not p["outer_forced"]):
            p["outer"] = C["jacket"]
            return "outer"
        if p["base"] == "jumpsuit":
            return "jumpsuit"
        if bottom_zip:
            return "bottom"
        return "top" if p["base"] == "separates" else None
    if p["outer"] == C["jacket"] and C["lapel"] not in f and u() < 0.25:
        return "outer"
    if p["base"] == "jumpsuit" and u() < 0.4:
        return "jumpsuit"
    if bottom_zip and u() < 0.2:
        return "bottom"
    return None


# Accessories in planning order: (plan key, the category, probability when not forced). The draws of the
# items with a condition (:func:`_plan_accessories`) happen only when it holds.
_ACCESSORIES = (("glasses", "glasses", 0.18), ("hat", "hat", 0.13), ("headband", "headband", 0.08),
                ("tie", "tie", 0.15), ("gloves", "glove", 0.05), ("watch", "watch", 0.1), ("belt", "belt", 0.22),
                ("buckle", "buckle", 0.8), ("legwarmers", "leg warmer", 0.03), ("tights", "tights", 0.22),
                ("socks", "sock", 0.15), ("shoes", "shoe", 0.96), ("bag", "bag", 0.3), ("scarf", "scarf", 0.1),
                ("umbrella", "umbrella", 0.03), ("shoe_buckle", None, 0.08), ("bag_buckle", None, 0.15))


def _plan_accessories(rng, f: set, p: dict) -> None:
    """Stand-alone items and buckles (:data:`_ACCESSORIES`): forced ones are worn, the others drawn."""
    C = _CATEGORY
    bare = p["base"] == "dress" or p["bottom"] in (C["shorts"], C["skirt"])
    for key, cat, prob in _ACCESSORIES:
        forced = cat is not None and C[cat] in f
        if key == "hat":
            p[key] = forced or (C["headband"] not in f and rng.random() < prob)
        elif key == "headband":
            p[key] = forced and not p["hat"] or (not p["hat"] and rng.random() < prob)
        elif key == "tie":
            p[key] = forced or (p["top"] == C["shirt"] and rng.random() < prob)
        elif key == "belt":
            p[key] = forced or C["buckle"] in f or rng.random() < prob
        elif key == "tights":
            p[key] = forced or (bare and rng.random() < prob)
        elif key == "scarf":
            p[key] = forced or (not p["neck"] and rng.random() < prob)
        else:
            p[key] = forced or rng.random() < prob


def _plan_lengths(rng, p: dict) -> None:
    """Hem lengths of the top, skirt, dress, coat and cape (head-unit hem heights come from _LENGTH_Y)."""
    short = list(_KNEE_OR_SHORTER)
    p["top_len"] = _pick(rng, ["above-the-hip (length)", "hip (length)"], [0.2, 0.8])
    if p["legs"]:
        p["skirt_len"] = _pick(rng, short)
        p["dress_len"] = _pick(rng, short)
    else:
        p["skirt_len"] = _pick(rng, list(_LENGTH_Y)[2:], [0.08, 0.2, 0.2, 0.16, 0.1, 0.12, 0.09, 0.05])
        p["dress_len"] = _pick(rng, list(_LENGTH_Y)[2:], [0.08, 0.18, 0.2, 0.16, 0.1, 0.12, 0.1, 0.06])
    coat_opts = ["above-the-knee (length)", "knee (length)"] if p["legs"] else \
        ["hip (length)", "above-the-knee (length)", "knee (length)", "below the knee (length)", "midi",
         "maxi (length)"]
    p["coat_len"] = _pick(rng, coat_opts)
    p["cape_len"] = _pick(rng, ["hip (length)", "mini (length)"] if p["legs"] else
                          ["hip (length)", "mini (length)", "above-the-knee (length)", "knee (length)"])


def _plan_poses(rng, p: dict) -> None:
    """Arm poses (a raised arm holds the umbrella), the umbrella's and the bag's side, the bag's kind."""
    u = rng.random
    poses = {-1: "hip" if u() < 0.2 else "down", 1: "hip" if u() < 0.2 else "down"}
    p["umbrella_side"] = int(_pick(rng, [-1, 1]))
    if p["umbrella"]:
        poses[p["umbrella_side"]] = "raise"
    p["bag_side"] = -p["umbrella_side"] if p["umbrella"] else int(_pick(rng, [-1, 1]))
    p["bag_kind"] = "hand" if poses[p["bag_side"]] == "down" and u() < 0.5 else _pick(rng, ["shoulder", "cross"])
    p["poses"] = poses


def _plan_decorations(rng, f: set, p: dict) -> list[tuple[int, str]]:
    """Decorations (applique ... tassel), each on the outermost visible host that suits it."""
    decos = []
    for c in range(_CATEGORY["applique"], _CATEGORY["tassel"] + 1):
        if c in f or rng.random() < 0.05:
            host = _deco_host(rng, c, p)
            if host:
                decos.append((c, host))
    return decos


# plan keys of stand-alone items -> their category (cleared when the category is not allowed)
_PLAN_ITEMS = (("glasses", 13), ("hat", 14), ("headband", 15), ("tie", 16), ("gloves", 17), ("watch", 18),
               ("belt", 19), ("legwarmers", 20), ("tights", 21), ("socks", 22), ("shoes", 23), ("bag", 24),
               ("scarf", 25), ("umbrella", 26))


def _restrict_plan(rng, p: dict, categories) -> dict:
    """Make plan ``p`` use only ``categories`` (a preset's): base garments re-picked among the allowed ones,
    outer layers, accessories and decorations dropped. Parts (hood, sleeves, ...) are still drawn with their
    garment; :class:`_Scene` leaves unlisted categories unannotated, so they count as the garment's pixels.
    """
    allowed = set(categories)
    tops, bottoms = [c for c in (0, 1, 2) if c in allowed], [c for c in (6, 7, 8) if c in allowed]
    bases = (["separates"] if tops and bottoms else []) + (["dress"] if 10 in allowed else []) + \
        (["jumpsuit"] if 11 in allowed else [])
    if not bases:
        raise ValueError(f"categories {sorted(allowed)} allow no outfit: need a top and a bottom (0-2, 6-8), "
                         f"a dress (10) or a jumpsuit (11)")
    if p["base"] not in bases:
        p["base"] = _pick(rng, bases)
    if p["base"] == "separates":
        p["top"] = p["top"] if p["top"] in tops else _pick(rng, tops)
        p["bottom"] = p["bottom"] if p["bottom"] in bottoms else _pick(rng, bottoms)
    else:
        p["top"] = p["bottom"] = None
    if p["outer"] not in allowed:
        p["outer"] = None
    hosts = {"outer": p["outer"] is not None, "top": p["top"] is not None, "bottom": p["bottom"] in (6, 7),
             "jumpsuit": p["base"] == "jumpsuit"}
    p["zip"] = p["zip"] if hosts.get(p["zip"]) else None
    p["hood"] = p["hood"] if hosts.get(p["hood"]) else None
    for name, c in _PLAN_ITEMS:
        if c not in allowed:
            p[name] = False
    p["shoe_buckle"] = p["shoe_buckle"] and p["shoes"]
    p["decos"] = [(c, h) for c, h in p["decos"] if c in allowed and h not in ("bag", "scarf", "hat", "outer")]
    p["poses"] = {s: ("down" if pose == "raise" and not p["umbrella"] else pose) for s, pose in p["poses"].items()}
    p["headroom"] = p["umbrella"] or p["hat"]
    p["cats"] = _planned_categories(p) & allowed
    return p


def _deco_host(rng, cat: int, p: dict) -> str | None:
    """Where a decoration goes: a host key drawn by :func:`_draw_figure`."""
    torso = "outer" if p["outer"] in (3, 4, 5) and not p["outer_open"] else \
        ("dress" if p["base"] == "dress" else ("jumpsuit" if p["base"] == "jumpsuit" else "top"))
    if p["outer"] in (9, 12):
        torso = "outer"
    hem = "dress" if p["base"] == "dress" else ("bottom" if p["bottom"] == 8 else torso)
    if p["outer"] in (9, 12):
        hem = "outer"
    options = {
        36: [torso, "bottom" if p["bottom"] in (6, 7) else torso],
        37: [torso, hem],
        38: [torso, "hair", "bag" if p["bag"] else torso],
        39: [torso, "hair", "hat" if p["hat"] else "hair"],
        40: [hem, "scarf" if p["scarf"] else hem, "bag" if p["bag"] else hem],
        41: [torso, "hat" if p["hat"] else torso],
        42: ["bottom" if p["bottom"] in (6, 7) else torso, "bag" if p["bag"] else torso, torso],
        43: [hem, torso],
        44: [torso, hem],
        45: ["bag" if p["bag"] else hem, "scarf" if p["scarf"] else hem, hem],
    }[cat]
    return _pick(rng, options)


def _planned_categories(p: dict) -> set:
    cats = {31, 33, 23}
    if p["base"] == "separates":
        cats |= {p["top"], p["bottom"]}
    else:
        cats.add(10 if p["base"] == "dress" else 11)
    if p["outer"] is not None:
        cats.add(p["outer"])
    if p["hood"]:
        cats.add(27)
    if p["collar"] and (p["top"] == 0 or p["outer"] in (4, 9, 12)):
        cats.add(28)
    if p["lapel"] and p["outer"] in (4, 9):
        cats.add(29)
    if p["epaulette"] and (p["outer"] in (4, 9) or p["top"] == 0):
        cats.add(30)
    if p["pocket"]:
        cats.add(32)
    if p["zip"]:
        cats.add(35)
    for name, c in (("glasses", 13), ("hat", 14), ("headband", 15), ("tie", 16), ("gloves", 17), ("watch", 18),
                    ("belt", 19), ("legwarmers", 20), ("tights", 21), ("socks", 22), ("bag", 24), ("scarf", 25),
                    ("umbrella", 26)):
        if p[name]:
            cats.add(c)
    if p["belt"] and p["buckle"]:
        cats.add(34)
    cats |= {c for c, _ in p["decos"]}
    return cats


# ------------------------------------------------------------------------------------------ drawing
def _draw_body(sc: _Scene, fig: _Fig, look: dict) -> _Item:
    u = fig.u
    g = sc.group()
    skin = _plain(fig, look["skin"], 0.22)
    hair = _plain(fig, look["hair"], 0.1)
    body = _Item(g, sc.mask(), skin, {"point": (0.3, 0.25), "chest": (0.3, 0.25)})
    if look["hair_style"] == "long":
        m = sc.mask().poly(fig.P([(-0.42, 0.3), (0.42, 0.3), (0.56, 1.1), (0.6, look["hair_len"]),
                                  (-0.6, look["hair_len"]), (-0.56, 1.1)]))
        sc.paint(m, hair, g)
    for s in (-1, 1):
        m = sc.mask().stroke(fig.P(fig.legs[s]), fig.leg_hw * u)
        a = fig.legs[s][2]
        m.ellipse(fig.P([(a[0] + s * 0.05, 7.8)])[0], (0.14 * u, 0.2 * u))
        sc.paint(m, skin, g)
    for s in (-1, 1):
        arm = fig.arms[s]
        m = sc.mask().stroke(fig.P(arm[:3]), fig.arm_hw * u).circle(fig.P(arm[3:4])[0], 0.16 * u)
        sc.paint(m, skin, g)
    ys = np.array([2.0, 2.6, 3.0, 3.8, 4.15])
    wd = fig.hw(ys)
    right = np.column_stack([wd, ys])
    torso = np.vstack([[(0.2, 1.05), (fig.sh * 0.98, 1.42)], right, right[::-1] * (-1, 1),
                       [(-fig.sh * 0.98, 1.42), (-0.2, 1.05)]])
    m = sc.mask().poly(fig.P(torso)).stroke(fig.P([(-fig.sh + 0.15, 1.5), (fig.sh - 0.15, 1.5)]), 0.15 * u)
    sc.paint(m, skin, g)
    m = sc.mask().poly(fig.P([(-0.14, 0.8), (0.14, 0.8), (0.16, 1.3), (-0.16, 1.3)]))
    sc.paint(m, skin, g, outline=0)
    head = sc.mask().ellipse(fig.P([(0.0, 0.52)])[0], (0.36 * u, 0.5 * u))
    sc.paint(head, skin, g)
    dark = (40, 30, 30)

    def face(t: _Mask):
        for s in (-1, 1):
            t.ellipse(fig.P([(s * 0.13, 0.5)])[0], (0.055 * u, 0.03 * u))
            t.line(fig.P([(s * 0.07, 0.41)])[0], fig.P([(s * 0.2, 0.4)])[0], max(1.0, 0.02 * u))

    sc.mark(head, face, dark)
    sc.mark(head, lambda t: t.ellipse(fig.P([(0.0, 0.8)])[0], (0.08 * u, 0.025 * u)),
            _scaled(look["skin"], 0.7))
    m = sc.mask()
    if look["hair_style"] == "bun":
        m.circle(fig.P([(0.0, -0.05)])[0], 0.2 * u)
    m.ellipse(fig.P([(0.0, 0.42)])[0], (0.39 * u, 0.45 * u), 0, 180, 360)
    m.poly(fig.P([(-0.39, 0.42), (-0.1, 0.42), (-0.36, 0.62)]))
    sc.paint(m, hair, g)
    body.mask.union(m)
    return body


def _draw_hands(sc: _Scene, fig: _Fig, body: _Item, skin) -> None:
    for s in (-1, 1):
        m = sc.mask().circle(fig.P(fig.arms[s][3:4])[0], 0.16 * fig.u)
        sc.paint(m, _plain(fig, skin, 0.1), body.group)


def _draw_legwear(sc: _Scene, fig: _Fig, plan: dict) -> None:
    rng, u = sc.rng, fig.u
    if plan["tights"]:
        colour = _pick(rng, [(30, 28, 30), (60, 50, 48), (196, 160, 140), (120, 30, 40), (30, 40, 80)])
        st = _style(rng, fig, "acc", pattern=_pick(rng, ["plain (pattern)", "plain (pattern)", "dot"]),
                    colour=colour)
        st["period"] = u * 0.1
        m = sc.mask().poly(fig.P([(-fig.hw(3.3), 3.3), (fig.hw(3.3), 3.3), (fig.hw(4.0), 4.0), (0, 4.15),
                                  (-fig.hw(4.0), 4.0)]))
        for s in (-1, 1):
            m.stroke(fig.P(fig.legs[s]), (fig.leg_hw + 0.01) * u)
            m.ellipse(fig.P([(fig.legs[s][2][0] + s * 0.05, 7.75)])[0], (0.14 * u, 0.18 * u))
        sc.item(21, (), m, st)
    if plan["socks"]:
        st = _style(rng, fig, "acc", colour=_pick(rng, [(240, 240, 240), (25, 25, 25), (200, 60, 60),
                                                         (120, 120, 130)]))
        top = float(rng.uniform(6.6, 7.3))
        for s in (-1, 1):
            c, w = fig.leg(s, np.array([top, 7.55]))
            m = sc.mask().stroke(fig.P(np.column_stack([c, [top, 7.55]])), (w + 0.015) * u, caps=(False, True))
            m.ellipse(fig.P([(c[1] + s * 0.05, 7.78)])[0], (0.15 * u, 0.19 * u))
            sc.item(22, (), m, st)


def _draw_shoes(sc: _Scene, fig: _Fig, plan: dict, hosts: dict) -> None:
    rng, u = sc.rng, fig.u
    kind = _pick(rng, ["sneaker", "pump", "boot", "sandal"], [0.4, 0.25, 0.2, 0.15])
    colour = _pick(rng, [(20, 20, 22), (240, 240, 238), (110, 70, 40), (170, 30, 40), (200, 180, 150),
                         (60, 60, 66)])
    st = _plain(fig, _jitter(rng, colour), 0.2)
    for s in (-1, 1):
        a = fig.legs[s][2]
        toe = (a[0] + s * 0.07, 7.78)
        m = sc.mask().ellipse(fig.P([toe])[0], (0.17 * u, 0.2 * u))
        if kind == "boot":
            c, w = fig.leg(s, np.array([6.3, 7.6]))
            m.stroke(fig.P(np.column_stack([c, [6.3, 7.6]])), (w + 0.05) * u, caps=(False, True))
        elif kind == "sneaker":
            m.poly(fig.P([(a[0] - 0.15, 7.45), (a[0] + 0.15, 7.45), (toe[0] + 0.17, 7.8), (toe[0] - 0.17, 7.8)]))
        else:
            m.poly(fig.P([(a[0] - 0.13, 7.62), (a[0] + 0.13, 7.62), (toe[0] + 0.16, 7.8), (toe[0] - 0.16, 7.8)]))
        if kind in ("pump", "sandal"):
            m.poly(fig.P([(a[0] - s * 0.06, 7.8), (a[0] - s * 0.02, 7.8), (a[0] - s * 0.03, 8.02),
                          (a[0] - s * 0.05, 8.02)]))
        shoe = sc.item(23, (), m, st)
        hosts.setdefault("shoes", shoe)
        if plan["shoe_buckle"]:
            b = sc.mask()
            b.poly(fig.P([(a[0] - 0.07, 7.55), (a[0] + 0.07, 7.55), (a[0] + 0.07, 7.67), (a[0] - 0.07, 7.67)]))
            sc.part(34, (), b, shoe, _plain(fig, _METAL[int(rng.integers(2))], 0.3))


def _draw_bottom(sc: _Scene, fig: _Fig, plan: dict) -> _Item:
    rng, u = sc.rng, fig.u
    cat = plan["bottom"]
    st = _style(rng, fig, "bottom" if cat != 8 else "dress")
    rise = _pick(rng, [("high waist", 2.85), ("normal waist", 3.05), ("low waist", 3.35)], [0.25, 0.55, 0.2])
    top_y = rise[1]
    anchors = {"waist": (-fig.hw(top_y) - 0.05, fig.hw(top_y) + 0.05, top_y + 0.12),
               "chest": (fig.legs[-1][1][0] * 0.6, 4.6)}
    attrs: list = []
    if cat == 8:
        sil = _pick(rng, ["pencil", "straight", "a-line", "flare", "circle"], [0.2, 0.15, 0.35, 0.2, 0.1])
        length = plan["skirt_len"]
        hem = _LENGTH_Y[length]
        pleat = sil in ("a-line", "flare") and rng.random() < 0.3
        m = sc.mask().poly(fig.P(_skirt_outline(fig, top_y, hem, sil, 0.08, wavy=sil in ("flare", "circle"))))
        tech = "pleat" if pleat else "no special manufacturing technique"
        attrs = [length, st["pattern"], "symmetrical", sil, tech, rise[0]]
        item = sc.item(8, attrs, m, st, anchors)
        if pleat:
            def pleats(t: _Mask):
                for x in np.linspace(-0.8, 0.8, 9):
                    t.line(fig.P([(x * 0.5, top_y + 0.2)])[0], fig.P([(x * (fig.hw(3.8) + 0.3 * (hem - 3.8)),
                                                                       hem)])[0], max(1.0, 0.02 * u))
            sc.mark(m, pleats, _scaled(st["c1"], 0.7))
        hw_hem = float(fig.hw(3.8)) + 0.08 + max(0.0, {"pencil": -0.05, "straight": 0.02, "a-line": 0.3,
                                                        "flare": 0.5, "circle": 0.7}[sil]) * max(0.0, hem - 3.8)
        item.anchors["hem"] = (-hw_hem, hw_hem, hem + 0.05)
        item.anchors["chest"] = (0.25, (top_y + hem) / 2)
        if plan["pocket"]:
            pk = sc.mask().poly(fig.P([(0.2, top_y + 0.25), (0.55, top_y + 0.25), (0.52, top_y + 0.6),
                                       (0.23, top_y + 0.6)]))
            sc.part(32, (), pk, item, _variant(st, 0.9))
    else:
        if cat == 6:
            sil = _pick(rng, ["tight (fit)", "straight", "wide leg", "bootcut"], [0.3, 0.35, 0.2, 0.15])
            knee_w, hem_w = {"tight (fit)": (0.19, 0.13), "straight": (0.27, 0.24), "wide leg": (0.42, 0.52),
                             "bootcut": (0.24, 0.32)}[sil]
            hem = float(rng.uniform(7.3, 7.6))
            attrs = [st["pattern"], "symmetrical", sil, rise[0]]
        else:
            length = _pick(rng, ["micro (length)", "mini (length)", "above-the-knee (length)", "knee (length)"])
            hem = _LENGTH_Y[length] - 0.1
            sil = _pick(rng, ["tight (fit)", "regular (fit)", "loose (fit)"])
            knee_w = hem_w = {"tight (fit)": 0.26, "regular (fit)": 0.33, "loose (fit)": 0.42}[sil]
            attrs = [length, st["pattern"], "symmetrical", sil, rise[0]]
        if plan["zip"] == "bottom":
            attrs.append("fly (opening)")
        m = sc.mask().poly(fig.P(_pants_outline(fig, top_y, hem, knee_w, hem_w, 0.05)))
        item = sc.item(cat, attrs, m, st, anchors)
        c, w = fig.leg(-1, hem)
        item.anchors["hem"] = (float(c - w - 0.05), float(c + w + 0.05), hem)
        sc.mark(m, lambda t: t.line(fig.P([(-1.5, top_y + 0.18)])[0], fig.P([(1.5, top_y + 0.18)])[0],
                                    max(1.0, 0.02 * u)), _scaled(st["c1"], 0.7))
        if plan["pocket"] or rng.random() < 0.35:
            for s in (-1, 1):
                x = fig.hw(top_y) + 0.05
                pk = sc.mask().poly(fig.P([(s * x, top_y + 0.2), (s * (x - 0.3), top_y + 0.2),
                                           (s * (x + 0.02), top_y + 0.6)]))
                sc.part(32, (), pk, item, _variant(st, 0.85))
        if plan["zip"] == "bottom":
            z = sc.mask().poly(fig.P([(-0.03, top_y + 0.22), (0.03, top_y + 0.22), (0.03, 3.95), (-0.03, 3.95)]))
            sc.part(35, (), z, item, _plain(fig, _METAL[int(rng.integers(len(_METAL)))], 0.1))
    return item


def _neck_choice(rng, plan: dict, options=("round", "v", "crew", "boat", "square", "scoop")) -> tuple:
    kind = _pick(rng, list(options))
    nw, depth = {"round": (0.28, 0.3), "v": (0.27, 0.7), "crew": (0.22, 0.12), "boat": (0.5, 0.1),
                 "square": (0.32, 0.4), "scoop": (0.33, 0.55), "one": (0.3, 0.3)}[kind]
    return "round" if kind in ("crew", "boat", "scoop") else kind, nw * float(rng.uniform(0.9, 1.1)), \
        depth * float(rng.uniform(0.85, 1.15))


def _add_neckline(sc: _Scene, fig: _Fig, item: _Item, curve: np.ndarray, sym: bool = True) -> None:
    st = _variant(item.style, 0.8, pattern="plain (pattern)") if sc.rng.random() < 0.6 else item.style
    m = sc.mask().stroke(fig.P(curve), 0.06 * fig.u)
    sc.part(33, ["symmetrical" if sym else "asymmetrical"], m, item, st)


def _add_sleeves(sc: _Scene, fig: _Fig, item: _Item, frac: float, ease: float, flare: float = 0.0) -> None:
    for s in (-1, 1):
        sc.part(31, (), _sleeve(sc, fig, s, frac, ease, flare), item, item.style)


def _add_collar(sc: _Scene, fig: _Fig, item: _Item, nw: float, st: dict, spread: float = 0.3) -> None:
    m = sc.mask()
    m.ellipse(fig.P([(0.0, 1.12)])[0], ((nw + 0.05) * fig.u, 0.12 * fig.u), 0, 180, 360, max(1, int(0.1 * fig.u)))
    for s in (-1, 1):
        m.poly(fig.P([(s * (nw + 0.06), 1.08), (s * 0.03, 1.3), (s * (nw + spread * 0.5), 1.55),
                      (s * (nw + spread), 1.3)]))
    sc.part(28, ["symmetrical"], m, item, st)


def _add_hood(sc: _Scene, fig: _Fig, item: _Item, up: bool) -> None:
    u = fig.u
    m = sc.mask()
    if up:
        m.ellipse(fig.P([(0.0, 0.6)])[0], (0.55 * u, 0.72 * u))
        m.poly(fig.P([(-0.5, 0.7), (0.5, 0.7), (0.7, 1.45), (-0.7, 1.45)]))
        m.subtract(sc.mask().ellipse(fig.P([(0.0, 0.58)])[0], (0.33 * u, 0.46 * u)))
    else:
        m.ellipse(fig.P([(0.0, 1.28)])[0], (0.62 * u, 0.28 * u))
        m.subtract(sc.mask().poly(fig.P([(-0.22, 0.9), (0.22, 0.9), (0.24, 1.25), (0.0, 1.42), (-0.24, 1.25)])))
    sc.part(27, ["symmetrical"], m, item, _variant(item.style, 0.9))


def _add_pocket(sc: _Scene, fig: _Fig, item: _Item, x: float, y: float, w: float, h: float, flap=False) -> None:
    m = sc.mask().poly(fig.P([(x - w / 2, y), (x + w / 2, y), (x + w / 2, y + h), (x - w / 2, y + h)]))
    sc.part(32, (), m, item, _variant(item.style, 0.92))
    if flap:
        sc.mark(m, lambda t: t.line(fig.P([(x - w / 2, y + 0.06)])[0], fig.P([(x + w / 2, y + 0.06)])[0],
                                    max(1.0, 0.02 * fig.u)), _scaled(item.style["c1"], 0.6))


def _add_epaulettes(sc: _Scene, fig: _Fig, item: _Item, sh: float) -> None:
    for s in (-1, 1):
        m = sc.mask().stroke(fig.P([(s * (sh - 0.35), 1.34), (s * (sh - 0.02), 1.44)]), 0.055 * fig.u)
        sc.part(30, (), m, item, _variant(item.style, 0.75))


def _buttons(sc: _Scene, fig: _Fig, item: _Item, xs, y0: float, y1: float, n: int) -> None:
    def draw(t: _Mask):
        for x in xs:
            for y in np.linspace(y0, y1, n):
                t.circle(fig.P([(x, y)])[0], max(0.8, 0.035 * fig.u))
    sc.mark(item.mask, draw, _scaled(item.style["c1"], 0.45) if sum(item.style["c1"]) > 200 else (200, 200, 200))


def _add_zipper(sc: _Scene, fig: _Fig, item: _Item, y0: float, y1: float, x: float = 0.0) -> None:
    m = sc.mask().poly(fig.P([(x - 0.035, y0), (x + 0.035, y0), (x + 0.035, y1), (x - 0.035, y1)]))
    sc.part(35, (), m, item, _plain(fig, _METAL[int(sc.rng.integers(len(_METAL)))], 0.05))

    def teeth(t: _Mask):
        for y in np.arange(y0, y1, 0.05):
            t.line(fig.P([(x - 0.03, y)])[0], fig.P([(x + 0.03, y)])[0], 1)
    sc.mark(m, teeth, (70, 70, 75))


def _fit_name(ease: float) -> str:
    return "tight (fit)" if ease < 0.05 else ("regular (fit)" if ease < 0.14 else
                                               ("loose (fit)" if ease < 0.26 else "oversized"))


def _sleeve_frac(kind: str) -> float | None:
    """Sleeve length as a fraction of the shoulder-to-wrist arm (None: sleeveless)."""
    return {"none": None, "cap": 0.12, "short": 0.3, "elbow": 0.55, "three_quarter": 0.78, "long": 1.03}[kind]


def _draw_top(sc: _Scene, fig: _Fig, plan: dict) -> _Item:
    rng = sc.rng
    cat = plan["top"]
    ease = float(rng.choice([0.03, 0.08, 0.12, 0.2, 0.3], p=[0.2, 0.3, 0.25, 0.17, 0.08]))
    length = plan["top_len"]
    hem = _LENGTH_Y[length] + float(rng.uniform(-0.08, 0.12))
    st = _style(rng, fig, "top")
    if cat == 1 and st["pattern"] == "plain (pattern)" and rng.random() < 0.25:
        st["pattern"] = "letters, numbers"
    if cat == 0:
        sleeves = _pick(rng, ["long", "short", "three_quarter"], [0.6, 0.3, 0.1])
        kind, nw, depth = "v", 0.24, 0.35
        opening = "single breasted"
    elif cat == 1:
        sleeves = _pick(rng, ["short", "none", "long", "cap"], [0.55, 0.2, 0.15, 0.1])
        kind, nw, depth = _neck_choice(rng, plan)
        opening = "no opening"
    else:
        sleeves = _pick(rng, ["long", "three_quarter"], [0.85, 0.15])
        kind, nw, depth = _neck_choice(rng, plan, ("crew", "round", "v"))
        opening = "no opening"
    if plan["sleeves"] and sleeves == "none":
        sleeves = "short"
    one = cat == 1 and sleeves == "none" and rng.random() < 0.25
    neck = _neck_curve(kind, nw, depth)
    shoulder = fig.sh * 0.6 if sleeves == "none" else None
    m = sc.mask().poly(fig.P(_upper_outline(fig, hem, ease, neck, shoulder, one_shoulder=one)))
    attrs = [length, st["pattern"], "asymmetrical" if one else "symmetrical", _fit_name(ease), opening,
             "no special manufacturing technique"]
    anchors = {"chest": (0.0, 2.15 if depth < 0.5 else 2.35), "hem": (-fig.hw(hem) - ease, fig.hw(hem) + ease, hem),
               "neck": neck, "waist": (-fig.hw(3.0) - ease, fig.hw(3.0) + ease, 3.0)}
    item = sc.item(cat, attrs, m, st, anchors)
    if st["pattern"] == "letters, numbers":
        text = "".join(_pick(rng, list("ABCDEFGHKLMNPRSTUVXYZ0123456789")) for _ in range(int(rng.integers(2, 5))))
        org = fig.P([(-0.45, 2.55)])[0]
        sc.mark(m, lambda t: t.text(text, org, fig.u * 0.012, max(1, int(fig.u * 0.05))), st["c2"])
    frac = _sleeve_frac(sleeves)
    if frac:
        _add_sleeves(sc, fig, item, frac, ease * 0.6 + 0.03)
    if cat == 0:
        _buttons(sc, fig, item, [0.0], 1.6, hem - 0.2, max(3, int((hem - 1.6) / 0.35)))
        if plan["collar"] or rng.random() < 0.9:
            _add_collar(sc, fig, item, nw, _variant(st, 1.0), 0.3)
        if plan["pocket"] or rng.random() < 0.3:
            _add_pocket(sc, fig, item, -0.38, 1.85, 0.3, 0.32, flap=True)
        if plan["epaulette"] and plan["outer"] not in (4, 9):
            _add_epaulettes(sc, fig, item, fig.sh + ease * 0.5)
    else:
        _add_neckline(sc, fig, item, np.array([(fig.hw(2.2) + ease, 2.2), (-0.2, 1.24)]) if one else neck,
                      not one)
        if plan["pocket"] and cat == 1:
            _add_pocket(sc, fig, item, 0.0, 3.0, 0.9, 0.5)
    if plan["hood"] == "top":
        _add_hood(sc, fig, item, rng.random() < 0.4)
    if plan["zip"] == "top":
        _add_zipper(sc, fig, item, 1.2 + depth, 2.3)
    if cat == 2:  # knit rib at hem
        sc.mark(m, lambda t: [t.line(fig.P([(x, hem - 0.2)])[0], fig.P([(x, hem)])[0], 1)
                              for x in np.arange(-1.6, 1.6, 0.08)], _scaled(st["c1"], 0.75))
    return item


def _draw_dress(sc: _Scene, fig: _Fig, plan: dict) -> _Item:
    rng = sc.rng
    st = _style(rng, fig, "dress")
    waist = _pick(rng, [("normal waist", 3.0), ("empire waistline", 2.45), ("high waist", 2.75),
                        ("dropped waistline", 3.7), ("no waistline", 3.0)], [0.35, 0.15, 0.15, 0.1, 0.25])
    sil = _pick(rng, ["a-line", "fit and flare", "pencil", "straight", "flare"], [0.3, 0.25, 0.15, 0.15, 0.15])
    if waist[0] == "no waistline" and sil == "fit and flare":
        sil = "a-line"
    length = plan["dress_len"]
    hem = _LENGTH_Y[length]
    sleeves = _pick(rng, ["none", "short", "cap", "long", "three_quarter"], [0.4, 0.25, 0.1, 0.15, 0.1])
    if plan["sleeves"] and sleeves == "none":
        sleeves = "short"
    kind, nw, depth = _neck_choice(rng, plan, ("round", "v", "square", "scoop", "boat"))
    one = sleeves == "none" and rng.random() < 0.2
    neck = _neck_curve(kind, nw, depth)
    ease = 0.04
    shoulder = fig.sh * 0.55 if sleeves == "none" else None
    top_y = min(waist[1], 3.0) if waist[0] != "no waistline" else 3.0
    m = sc.mask().poly(fig.P(_upper_outline(fig, top_y + 0.1, ease, neck, shoulder, one_shoulder=one)))
    m.poly(fig.P(_skirt_outline(fig, top_y, hem, sil, ease + 0.02, wavy=sil == "flare")))
    tiered = sil in ("a-line", "flare") and rng.random() < 0.15
    attrs = [length, st["pattern"], "asymmetrical" if one else "symmetrical", sil, waist[0],
             "tiered" if tiered else "no special manufacturing technique", "no opening"]
    hem_hw = float(fig.hw(3.8)) + 0.06 + max(0.0, {"a-line": 0.3, "fit and flare": 0.45, "pencil": 0.0,
                                                    "straight": 0.02, "flare": 0.5}[sil]) * max(0.0, hem - 3.8)
    anchors = {"chest": (0.0, 2.2 if depth < 0.5 else 2.4), "hem": (-hem_hw, hem_hw, hem + 0.05), "neck": neck,
               "waist": (-fig.hw(top_y) - ease, fig.hw(top_y) + ease, top_y)}
    item = sc.item(10, attrs, m, st, anchors)
    if waist[0] != "no waistline":
        sc.mark(m, lambda t: t.line(fig.P([(-1.5, waist[1])])[0], fig.P([(1.5, waist[1])])[0],
                                    max(1.0, 0.025 * fig.u)), _scaled(st["c1"], 0.65))
    if tiered:
        sc.mark(m, lambda t: [t.line(fig.P([(-2.5, y)])[0], fig.P([(2.5, y)])[0], max(1.0, 0.025 * fig.u))
                              for y in np.linspace(top_y, hem, 4)[1:-1]], _scaled(st["c1"], 0.65))
    frac = _sleeve_frac(sleeves)
    if frac:
        _add_sleeves(sc, fig, item, frac, 0.05, flare=0.06 if rng.random() < 0.3 else 0.0)
    _add_neckline(sc, fig, item, np.array([(fig.hw(2.2) + ease, 2.2), (-0.2, 1.24)]) if one else neck, not one)
    if plan["pocket"]:
        _add_pocket(sc, fig, item, 0.5, 3.9, 0.3, 0.35)
    return item


def _draw_jumpsuit(sc: _Scene, fig: _Fig, plan: dict) -> _Item:
    rng = sc.rng
    st = _style(rng, fig, "top")
    sleeves = _pick(rng, ["none", "short", "long"], [0.35, 0.4, 0.25])
    if plan["sleeves"] and sleeves == "none":
        sleeves = "short"
    kind, nw, depth = _neck_choice(rng, plan, ("round", "v", "square"))
    neck = _neck_curve(kind, nw, depth)
    ease = 0.06
    sil = _pick(rng, ["straight", "wide leg", "tight (fit)"])
    knee_w, hem_w = {"tight (fit)": (0.2, 0.14), "straight": (0.28, 0.25), "wide leg": (0.42, 0.5)}[sil]
    m = sc.mask().poly(fig.P(_upper_outline(fig, 3.2, ease, neck, fig.sh * 0.6 if sleeves == "none" else None)))
    m.poly(fig.P(_pants_outline(fig, 2.95, float(rng.uniform(7.3, 7.6)), knee_w, hem_w, ease)))
    attrs = [st["pattern"], "symmetrical", sil, "normal waist",
             "zip-up" if plan["zip"] == "jumpsuit" else "no opening"]
    anchors = {"chest": (0.0, 2.3), "neck": neck, "waist": (-fig.hw(3.0) - ease, fig.hw(3.0) + ease, 3.0),
               "hem": (-fig.hw(3.9) - ease, fig.hw(3.9) + ease, 3.9)}
    item = sc.item(11, attrs, m, st, anchors)
    sc.mark(m, lambda t: t.line(fig.P([(-1.5, 3.0)])[0], fig.P([(1.5, 3.0)])[0], max(1.0, 0.025 * fig.u)),
            _scaled(st["c1"], 0.65))
    frac = _sleeve_frac(sleeves)
    if frac:
        _add_sleeves(sc, fig, item, frac, 0.06)
    _add_neckline(sc, fig, item, neck)
    if plan["zip"] == "jumpsuit":
        _add_zipper(sc, fig, item, 1.2 + depth, 3.9)
    if plan["pocket"] or rng.random() < 0.3:
        for s in (-1, 1):
            _add_pocket(sc, fig, item, s * 0.4, 1.9, 0.28, 0.3, flap=True)
    return item


def _draw_outer(sc: _Scene, fig: _Fig, plan: dict) -> _Item:
    rng = sc.rng
    cat = plan["outer"]
    st = _style(rng, fig, "outer")
    is_open = plan["outer_open"]
    zipped = cat == 4 and plan["zip"] == "outer"
    if zipped:
        is_open = False
    if cat == 12:
        length = plan["cape_len"]
        hem = _LENGTH_Y[length]
        wide = float(rng.uniform(0.25, 0.55))
        hem_x = np.linspace(fig.sh + 0.3 + wide * (hem - 1.5), -(fig.sh + 0.3 + wide * (hem - 1.5)), 11)
        hem_y = hem + 0.1 * (1 - (hem_x / hem_x[0]) ** 2)
        outline = np.vstack([[(-0.28, 1.12), (0.28, 1.12), (fig.sh + 0.12, 1.45)], np.column_stack([hem_x, hem_y]),
                             [(-(fig.sh + 0.12), 1.45)]])
        m = sc.mask().poly(fig.P(outline))
        attrs = [length, st["pattern"], "symmetrical", "no opening", "loose (fit)"]
        item = sc.item(12, attrs, m, st, {"chest": (0.0, 2.2), "hem": (hem_x[-1], hem_x[0], hem + 0.05),
                                          "neck": _neck_curve("round", 0.28, 0.15)})
        if plan["collar"] and rng.random() < 0.5:
            _add_collar(sc, fig, item, 0.26, _variant(st, 0.85), 0.35)
        if plan["hood"] == "outer":
            _add_hood(sc, fig, item, rng.random() < 0.5)
        return item
    if cat == 3:
        length = _pick(rng, ["hip (length)", "above-the-knee (length)"], [0.75, 0.25])
        ease, vbottom, lapel, collar = 0.12, float(rng.uniform(2.3, 2.9)), False, False
    elif cat == 4:
        length = _pick(rng, ["hip (length)", "above-the-hip (length)"], [0.85, 0.15])
        ease, vbottom = 0.14, float(rng.uniform(2.4, 2.9))
        lapel, collar = (plan["lapel"] and not zipped), plan["collar"]
    elif cat == 5:
        length = _pick(rng, ["hip (length)", "above-the-hip (length)"], [0.7, 0.3])
        ease, vbottom, lapel, collar = 0.08, float(rng.uniform(2.2, 2.6)), False, False
    else:
        length = plan["coat_len"]
        ease, vbottom = 0.18, float(rng.uniform(2.3, 2.8))
        lapel, collar = plan["lapel"], plan["collar"]
    hem = _LENGTH_Y[length] + (0.05 if cat != 9 else 0.0)
    flare = 0.08 if cat == 9 else 0.0
    nw = 0.26
    neck = _neck_curve("round", nw, 0.12) if zipped else _neck_curve("v", nw, vbottom - 1.2)
    shoulder = fig.sh * 0.72 if cat == 5 else None
    outline = _upper_outline(fig, hem, ease, neck, shoulder, flare=flare)
    m = sc.mask().poly(fig.P(outline))
    if is_open:
        g0, g1 = 0.06, float(rng.uniform(0.2, 0.45)) + flare * (hem - 3.0)
        m.poly(fig.P([(-g0, vbottom - 0.05), (g0, vbottom - 0.05), (g1, hem + 0.3), (-g1, hem + 0.3)]), value=0)
    double = cat in (4, 9) and not zipped and not is_open and rng.random() < 0.35
    opening = "zip-up" if zipped else ("double breasted" if double else "single breasted")
    sym = "symmetrical"
    attrs = [length, st["pattern"], sym, opening, _fit_name(ease - 0.06),
             "no special manufacturing technique"]
    if cat == 9:
        attrs.append(_pick(rng, ["straight", "a-line"]) if flare == 0 else "a-line")
    side_x = float(fig.hw(3.4)) + ease - 0.45
    anchors = {"chest": (-(side_x + 0.05), 2.2), "hem": (-fig.hw(hem) - ease, fig.hw(hem) + ease, hem),
               "neck": neck, "waist": (-fig.hw(3.0) - ease, fig.hw(3.0) + ease, 3.0)}
    item = sc.item(cat, attrs, m, st, anchors)
    if cat != 5:
        _add_sleeves(sc, fig, item, 1.05, ease * 0.6 + 0.07)
    if zipped:
        _add_zipper(sc, fig, item, 1.3, hem)
    elif not is_open:
        xs = [-0.18, 0.18] if double else [0.06]
        _buttons(sc, fig, item, xs, vbottom + 0.05, min(hem - 0.3, 4.3), 3 if cat != 3 else 5)
    if collar:
        _add_collar(sc, fig, item, nw, _variant(st, 0.9), 0.4 if cat == 9 else 0.32)
    if lapel:
        for s in (-1, 1):
            lp = sc.mask().poly(fig.P([(s * (nw + 0.02), 1.22), (s * (nw + 0.38), 1.62), (s * (nw + 0.22), 1.7),
                                       (s * 0.08, vbottom), (s * 0.0, vbottom - 0.1)]))
            sc.part(29, (), lp, item, _variant(st, 0.8))
    if cat in (4, 9) and plan["epaulette"]:
        _add_epaulettes(sc, fig, item, fig.sh + 0.05 + ease * 0.5)
    if plan["pocket"] or (cat in (3, 4, 9) and rng.random() < 0.55) or (cat == 5 and rng.random() < 0.3):
        y = min(3.35, hem - 0.55)
        for s in (-1, 1):
            _add_pocket(sc, fig, item, s * side_x, y, 0.42, 0.38, flap=cat in (4, 9))
    if plan["hood"] == "outer":
        _add_hood(sc, fig, item, rng.random() < 0.4)
    return item


def _draw_tie(sc: _Scene, fig: _Fig) -> None:
    rng = sc.rng
    st = _style(rng, fig, "acc", pattern=_pick(rng, ["plain (pattern)", "stripe", "dot"]))
    m = sc.mask().poly(fig.P([(-0.07, 1.2), (0.07, 1.2), (0.05, 1.38), (-0.05, 1.38)]))
    m.poly(fig.P([(-0.04, 1.36), (0.04, 1.36), (0.12, 2.85), (0.0, 3.0), (-0.12, 2.85)]))
    sc.item(16, (), m, st)


def _draw_belt(sc: _Scene, fig: _Fig, plan: dict, ease: float, y: float) -> _Item:
    rng, u = sc.rng, fig.u
    st = _plain(fig, _jitter(rng, _pick(rng, [(25, 22, 20), (110, 66, 38), (150, 110, 70), (200, 30, 40),
                                             (235, 235, 230)])), 0.25)
    w = float(fig.hw(y)) + ease + 0.03
    m = sc.mask().poly(fig.P([(-w, y - 0.08), (w, y - 0.08), (w, y + 0.08), (-w, y + 0.08)]))
    item = sc.item(19, (), m, st, {"waist": (-w, w, y)})
    if plan["buckle"]:
        b = sc.mask().poly(fig.P([(-0.12, y - 0.12), (0.12, y - 0.12), (0.12, y + 0.12), (-0.12, y + 0.12)]))
        sc.part(34, (), b, item, _plain(fig, _METAL[int(rng.integers(len(_METAL)))], 0.1), outline=max(1, 0.02 * u))
        sc.mark(b, lambda t: t.poly(fig.P([(-0.07, y - 0.06), (0.07, y - 0.06), (0.07, y + 0.06),
                                           (-0.07, y + 0.06)])), st["c1"])
    return item


def _draw_scarf(sc: _Scene, fig: _Fig) -> _Item:
    rng = sc.rng
    st = _style(rng, fig, "top", pattern=_pick(rng, ["plain (pattern)", "check", "stripe", "dot"]))
    m = sc.mask().ellipse(fig.P([(0.0, 1.18)])[0], (0.42 * fig.u, 0.22 * fig.u))
    m.poly(fig.P([(-0.35, 1.05), (0.35, 1.05), (0.3, 1.3), (-0.3, 1.3)]))
    end = float(rng.uniform(2.4, 3.3))
    x = float(rng.uniform(-0.25, 0.25))
    m.poly(fig.P([(x - 0.14, 1.2), (x + 0.14, 1.2), (x + 0.2, end), (x - 0.12, end + 0.05)]))
    m.poly(fig.P([(x + 0.05, 1.25), (x + 0.3, 1.25), (x + 0.38, end - 0.3), (x + 0.12, end - 0.25)]))
    return sc.item(25, (), m, st, {"hem": (x - 0.12, x + 0.38, end), "chest": (x + 0.04, 1.9)})


def _draw_bag(sc: _Scene, fig: _Fig, plan: dict) -> _Item:
    rng, u = sc.rng, fig.u
    st = _style(rng, fig, "acc", colour=_pick(rng, [(25, 22, 20), (120, 72, 40), (200, 170, 130), (180, 30, 40),
                                                     (230, 225, 215), (60, 90, 60)]))
    s = plan["bag_side"]
    bw, bh = float(rng.uniform(0.55, 0.95)), float(rng.uniform(0.45, 0.8))
    m = sc.mask()
    if plan["bag_kind"] == "hand":
        hc = fig.arms[s][3]
        top = (hc[0], hc[1] + 0.35)
        m.ellipse(fig.P([hc])[0], (0.2 * u, 0.26 * u), 0, 0, 360, max(1, int(0.05 * u)))
    else:
        cross = plan["bag_kind"] == "cross"
        top = (-s * (fig.hw(3.6) + 0.15) if cross else s * (fig.hw(3.6) + 0.25), 3.5)
        strap_from = fig.P([(s * 0.55, 1.35)])[0]
        m.line(strap_from, fig.P([top])[0], max(1.0, 0.05 * u))
    x0, y0 = top
    m.poly(fig.P([(x0 - bw / 2, y0), (x0 + bw / 2, y0), (x0 + bw / 2 + 0.05, y0 + bh), (x0 - bw / 2 - 0.05, y0 + bh)]))
    item = sc.item(24, (), m, st, {"point": (x0, y0 + bh / 2), "chest": (x0, y0 + bh / 2),
                                   "hem": (x0 - bw / 2, x0 + bw / 2, y0 + bh)})
    sc.mark(m, lambda t: t.line(fig.P([(x0 - bw / 2, y0 + bh * 0.35)])[0], fig.P([(x0 + bw / 2, y0 + bh * 0.35)])[0],
                                max(1.0, 0.02 * u)), _scaled(st["c1"], 0.6))
    if plan["bag_buckle"]:
        b = sc.mask().poly(fig.P([(x0 - 0.07, y0 + bh * 0.3), (x0 + 0.07, y0 + bh * 0.3), (x0 + 0.07, y0 + bh * 0.45),
                                  (x0 - 0.07, y0 + bh * 0.45)]))
        sc.part(34, (), b, item, _plain(fig, _METAL[int(rng.integers(2))], 0.1))
    return item


def _draw_gloves(sc: _Scene, fig: _Fig) -> None:
    rng, u = sc.rng, fig.u
    st = _plain(fig, _jitter(rng, _pick(rng, [(25, 22, 20), (110, 66, 38), (230, 230, 225), (160, 30, 40)])), 0.2)
    back = float(rng.uniform(0.82, 0.92))
    for s in (-1, 1):
        path = fig.arm_path(s, back)[-1:]
        hand = fig.arms[s][3]
        m = sc.mask().stroke(fig.P(np.vstack([path, fig.arms[s][2:3]])), np.array([0.16, 0.15]) * u)
        m.circle(fig.P([hand])[0], 0.18 * u)
        sc.item(17, (), m, st)


def _draw_watch(sc: _Scene, fig: _Fig) -> None:
    rng, u = sc.rng, fig.u
    s = int(_pick(rng, [-1, 1]))
    p = fig.arm_path(s, 0.96)[-1]
    m = sc.mask().circle(fig.P([p])[0], 0.14 * u)
    st = _plain(fig, _METAL[int(rng.integers(len(_METAL)))], 0.2)
    sc.item(18, (), m, st)
    sc.mark(m, lambda t: t.circle(fig.P([p])[0], 0.08 * u), (235, 235, 240))


def _draw_head_acc(sc: _Scene, fig: _Fig, plan: dict, hosts: dict) -> None:
    rng, u = sc.rng, fig.u
    if plan["glasses"]:
        st = _plain(fig, _pick(rng, [(20, 20, 24), (60, 40, 30), (90, 70, 40)]), 0.05)
        m = sc.mask()
        for s in (-1, 1):
            m.ellipse(fig.P([(s * 0.15, 0.5)])[0], (0.13 * u, 0.085 * u))
        m.line(fig.P([(-0.05, 0.47)])[0], fig.P([(0.05, 0.47)])[0], max(1.0, 0.03 * u))
        sc.item(13, (), m, st)
        if rng.random() < 0.5:  # clear lenses: show the face through them
            sc.mark(m, lambda t: [t.ellipse(fig.P([(s * 0.15, 0.5)])[0], (0.1 * u, 0.06 * u)) for s in (-1, 1)],
                    _scaled(hosts["hair"].style["c1"], 1.0))
    if plan["hat"]:
        st = _style(rng, fig, "acc", colour=_pick(rng, [(25, 22, 20), (200, 170, 120), (150, 30, 40),
                                                         (230, 225, 210), (60, 60, 90), (120, 80, 50)]))
        kind = _pick(rng, ["brim", "beanie", "cap"])
        m = sc.mask()
        if kind == "brim":
            brim = float(rng.uniform(0.5, 0.85))
            m.ellipse(fig.P([(0.0, 0.15)])[0], (brim * u, 0.1 * u))
            m.poly(fig.P([(-0.34, 0.17), (0.34, 0.17), (0.3, -0.28), (0.0, -0.33), (-0.3, -0.28)]))
            band_y = 0.05
        elif kind == "beanie":
            m.ellipse(fig.P([(0.0, 0.36)])[0], (0.42 * u, 0.52 * u), 0, 180, 360)
            m.poly(fig.P([(-0.42, 0.36), (0.42, 0.36), (0.42, 0.22), (-0.42, 0.22)]))
            band_y = 0.28
        else:
            m.ellipse(fig.P([(0.0, 0.3)])[0], (0.4 * u, 0.42 * u), 0, 180, 360)
            m.ellipse(fig.P([(0.12, 0.3)])[0], (0.45 * u, 0.07 * u))
            band_y = 0.22
        hat = sc.item(14, (), m, st, {"point": (0.2, band_y), "chest": (0.2, band_y),
                                      "waist": (-0.33, 0.33, band_y)})
        hosts["hat"] = hat
    elif plan["headband"]:
        st = _style(rng, fig, "acc")
        m = sc.mask().ellipse(fig.P([(0.0, 0.5)])[0], (0.39 * u, 0.5 * u), 0, 195, 345, max(1, int(0.1 * u)))
        sc.item(15, (), m, st)


def _draw_umbrella(sc: _Scene, fig: _Fig, plan: dict) -> None:
    rng, u = sc.rng, fig.u
    s = plan["umbrella_side"]
    hand = fig.arms[s][3]
    centre = np.array([hand[0] * 0.45, hand[1] - 1.5])
    st = _style(rng, fig, "acc", pattern=_pick(rng, ["plain (pattern)", "stripe", "dot", "check"]))
    st["shade"] = 0.0
    m = sc.mask().line(fig.P([hand])[0], fig.P([centre])[0], max(1.0, 0.04 * u))
    ax, ay = float(rng.uniform(1.5, 2.1)), float(rng.uniform(0.7, 1.0))
    t = np.linspace(math.pi, 2 * math.pi, 17)
    dome = np.column_stack([centre[0] + ax * np.cos(t), centre[1] + 0.05 + ay * np.sin(t)])
    xs = np.linspace(centre[0] + ax, centre[0] - ax, 17)
    scallop = np.column_stack([xs, centre[1] + 0.05 + 0.12 * np.abs(np.sin((xs - centre[0]) / ax * 4 * math.pi))])
    m.poly(fig.P(np.vstack([dome, scallop[1:-1]])))
    sc.item(26, (), m, st)


def _applique(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """A star or heart patch."""
    rng, u = sc.rng, fig.u
    r = float(rng.uniform(0.16, 0.3))
    if rng.random() < 0.5:
        ang = np.linspace(-math.pi / 2, 1.5 * math.pi, 11)[:-1]
        rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        m.poly(fig.P(np.column_stack([cx + rad * np.cos(ang), cy + rad * np.sin(ang)])))
    else:
        m.circle(fig.P([(cx - r * 0.45, cy - r * 0.2)])[0], r * 0.5 * u)
        m.circle(fig.P([(cx + r * 0.45, cy - r * 0.2)])[0], r * 0.5 * u)
        m.poly(fig.P([(cx - r * 0.92, cy - 0.1 * r), (cx + r * 0.92, cy - 0.1 * r), (cx, cy + r)]))
    return st


def _beads(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """Beads along the neckline or the hem."""
    rng, u, a = sc.rng, fig.u, host.anchors
    st = _plain(fig, _pick(rng, [(245, 240, 230), (220, 185, 90), (30, 30, 30)]), 0.3)
    if "neck" in a:
        pts = np.asarray(a["neck"], np.float64) + (0.0, 0.1)
    else:
        xl, xr, y = a.get("hem", (cx - 0.4, cx + 0.4, cy))
        pts = np.array([(xl * 0.8, y - 0.12), (xr * 0.8, y - 0.12)])
    seg = np.linspace(0, 1, 22)
    k = np.interp(seg, np.linspace(0, 1, len(pts)), np.arange(len(pts)))
    i = np.minimum(k.astype(int), len(pts) - 2)
    beads = pts[i] + (pts[i + 1] - pts[i]) * (k - i)[:, None]
    for b in beads:
        m.circle(fig.P([b])[0], max(1.2, 0.04 * u))
    return st


def _bow(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    r = float(sc.rng.uniform(0.14, 0.24))
    for s in (-1, 1):
        m.poly(fig.P([(cx, cy), (cx + s * r, cy - r * 0.6), (cx + s * r, cy + r * 0.6)]))
    m.circle(fig.P([(cx, cy)])[0], r * 0.3 * fig.u)
    return st


def _flower(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """Five petals and a yellow centre (drawn here, with its mark): returns None."""
    r, u = float(sc.rng.uniform(0.07, 0.12)), fig.u
    for k in range(5):
        ang = k * 2 * math.pi / 5
        m.circle(fig.P([(cx + 1.1 * r * math.cos(ang), cy + 1.1 * r * math.sin(ang))])[0], r * u)
    sc.part(_CATEGORY["flower"], (), m, host, st)
    sc.mark(m, lambda t: t.circle(fig.P([(cx, cy)])[0], r * 0.6 * u), (240, 210, 70))
    return None


def _fringe(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """A fringe hanging from the hem."""
    xl, xr, y = host.anchors.get("hem", (cx - 0.4, cx + 0.4, cy))
    L = float(sc.rng.uniform(0.2, 0.4))
    m.poly(fig.P([(xl, y - 0.05), (xr, y - 0.05), (xr, y + 0.03), (xl, y + 0.03)]))
    for x in np.arange(xl + 0.02, xr, 0.07):
        m.line(fig.P([(x, y)])[0], fig.P([(x + 0.02, y + L)])[0], max(1.0, 0.025 * fig.u))
    return _variant(host.style, 0.8, pattern="plain (pattern)")


def _ribbon(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """A ribbon band at the waist with two tails."""
    xl, xr, y = host.anchors.get("waist", (cx - 0.5, cx + 0.5, cy))
    m.poly(fig.P([(xl, y - 0.06), (xr, y - 0.06), (xr, y + 0.06), (xl, y + 0.06)]))
    x = xl + (xr - xl) * 0.6
    m.poly(fig.P([(x, y), (x + 0.05, y), (x + 0.12, y + 0.55), (x + 0.05, y + 0.5)]))
    m.poly(fig.P([(x, y), (x - 0.03, y), (x - 0.1, y + 0.5), (x - 0.02, y + 0.48)]))
    return st


def _rivets(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """Metal rivets along the waist or in a block on the chest."""
    rng, a = sc.rng, host.anchors
    st = _plain(fig, _METAL[int(rng.integers(2))], 0.3)
    if "waist" in a and rng.random() < 0.6:
        xl, xr, y = a["waist"]
        pts = [(x, y + 0.1) for x in np.linspace(xl + 0.1, xr - 0.1, 8)]
    else:
        pts = [(cx + dx, cy + dy) for dx in (-0.15, 0.0, 0.15) for dy in (-0.1, 0.1)]
    for q in pts:
        m.circle(fig.P([q])[0], max(1.2, 0.045 * fig.u))
    return st


def _ruffle(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """A ruffle along the hem (or the neckline)."""
    a = host.anchors
    if "hem" in a and sc.rng.random() < 0.7:
        xl, xr, y = a["hem"]
        pts = np.column_stack([np.linspace(xl, xr, 14), np.full(14, y)])
    else:
        pts = np.asarray(a.get("neck", [(cx - 0.3, cy), (cx + 0.3, cy)]), np.float64) + (0.0, 0.06)
        k = np.linspace(0, len(pts) - 1, 12)
        pts = np.column_stack([np.interp(k, np.arange(len(pts)), pts[:, 0]),
                               np.interp(k, np.arange(len(pts)), pts[:, 1])])
    for q in pts:
        m.ellipse(fig.P([q])[0], (0.09 * fig.u, 0.08 * fig.u))
    return _variant(host.style, 1.08)


def _sequins(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """A dotted sequin patch."""
    rng, u = sc.rng, fig.u
    st = dict(_plain(fig, _pick(rng, [(210, 190, 120), (200, 200, 215), (160, 40, 70)]), 0.2),
              pattern="dot", c2=(250, 250, 250), period=max(3.0, 0.07 * u), duty=0.5, angle=0.0, phase=0.0)
    m.ellipse(fig.P([(cx, cy + 0.1)])[0], (float(rng.uniform(0.25, 0.4)) * u, float(rng.uniform(0.2, 0.35)) * u))
    return st


def _tassels(sc: _Scene, fig: _Fig, host: _Item, m, st: dict, cx: float, cy: float) -> dict | None:
    """One or two tassels hanging from the hem (of a garment, a bag or a scarf)."""
    xl, xr, y = host.anchors.get("hem", (cx - 0.3, cx + 0.3, cy))
    for x in ((xl + 0.05, xr - 0.05) if sc.rng.random() < 0.6 else ((xl + xr) / 2,)):
        m.line(fig.P([(x, y - 0.05)])[0], fig.P([(x, y + 0.15)])[0], max(1.0, 0.025 * fig.u))
        m.poly(fig.P([(x, y + 0.12), (x + 0.07, y + 0.42), (x - 0.07, y + 0.42)]))
    return st


# Decoration category -> its drawer: draws into the mask ``m`` near (cx, cy) and returns the style of the
# part (None: it drew the part itself).
_DECORATORS = {"applique": _applique, "bead": _beads, "bow": _bow, "flower": _flower, "fringe": _fringe,
               "ribbon": _ribbon, "rivet": _rivets, "ruffle": _ruffle, "sequin": _sequins, "tassel": _tassels}


def _decorate(sc: _Scene, fig: _Fig, host: _Item, cat: int) -> None:
    """Draw decoration ``cat`` (applique ... tassel, :data:`_DECORATORS`) on ``host`` as a part (its mask
    overlaps the host's)."""
    rng = sc.rng
    a = host.anchors
    cx, cy = a.get("chest", a.get("point", (0.0, 2.2)))
    cx, cy = cx + float(rng.uniform(-0.12, 0.12)), cy + float(rng.uniform(-0.1, 0.1))
    colour = _jitter(rng, _GARMENT_COLOURS[int(rng.integers(len(_GARMENT_COLOURS)))])
    st = _plain(fig, colour, 0.1)
    m = sc.mask()
    st = _DECORATORS[_CATEGORY_NAME[cat]](sc, fig, host, m, st, cx, cy)
    if st is not None:
        sc.part(cat, (), m, host, st)


def _draw_figure(sc: _Scene, fig: _Fig, plan: dict, look: dict) -> None:
    rng = sc.rng
    body = _draw_body(sc, fig, look)
    hosts = {"hair": body}

    def deco(key: str) -> None:
        for c, h in plan["decos"]:
            if h == key and key in hosts:
                _decorate(sc, fig, hosts[key], c)

    deco("hair")
    _draw_legwear(sc, fig, plan)
    if plan["shoes"]:
        _draw_shoes(sc, fig, plan, hosts)
    base = plan["base"]
    waist_ease = 0.1
    if base == "separates":
        hosts["bottom"] = _draw_bottom(sc, fig, plan)
        deco("bottom")
    if plan["legwarmers"]:
        st = _style(rng, fig, "acc", pattern="stripe")
        st.update(angle=0.0, period=fig.u * 0.07, c2=_scaled(st["c1"], 0.7))
        top = float(rng.uniform(6.0, 6.5))
        for s in (-1, 1):
            c, w = fig.leg(s, np.array([top, 7.5]))
            m = sc.mask().stroke(fig.P(np.column_stack([c, [top, 7.5]])), (w + 0.07) * fig.u, caps=(False, False))
            sc.item(20, (), m, st)
    if base == "separates":
        hosts["top"] = _draw_top(sc, fig, plan)
        deco("top")
    elif base == "dress":
        hosts["dress"] = _draw_dress(sc, fig, plan)
        deco("dress")
    else:
        hosts["jumpsuit"] = _draw_jumpsuit(sc, fig, plan)
        deco("jumpsuit")
    if plan["tie"]:
        _draw_tie(sc, fig)
    belt_over = plan["outer"] == 9 and not plan["outer_open"]
    if plan["belt"] and not belt_over:
        _draw_belt(sc, fig, plan, waist_ease, 3.0 if base != "separates" else 3.1)
    if plan["outer"] is not None:
        hosts["outer"] = _draw_outer(sc, fig, plan)
        deco("outer")
    if plan["belt"] and belt_over:
        _draw_belt(sc, fig, plan, 0.22, 3.0)
    if plan["scarf"]:
        hosts["scarf"] = _draw_scarf(sc, fig)
        deco("scarf")
    if not plan["gloves"]:
        _draw_hands(sc, fig, body, look["skin"])
    if plan["bag"]:
        hosts["bag"] = _draw_bag(sc, fig, plan)
        deco("bag")
    if plan["gloves"]:
        _draw_gloves(sc, fig)
    if plan["watch"]:
        _draw_watch(sc, fig)
    _draw_head_acc(sc, fig, plan, hosts)
    deco("hat")
    if plan["umbrella"]:
        _draw_umbrella(sc, fig, plan)


# ------------------------------------------------------------------------------------------- image
def _background(sc: _Scene, plain: bool = False) -> None:
    """Gradient + low-frequency noise; ~30% pale studio backdrops, the rest with a floor and clutter.
    ``plain``: always the pale studio backdrop, nothing else."""
    rng, h, w = sc.rng, sc.h, sc.w
    c1 = np.asarray(_jitter(rng, _GARMENT_COLOURS[int(rng.integers(len(_GARMENT_COLOURS)))], 30), np.float32)
    c2 = np.asarray(_jitter(rng, (200, 200, 200), 55), np.float32)
    if plain or rng.random() < 0.3:  # studio: pale, near uniform
        c1 = c1 * 0.2 + 200
        c2 = c2 * 0.2 + 190
    ang = rng.uniform(0, 2 * math.pi)
    yy = np.linspace(0, 1, h, dtype=np.float32)[:, None]
    xx = np.linspace(0, 1, w, dtype=np.float32)[None, :]
    t = np.clip(0.5 + (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang), 0, 1)[..., None]
    img = c1 * (1 - t) + c2 * t
    low = rng.normal(0, 12, (max(2, h // 40), max(2, w // 40), 3)).astype(np.float32)
    img += cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img, 0, 255).astype(np.uint8)
    if not plain and rng.random() < 0.75:
        floor = int(h * rng.uniform(0.6, 0.85))
        cv2.rectangle(img, (0, floor), (w, h), _jitter(rng, (120, 110, 100), 50), -1)
        cv2.line(img, (0, floor), (w, floor), _jitter(rng, (60, 55, 50), 30), max(1, h // 200))
        overlay = img.copy()
        for _ in range(int(rng.integers(2, 10))):
            x0, y0 = int(rng.integers(-w // 4, w)), int(rng.integers(-h // 4, floor))
            x1, y1 = x0 + int(rng.integers(w // 12, w // 2)), y0 + int(rng.integers(h // 12, h // 2))
            col = _jitter(rng, _GARMENT_COLOURS[int(rng.integers(len(_GARMENT_COLOURS)))], 40)
            cv2.rectangle(overlay if rng.random() < 0.5 else img, (x0, y0), (x1, y1), col,
                          -1 if rng.random() < 0.7 else max(1, h // 150))
        for _ in range(int(rng.integers(0, 4))):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.circle(overlay, c, int(rng.integers(h // 30, h // 8)), _jitter(rng, (100, 140, 90), 60), -1)
        alpha = float(rng.uniform(0.5, 0.9))
        img = cv2.addWeighted(overlay, alpha, img, 1.0 - alpha, 0.0)
        for _ in range(int(rng.integers(1, 7))):
            p = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            q = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p, q, _jitter(rng, (90, 90, 90), 80), int(rng.integers(1, 4)))
    sc.img[:] = img


def _postprocess(sc: _Scene) -> None:
    rng = sc.rng
    img = cv2.GaussianBlur(sc.img, (0, 0), float(rng.uniform(0.5, 0.9))).astype(np.float32)
    h, w = sc.h, sc.w
    g = np.linspace(float(rng.uniform(0.85, 1.0)), float(rng.uniform(1.0, 1.12)), w if rng.random() < 0.5 else h,
                    dtype=np.float32)
    img *= g[None, :, None] if len(g) == w else g[:, None, None]
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * float(rng.uniform(1.5, 5.0))
    sc.img[:] = np.clip(img, 0, 255).astype(np.uint8)


def _look(rng) -> dict:
    style = _pick(rng, ["short", "long", "bun"], [0.4, 0.45, 0.15])
    return {"skin": _jitter(rng, _SKIN[int(rng.integers(len(_SKIN)))], 8),
            "hair": _jitter(rng, _HAIR[int(rng.integers(len(_HAIR)))], 10),
            "hair_style": style, "hair_len": float(rng.uniform(1.6, 2.8))}


def make_image(rng: np.random.Generator, height: int, width: int, force=(),
               preset: str = "realistic") -> tuple[np.ndarray, list[dict]]:
    """Draw one synthetic photo of 1-3 dressed figures (one with ``preset="demo"``, see :data:`PRESETS`).

    Returns ``(image, instances)``: ``image`` is (H, W, 3) uint8 RGB; each instance is
    ``dict(category=int, attributes=tuple[int, ...], mask=uint8 (H, W) 0/1)`` with a non-empty visible
    mask (>= :data:`MIN_VISIBLE_PX` pixels), in drawing order (back to front), of the preset's categories
    only. ``force`` lists categories to put on the front figure where they fit (used to cover rare
    categories). Raises ``ValueError`` for an unknown preset.
    """
    cfg = preset_settings(preset)
    cats = cfg["categories"]
    height, width = int(height), int(width)
    sc = _Scene(rng, height, width, annotate=rng.random() < 0.8, keep=cats)
    _background(sc, plain=cfg["plain_background"])
    landscape = width > height * 1.1
    if cfg["figures"] is None:
        n = int(rng.choice([1, 2, 3], p=[0.3, 0.45, 0.25] if landscape else [0.6, 0.3, 0.1]))
    else:
        n = int(cfg["figures"])

    def plan(force_now):
        p = _plan_outfit(rng, force_now)
        return p if cats is None else _restrict_plan(rng, p, cats)

    plans = [plan(force)]
    left = set(force) - plans[0]["cats"]
    for _ in range(n - 1):
        plans.append(plan(left))
        left -= plans[-1]["cats"]
    # placement: plans[0] is the front figure (drawn last)
    front = plans[0]
    closeup = cfg["closeups"] and not front["full_body"] and not front["headroom"] and rng.random() < 0.2
    if closeup:
        fh = height * float(rng.uniform(1.3, 1.8))
        ftop = height * float(rng.uniform(-0.03, 0.06))
    else:
        fh = height * float(rng.uniform(0.6, 0.72) if front["headroom"] else rng.uniform(0.78, 0.96))
        lo = fh / 8 * (2.3 if front["umbrella"] else (0.5 if front["hat"] else 0.0)) + 0.01 * height
        hi = max(lo, height - fh - 0.01 * height)
        ftop = float(rng.uniform(lo, hi))
    slots = rng.permutation(n)
    figs = []
    for i, plan in enumerate(plans):
        if i == 0:
            hgt, top = fh, ftop
        else:
            hgt = fh * float(rng.uniform(0.45, 0.85))
            feet = height * float(rng.uniform(0.55, 0.95)) if not closeup else height * float(rng.uniform(0.7, 1.2))
            top = feet - hgt
        if n == 1:
            cx = width * float(rng.uniform(0.35, 0.65))
        else:
            cx = width * (slots[i] + 0.5) / n + width / n * float(rng.uniform(-0.35, 0.35))
        figs.append(_Fig(rng, cx, top, hgt, plan["poses"]))
    for fig, plan in reversed(list(zip(figs, plans))):
        _draw_figure(sc, fig, plan, _look(rng))
    instances = sc.finish(MIN_VISIBLE_PX)
    _postprocess(sc)
    return sc.img, instances


# ------------------------------------------------------------------------------------------ dataset
def image_id_for(seed: int, split: str, index: int) -> str:
    """Deterministic Kaggle-style ImageId: 32 hex characters + ".jpg"."""
    h = hashlib.blake2b(f"imaterialist2019-synthetic:{int(seed)}:{split}:{int(index)}".encode(), digest_size=16)
    return h.hexdigest() + ".jpg"


def image_size(rng: np.random.Generator, min_side: int, max_side: int) -> tuple[int, int]:
    """(H, W) with long side in [min_side, max_side]: ~70% portrait, ~22% landscape, ~8% square."""
    long_side = int(rng.integers(min_side, max_side + 1))
    kind = float(rng.random())
    if kind < 0.08:
        return long_side, long_side
    short = max(16, int(round(long_side * float(rng.uniform(0.56, 0.85)))))
    return (long_side, short) if kind < 0.78 else (short, long_side)


def preset_settings(preset: str) -> dict:
    """The settings of a preset name (a key of :data:`PRESETS`); ``ValueError`` for an unknown one."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(f"unknown synthetic preset {preset!r}: choose one of {sorted(PRESETS)}")
    return PRESETS[preset]


def _force_for(counts: np.ndarray, index: int, k: int = 3, categories=None) -> tuple[int, ...]:
    """The ``k`` least-seen of ``categories`` (None = all) so far (ties rotate with ``index``), if seen less
    than a target."""
    target = 1 + index // 12
    pool = range(N_CATEGORIES) if categories is None else categories
    order = sorted(pool, key=lambda c: (int(counts[c]), (c - 7 * index) % N_CATEGORIES))
    return tuple(c for c in order[:k] if counts[c] < target)


def _jpeg_bytes(img_rgb: np.ndarray, quality: int) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality), cv2.IMWRITE_JPEG_OPTIMIZE, 0, cv2.IMWRITE_JPEG_PROGRESSIVE, 0]
    if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR), params)
    if not ok:
        raise RuntimeError("cv2.imencode failed to write a JPEG")
    return buf.tobytes()


def _write_annotations(out: Path, rows: dict, params: dict, edition: str, coco: bool) -> None:
    """train.csv, test_ground_truth.csv and sample_submission.csv in the ``edition``'s layout (and, with
    ``coco``, the instance JSONs) from the rows of each split."""
    header = "ImageId,EncodedPixels,Height,Width,ClassId"
    for split, name in (("train", "train.csv"), ("test", "test_ground_truth.csv")):
        ordered = sorted(rows[split], key=lambda r: r[0])  # stable: instance order kept within an image
        if edition == "2020":
            lio.atomic_write_text(out / name, _csv_text(header + ",AttributesIds", map(_row_2020, ordered)))
        else:
            lio.atomic_write_text(out / name, _csv_text(header, ordered))
    if coco:
        for split in ("train", "test"):
            lio.atomic_write_json(out / f"instances_{split}.json", coco_json(sorted(rows[split], key=lambda r: r[0])),
                                  indent=None)
    test_ids = sorted(image_id_for(params["seed"], "test", i) for i in range(params["n_test"]))
    if edition == "2020":
        lio.atomic_write_text(out / "sample_submission.csv", _csv_text("ImageId,EncodedPixels,ClassId,AttributesIds",
                                                                       [(t, "1 1", "0", "") for t in test_ids]))
    else:
        lio.atomic_write_text(out / "sample_submission.csv",
                              _csv_text("ImageId,EncodedPixels,ClassId", [(t, "1 1", "0") for t in test_ids]))


def _csv_text(header: str, rows) -> str:
    return header + "\n" + "".join(",".join(str(v) for v in r) + "\n" for r in rows)


def _check_params(n_train, n_test, seed, min_side, max_side, jpeg_quality, preset) -> dict:
    preset_settings(preset)
    params = {"n_train": n_train, "n_test": n_test, "seed": seed, "min_side": min_side, "max_side": max_side,
              "jpeg_quality": jpeg_quality}
    for k, v in params.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{k} must be an integer, got {v!r}")
    params = {k: int(v) for k, v in params.items()}
    if params["n_train"] < 1 or params["n_test"] < 0:
        raise ValueError(f"need n_train >= 1 and n_test >= 0, got {n_train}, {n_test}")
    if params["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 32 <= params["min_side"] <= params["max_side"]:
        raise ValueError(f"need 32 <= min_side <= max_side, got min_side={min_side}, max_side={max_side}")
    if not 1 <= params["jpeg_quality"] <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    return dict(params, preset=preset)


def _existing(out: Path, params: dict) -> dict | None:
    """The marker's summary if ``out`` already holds this exact dataset; raises if ``out`` is not ours."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return None
    marker = out / MARKER
    if not marker.is_file():
        raise ValueError(f"refusing to write the synthetic dataset into {out}: it is not empty and has no "
                         f"{MARKER} marker (it may be a real dataset); choose an empty or new directory")
    try:
        meta = lio.read_json(marker)
    except ValueError as e:
        raise ValueError(f"refusing to overwrite {out}: {e}") from None
    if not isinstance(meta, dict) or meta.get("generator") != "lib.synthetic":
        raise ValueError(f"refusing to overwrite {out}: {marker} was not written by lib.synthetic")
    if (meta.get("complete") and meta.get("version") == GENERATOR_VERSION and meta.get("params") == params
            and all((out / name).exists() for name in OUTPUTS)
            and len(list((out / "train").glob("*.jpg"))) == params["n_train"]
            and len(list((out / "test").glob("*.jpg"))) == params["n_test"]):
        return meta
    for name in OUTPUTS:
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()
    return None


def generate_dataset(out_dir, n_train: int = 48, n_test: int = 12, seed: int = 0, min_side: int = 256,
                     max_side: int = 768, jpeg_quality: int = 90, progress: bool = True,
                     preset: str = "realistic", coco: bool = False, edition: str = "2019") -> dict:
    """Write the synthetic dataset (layout in the module docstring) into ``out_dir``; return its summary.

    ``preset`` ("realistic" or "demo", see :data:`PRESETS`) is recorded with the other parameters in the
    marker; an unknown preset raises ``ValueError``. ``coco``: also write the same annotations in COCO
    format (``instances_train.json`` / ``instances_test.json``, :func:`coco_json`), as Fashionpedia ships them.
    ``edition="2020"``: the CSVs, ``label_descriptions.json`` and ``sample_submission.csv`` in the 2020
    edition's layout (:func:`edition_2020_labels`: the 2019 attributes under sparse ids, in their own
    AttributesIds column).

    ``out_dir`` is created if needed. A non-empty directory without a ``synthetic.json`` marker is
    refused (``ValueError``) so a real dataset is never overwritten. If the marker records the same
    parameters (and the files are there) nothing is regenerated; with different parameters the
    previous synthetic files are removed and the set is rebuilt. The summary is the marker's content
    plus ``out_dir`` and ``reused`` (True when nothing was regenerated).
    """
    params = _check_params(n_train, n_test, seed, min_side, max_side, jpeg_quality, preset)
    if coco:  # only then in the marker, so the sets written without it stay as they were
        params["coco"] = True
    if edition not in ("2019", "2020"):
        raise ValueError(f"edition must be '2019' or '2020', got {edition!r}")
    if edition == "2020":
        params["edition"] = edition
    cfg = preset_settings(preset)
    out = Path(out_dir)
    meta = _existing(out, params)
    if meta is not None:
        return dict(meta, out_dir=str(out), reused=True)
    out.mkdir(parents=True, exist_ok=True)
    base = {"generator": "lib.synthetic", "version": GENERATOR_VERSION, "params": params}
    lio.atomic_write_json(out / MARKER, dict(base, complete=False))
    labels = label_descriptions() if edition == "2019" else edition_2020_labels()
    lio.atomic_write_text(out / "label_descriptions.json", lio.to_json(labels, indent=2) + "\n")
    rows = {"train": [], "test": []}
    counts = {"train": np.zeros(N_CATEGORIES, np.int64), "test": np.zeros(N_CATEGORIES, np.int64)}
    images = {"train": np.zeros(N_CATEGORIES, np.int64), "test": np.zeros(N_CATEGORIES, np.int64)}
    sizes = {"train": [], "test": []}
    bar = tqdm(total=params["n_train"] + params["n_test"], desc="synthetic images", unit="img", disable=not progress)
    for split in ("train", "test"):
        (out / split).mkdir(exist_ok=True)
        for i in range(params[f"n_{split}"]):
            rng = np.random.default_rng([params["seed"], _SPLIT_CODE[split], i])
            h, w = image_size(rng, params["min_side"], params["max_side"])
            img, inst = make_image(rng, h, w, force=_force_for(images[split], i, cfg["force"], cfg["categories"]),
                                   preset=preset)
            image_id = image_id_for(params["seed"], split, i)
            lio.atomic_write_bytes(out / split / image_id, _jpeg_bytes(img, params["jpeg_quality"]))
            seen = set()
            for d in inst:
                rows[split].append((image_id, lrle.encode(d["mask"]), h, w,
                                    format_class_id(d["category"], d["attributes"])))
                counts[split][d["category"]] += 1
                seen.add(d["category"])
            for c in seen:
                images[split][c] += 1
            sizes[split].append((h, w))
            bar.update(1)
    bar.close()
    _write_annotations(out, rows, params, edition, coco)

    def size_summary(sz):
        if not sz:
            return {"images": 0}
        hs, ws = np.array(sz).T
        return {"images": len(sz), "portrait": int((hs > ws).sum()), "landscape": int((hs < ws).sum()),
                "square": int((hs == ws).sum()), "min_height": int(hs.min()), "max_height": int(hs.max()),
                "min_width": int(ws.min()), "max_width": int(ws.max())}

    meta = dict(base, complete=True,
                counts={"train_images": params["n_train"], "test_images": params["n_test"],
                        "train_rows": len(rows["train"]), "test_rows": len(rows["test"])},
                sizes={s: size_summary(sizes[s]) for s in ("train", "test")},
                category_counts={s: {str(c): int(counts[s][c]) for c in range(N_CATEGORIES)} for s in counts},
                category_images={s: {str(c): int(images[s][c]) for c in range(N_CATEGORIES)} for s in images})
    lio.atomic_write_json(out / MARKER, meta)
    return dict(meta, out_dir=str(out), reused=False)


def coco_json(rows) -> dict:
    """Kaggle-format rows ``(ImageId, EncodedPixels, Height, Width, ClassId)`` as a COCO instance file in
    Fashionpedia's form: ``images``, ``annotations`` (``segmentation`` as compressed RLE, or - every third
    one - as uncompressed RLE, so readers meet both; ``attribute_ids``, ``area``, ``bbox``, ``iscrowd``),
    ``categories`` and ``attributes`` of the competition's label file (ids as there)."""
    from pycocotools import mask as mask_utils

    from .boxes import mask_bbox
    from .labels import parse_class_id

    labels = label_descriptions()
    images, annotations, ids = [], [], {}
    for image_id, enc, h, w, class_id in rows:
        if image_id not in ids:
            ids[image_id] = len(ids) + 1
            images.append({"id": ids[image_id], "file_name": image_id, "height": int(h), "width": int(w)})
        m = lrle.decode(enc, (int(h), int(w)))
        cat, attrs = parse_class_id(class_id)
        if len(annotations) % 3 == 2:  # uncompressed: run lengths down the columns, background first
            flat = m.flatten(order="F")
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            seg = {"size": [int(h), int(w)], "counts": np.diff(np.concatenate([[0], edges])).tolist()}
        else:
            rle = mask_utils.encode(np.asfortranarray(m))
            seg = {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
        x1, y1, x2, y2 = mask_bbox(m)
        annotations.append({"id": len(annotations) + 1, "image_id": ids[image_id], "category_id": cat,
                            "attribute_ids": list(attrs), "segmentation": seg, "area": int(m.sum()),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    return {"info": dict(labels["info"]), "images": images, "annotations": annotations,
            "categories": labels["categories"], "attributes": labels["attributes"]}


def _attribute_id_2020(attribute: int) -> int:
    return 3 * attribute + 2  # sparse, as the 2020 edition's ids are


def edition_2020_labels() -> dict:
    """A label file in the 2020 edition's form for the synthetic set: the 46 categories and the 2019 attributes
    under sparse ids (:func:`_attribute_id_2020`; the real file has 294 attributes, ids not 0..N-1)."""
    d = label_descriptions()
    return {"info": dict(d["info"], year=2020),
            "categories": d["categories"],
            "attributes": [dict(a, id=_attribute_id_2020(a["id"])) for a in d["attributes"]]}


def _row_2020(row) -> tuple:
    """A 2019 train.csv row as the 2020 edition writes it: ClassId the category, attribute ids (sparse) quoted."""
    from .labels import parse_class_id

    image_id, enc, h, w, class_id = row
    cat, attrs = parse_class_id(class_id)
    ids = ",".join(str(_attribute_id_2020(a)) for a in attrs)
    return image_id, enc, h, w, cat, f'"{ids}"' if "," in ids else ids
