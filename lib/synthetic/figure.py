"""``_Fig``: a standing, front-facing person in head units; ``_draw_body`` and ``_draw_hands`` paint its
skin and hair."""
from __future__ import annotations

import math

import numpy as np

from .masks import _Mask
from .scene import _Item, _Scene
from .textures import _plain, _scaled


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
