"""``_Scene``: the canvas, the topmost occlusion group of each pixel and the instances drawn so far;
``_Scene.finish`` gives their visible masks."""
from __future__ import annotations

import cv2
import numpy as np

from ..labels import ATTRIBUTE_CATEGORIES
from .masks import _Mask
from .names import attribute_id
from .textures import _texture

MIN_VISIBLE_PX = 20  # instances with fewer visible pixels (after occlusion) are dropped


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
