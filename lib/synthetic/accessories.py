"""Drawing a plan's accessories: legwear, shoes, tie, belt, scarf, bag, gloves, watch, glasses, hat,
headband, umbrella."""
from __future__ import annotations

import math

import numpy as np

from .figure import _Fig
from .outfits import _pick
from .scene import _Item, _Scene
from .textures import _METAL, _jitter, _plain, _scaled, _style


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
