"""Drawing a plan's garments (bottoms, tops, dresses, jumpsuits, outer layers) with their parts
(sleeves, necklines, collars, lapels, hoods, pockets, epaulettes, zippers, buttons)."""
from __future__ import annotations

import numpy as np

from .figure import _Fig
from .masks import _Mask
from .names import _LENGTH_Y
from .outfits import _pick
from .scene import _Item, _Scene
from .shapes import _neck_curve, _pants_outline, _skirt_outline, _sleeve, _upper_outline
from .textures import _METAL, _plain, _scaled, _style, _variant


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
