"""Drawing decorations (applique ... tassel) as parts of their host item: ``_decorate``."""
from __future__ import annotations

import math

import numpy as np

from .figure import _Fig
from .names import _CATEGORY, _CATEGORY_NAME
from .outfits import _pick
from .scene import _Item, _Scene
from .textures import _GARMENT_COLOURS, _METAL, _jitter, _plain, _variant


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
