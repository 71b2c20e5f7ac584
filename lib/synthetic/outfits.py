"""What one figure wears: ``_plan_outfit`` draws a plan from the generator (forced categories honoured
where they fit) and ``_restrict_plan`` keeps a preset's categories."""
from __future__ import annotations

from .names import _CATEGORY, _KNEE_OR_SHORTER, _LENGTH_Y


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
