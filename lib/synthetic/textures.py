"""Colour palettes and garment styles: ``_style`` picks colours and a 'textile pattern' attribute, and
``_texture`` paints a style (patterns are functions of image coordinates, so the pieces of a garment
line up)."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from .figure import _Fig

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
