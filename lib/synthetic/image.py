"""One synthetic photo, :func:`make_image`: the background, the dressed figures back to front
(``_draw_figure``), then blur, uneven light and noise."""
from __future__ import annotations

import math

import cv2
import numpy as np

from .accessories import (_draw_bag, _draw_belt, _draw_gloves, _draw_head_acc, _draw_legwear, _draw_scarf, _draw_shoes,
                          _draw_tie, _draw_umbrella, _draw_watch)
from .decorations import _decorate
from .figure import _draw_body, _draw_hands, _Fig
from .garments import _draw_bottom, _draw_dress, _draw_jumpsuit, _draw_outer, _draw_top
from .outfits import _pick, _plan_outfit, _restrict_plan
from .presets import preset_settings
from .scene import MIN_VISIBLE_PX, _Scene
from .textures import _GARMENT_COLOURS, _HAIR, _SKIN, _jitter, _scaled, _style


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
