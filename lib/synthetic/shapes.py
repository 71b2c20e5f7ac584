"""Garment outlines on a figure, in head units: necklines, upper bodies, skirts, pants; ``_sleeve`` as a
mask."""
from __future__ import annotations

import math

import numpy as np

from .figure import _Fig
from .masks import _Mask
from .scene import _Scene


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
