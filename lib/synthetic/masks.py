"""``_Mask``: a (H, W) uint8 0/1 mask drawn with cv2 at sub-pixel precision that keeps the box of what was
drawn into it."""
from __future__ import annotations

import math

import cv2
import numpy as np

_SHIFT = 3  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


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
