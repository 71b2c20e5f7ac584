"""Reading COCO-format instance JSON (Fashionpedia's ``instances_attributes_*2020.json``) as a source for 01.

A file holds ``images`` (``id``, ``file_name``, ``height``, ``width``), ``annotations`` (``id``, ``image_id``,
``category_id``, ``segmentation``, optional ``attribute_ids``), ``categories`` and, in Fashionpedia,
``attributes``. :func:`read_coco` indexes it by image and maps its vocabularies onto the prepared set's
label set **by name** (ids differ between releases: the public sample uses a 48-category pre-release list):
categories by their name, attributes by theirs. :func:`annotation_rows` rasterises one image's annotations at
its size - polygons, uncompressed RLE (``counts`` a list) and compressed RLE (``counts`` a string) - into
:class:`lib.kaggle_data.Row` records (Kaggle RLE, ``row`` = the annotation id), so the rest of 01 treats them
as train.csv rows.

A file whose top level or vocabularies (``categories``, ``attributes``) are unusable is a ``ValueError``
naming it. Any other bad entry becomes a :class:`lib.kaggle_data.Problem` (file = the JSON), never a crash:

- an image entry (``row`` 0, ``image_id`` its file_name, or ``images[k]``) that is not an object, has no
  file_name string, no int or string id, a height or width that is not an integer in 1-20000, or repeats
  an earlier entry's id or file_name;
- an annotation (``row`` its id; ``row`` 0 and ``annotations[k]`` for one that is not an object or has no
  integer id) whose id an earlier one has, on an image the file does not list (or whose entry was skipped),
  with a category id that is not in ``categories``, attribute ids that are not a list of the file's attribute
  ids, no segmentation (a bbox-only annotation), or a segmentation :func:`rasterize` refuses; an empty mask.

Annotations of a category listed in the file but not one of the label set's (by name) are skipped, reported
once per category (``row`` 0, no image: the only problems with neither, :meth:`CocoSource.entry_problems`).
Attribute ids without a namesake in the label set are dropped from a row's ``attributes`` (meta.json records
the file's whole attribute vocabulary, :meth:`CocoSource.summary`).

:func:`rasterize` checks everything before pycocotools sees it (pycocotools segfaults or allocates without
bound on NaN/Infinity or huge coordinates, malformed RLE): polygons are lists of at least 3 finite (x, y)
number pairs; one reaching more than an image side beyond the image is clipped to that margin first (an
in-margin polygon reaches pycocotools untouched, so its mask is pycocotools' exactly), and the outline
pycocotools would trace is bounded (:data:`MAX_OUTLINE`). RLE is decoded here, not by pycocotools: ``size``
must be the image's, counts non-negative integers summing to height x width, a compressed string well formed.
"""
from __future__ import annotations

import json
import reprlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import rle as lrle
from .kaggle_data import MAX_SIDE, Problem, Row
from .labels import LabelSet, format_class_id

__all__ = ["CocoSource", "read_coco", "annotation_rows", "rasterize", "MAX_OUTLINE"]

# The longest polygon outline :func:`rasterize` passes to pycocotools, in image half-perimeters (height + width)
# summed over an annotation's polygons (pycocotools holds ~24 bytes per 1/5 pixel of outline).
MAX_OUTLINE = 64
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother = 3, 40, 40


def _is_int(v) -> bool:
    return type(v) is int  # JSON integers; not bool, not float


def _short(v) -> str:
    """A bounded repr of a JSON value for a message (never recurses deeply)."""
    return _SHORT.repr(v)


@dataclass
class CocoSource:
    """An indexed COCO file: per image (by ``file_name``) its size and annotations, and the vocabulary maps."""

    path: Path
    image_dir: Path
    images: dict[str, tuple[int, int]]  # file_name -> (height, width)
    annotations: dict[str, list[dict]]  # file_name -> its annotations (objects with an integer id)
    category_map: dict[int, int]  # COCO category id -> label-set category
    attribute_map: dict[int, int]  # COCO attribute id -> label-set attribute (names in both)
    attribute_names: dict[int, str]  # the file's attribute vocabulary
    unmapped_categories: dict[int, str]  # COCO categories with no namesake in the label set
    problems: list[Problem] = field(default_factory=list)
    unmapped_annotations: dict[int, int] = field(default_factory=dict)  # unmapped category id -> its annotations

    def for_image(self, file_name: str) -> CocoSource:
        """This source restricted to one image (what a worker process is sent)."""
        return replace(self, images={file_name: self.images[file_name]},
                       annotations={file_name: self.annotations.get(file_name, [])}, problems=[])

    def entry_problems(self) -> list[Problem]:
        """The problems of image and annotation entries: all but the per-category notes on unmapped
        categories (the only ones with neither a row nor an image)."""
        return [q for q in self.problems if q.row or q.image_id]

    def summary(self) -> dict:
        """What meta.json records of this source."""
        return {"kind": "coco", "json": str(self.path), "image_dir": str(self.image_dir),
                "num_images": len(self.images), "num_annotations": sum(map(len, self.annotations.values())),
                "unmapped_categories": {str(k): v for k, v in sorted(self.unmapped_categories.items())},
                "attribute_vocabulary": {"size": len(self.attribute_names), "mapped": len(self.attribute_map),
                                         "names": {str(k): v for k, v in sorted(self.attribute_names.items())}}}


def _vocabulary(path: Path, entries, key: str) -> dict[int, str]:
    """``{id: name}`` of a ``categories`` / ``attributes`` list; ``ValueError`` for a malformed one."""
    if not isinstance(entries, list):
        raise ValueError(f"{path}: '{key}' is not a list")
    out: dict[int, str] = {}
    for k, e in enumerate(entries):
        if not (isinstance(e, dict) and _is_int(e.get("id")) and isinstance(e.get("name"), str)):
            raise ValueError(f"{path}: {key}[{k}] is not an object with an integer 'id' and a string 'name': "
                             f"{_short(e)}")
        if out.setdefault(e["id"], e["name"]) != e["name"]:
            raise ValueError(f"{path}: {key} id {e['id']} is listed twice, as {out[e['id']]!r} and {e['name']!r}")
    return out


def _index_images(path: Path, entries: list) -> tuple[dict, dict, dict, list[Problem]]:
    """``(images {file_name: (h, w)}, by_id {id: file_name}, skipped {id: reason}, problems)``."""
    images, by_id, first_id, skipped, problems = {}, {}, {}, {}, []
    for k, im in enumerate(entries):
        if not isinstance(im, dict):
            problems.append(Problem(str(path), 0, f"images[{k}]", f"image entry is not an object: {_short(im)}; "
                                    f"skipped"))
            continue
        name, iid, h, w = im.get("file_name"), im.get("id"), im.get("height"), im.get("width")
        label = name if isinstance(name, str) and name else f"images[{k}]"
        hashable = _is_int(iid) or isinstance(iid, str)
        if not (isinstance(name, str) and name):
            reason = f"file_name {_short(name)} is not a non-empty string"
        elif not hashable:
            reason = f"id {_short(iid)} is not an integer or a string"
        elif not (_is_int(h) and _is_int(w) and 0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            reason = f"height/width {_short(h)}x{_short(w)} are not integers in 1-{MAX_SIDE}"
        elif iid in by_id or iid in skipped:
            reason = f"id {iid!r} is listed twice"
            hashable = False  # its annotations go with the first entry
        elif name in images:
            reason = f"file_name listed twice (ids {first_id[name]!r} and {iid!r})"
        else:
            images[name], by_id[iid], first_id[name] = (h, w), name, iid
            continue
        problems.append(Problem(str(path), 0, label, f"image entry: {reason}; image and its annotations skipped"))
        if hashable:
            skipped[iid] = reason
    return images, by_id, skipped, problems


def read_coco(json_path: str | Path, image_dir: str | Path, labels: LabelSet) -> CocoSource:
    """Index ``json_path`` (images under ``image_dir``) against ``labels``. ``ValueError`` naming the file
    for one that is not a COCO instance file or whose ``categories`` / ``attributes`` are malformed (entries
    without an integer id and a string name, an id listed twice with two names); bad image and annotation
    entries are problems (module docstring)."""
    path = Path(json_path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"{path}: cannot read COCO JSON ({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise ValueError(f"{path}: not a COCO instance file (needs lists 'images', 'annotations', 'categories')")
    cat_by_name = {n: i for i, n in enumerate(labels.category_names)}
    attr_by_name = {a["name"]: i for i, a in enumerate(labels.attributes)}
    cats = _vocabulary(path, obj["categories"], "categories")
    category_map = {i: cat_by_name[n] for i, n in cats.items() if n in cat_by_name}
    attribute_names = _vocabulary(path, [] if obj.get("attributes") is None else obj["attributes"], "attributes")
    attribute_map = {i: attr_by_name[n] for i, n in attribute_names.items() if n in attr_by_name}
    images, by_id, skipped, image_problems = _index_images(path, obj["images"])
    problems = list(image_problems)
    unmapped_use: dict[int, int] = {}
    annotations: dict[str, list[dict]] = {}
    seen: set[int] = set()
    for k, a in enumerate(obj["annotations"]):
        if not (isinstance(a, dict) and _is_int(a.get("id"))):
            what = "is not an object" if not isinstance(a, dict) else f"has no integer id ({_short(a.get('id'))})"
            problems.append(Problem(str(path), 0, f"annotations[{k}]", f"annotation {what}; skipped"))
            continue
        if a["id"] in seen:
            problems.append(Problem(str(path), a["id"], f"annotations[{k}]", "annotation id listed twice; the "
                                    "second is skipped"))
            continue
        seen.add(a["id"])
        iid = a.get("image_id")
        name = by_id.get(iid) if _is_int(iid) or isinstance(iid, str) else None
        if name is None:
            why = (f"whose entry is skipped ({skipped[iid]})" if (_is_int(iid) or isinstance(iid, str))
                   and iid in skipped else "the file does not list")
            problems.append(Problem(str(path), a["id"], str(iid) if isinstance(iid, str) and iid else _short(iid),
                                    f"annotation on an image {why}; skipped"))
            continue
        annotations.setdefault(name, []).append(a)
        cid = a.get("category_id")
        if _is_int(cid) and cid in cats and cid not in category_map:
            unmapped_use[cid] = unmapped_use.get(cid, 0) + 1
    # a category of the file that none of the 46 matches is a problem only when annotations use it
    problems = [Problem(str(path), 0, "", f"category {cats[i]!r} (id {i}) is not one of the {len(cat_by_name)} "
                                          f"categories; {'its annotation is' if k == 1 else f'its {k} annotations are'} skipped")
                for i, k in sorted(unmapped_use.items())] + problems
    return CocoSource(path, Path(image_dir), images, annotations, category_map, attribute_map, attribute_names,
                      {i: n for i, n in cats.items() if i not in category_map}, problems, unmapped_use)


def _clip_polygon(xy: np.ndarray, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    """A (k, 2) polygon clipped to the box ``[x0, x1] x [y0, y1]`` (Sutherland-Hodgman, one vectorised pass
    per side; ``xy`` itself when it lies inside). Finite input stays finite: intersections are convex
    combinations, their parameter computed on halved coordinates (no overflow near the float64 limit)."""
    clipped = False
    for axis, bound, keep_below in ((0, x0, False), (0, x1, True), (1, y0, False), (1, y1, True)):
        if not len(xy):
            break
        a = xy[:, axis]
        inside = a <= bound if keep_below else a >= bound
        if inside.all():
            continue
        nxt = np.roll(xy, -1, axis=0)
        cross = inside != np.roll(inside, -1)
        with np.errstate(all="ignore"):  # edges that do not cross: their (unused) t may be nan or inf
            t = ((bound / 2 - a / 2) / (nxt[:, axis] / 2 - a / 2))[:, None]
            hit = (1 - t) * xy + t * nxt
        hit[:, axis] = bound
        # per edge i: its start vertex if inside, then its crossing point if it crosses
        xy = np.stack([xy, hit], axis=1)[np.stack([inside, cross], axis=1)]
        clipped = True
    return np.clip(xy, (x0, y0), (x1, y1)) if clipped else xy  # an ulp of rounding in the other coordinate


def _outline(xy: np.ndarray) -> int:
    """How many boundary points pycocotools' ``rleFrPoly`` allocates for a (k, 2) polygon (1/5 pixel steps)."""
    p = np.trunc(5 * xy + 0.5)  # its (int)(scale * x + .5)
    return int(np.abs(p - np.roll(p, -1, axis=0)).max(axis=1).sum()) + len(p)


def _polygons(segmentation: list, height: int, width: int) -> list[np.ndarray]:
    """Validated, clipped (k, 2) float64 polygons of a polygon segmentation (see :func:`rasterize`)."""
    pad = max(height, width)
    polys, outline = [], 0
    for p in segmentation:
        if not (isinstance(p, list) and all(type(v) is float or type(v) is int for v in p)):
            raise ValueError(f"polygon is not a list of numbers: {_short(p)}")
        if len(p) < 6 or len(p) % 2:
            raise ValueError(f"polygon with fewer than 3 points (or an odd number of coordinates): {len(p)} numbers")
        try:
            xy = np.array(p, dtype=np.float64).reshape(-1, 2)
        except OverflowError:  # an integer beyond float64
            xy = np.array([np.inf])
        if not np.isfinite(xy).all():
            raise ValueError("polygon with non-finite coordinates (NaN, Infinity or beyond float64)")
        xy = _clip_polygon(xy, -pad, -pad, width + pad, height + pad)
        if not np.isfinite(xy).all():  # only for coordinates at the very float64 limit
            raise ValueError("polygon coordinates too large to clip")
        if len(xy) >= 3:
            outline += _outline(xy)
            polys.append(xy)
    limit = 5 * MAX_OUTLINE * (height + width) + 10_000
    if outline > limit:
        raise ValueError(f"polygon outline too long ({outline // 5} px for a {height}x{width} image; at most "
                         f"{limit // 5})")
    return polys


def _compressed_counts(s: bytes) -> np.ndarray:
    """The counts of a pycocotools compressed RLE string (its ``rleFrString``: 5-bit groups, chars 48-111,
    0x20 = more, 0x10 on a number's last char = negative, counts from the third on relative to the one two
    before), as int64; ``ValueError`` for a malformed string."""
    b = np.frombuffer(s, np.uint8).astype(np.int64) - 48
    if not b.size:
        return b
    if ((b < 0) | (b > 63)).any():
        raise ValueError("compressed RLE counts hold characters outside '0'-'o'")
    more = (b & 0x20) != 0
    if more[-1]:
        raise ValueError("compressed RLE counts end inside a number")
    ends = np.flatnonzero(~more)
    starts = np.concatenate([[0], ends[:-1] + 1])
    lens = ends - starts + 1
    if lens.max() > 6:  # 30 bits: any count of a MAX_SIDE x MAX_SIDE image
        raise ValueError("compressed RLE count out of range")
    shift = 5 * (np.arange(b.size) - np.repeat(starts, lens))
    x = np.add.reduceat((b & 0x1F) << shift, starts)
    neg = (b[ends] & 0x10) != 0
    x[neg] -= np.left_shift(1, 5 * lens[neg])
    x[1::2] = np.cumsum(x[1::2])
    x[2::2] = np.cumsum(x[2::2])
    return x


def _rle_mask(segmentation: dict, height: int, width: int) -> np.ndarray:
    """A validated COCO RLE (list or string counts) decoded to a (height, width) uint8 mask."""
    size, counts = segmentation["size"], segmentation["counts"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size)):
        raise ValueError(f"RLE size {_short(size)} is not [height, width]")
    if size != [height, width]:
        raise ValueError(f"RLE size {size} differs from the image's {[height, width]}")
    if isinstance(counts, list):  # uncompressed
        if not all(_is_int(c) for c in counts):
            raise ValueError(f"RLE counts are not all integers: {_short(counts)}")
        try:
            runs = np.array(counts, dtype=np.int64)
        except OverflowError:
            raise ValueError("RLE count out of range") from None
    elif isinstance(counts, (str, bytes)):
        try:
            runs = _compressed_counts(counts.encode("ascii") if isinstance(counts, str) else counts)
        except UnicodeEncodeError:
            raise ValueError("compressed RLE counts are not ASCII") from None
    else:
        raise ValueError(f"RLE counts are neither a list nor a string: {_short(counts)}")
    n = height * width
    if ((runs < 0) | (runs > n)).any():
        raise ValueError(f"RLE counts out of range 0-{n} (negative or past the image)")
    if int(runs.sum()) != n:
        raise ValueError(f"RLE counts sum to {int(runs.sum())}, not {height}x{width} = {n}")
    values = (np.arange(len(runs)) % 2).astype(np.uint8)  # background first, column-major
    return np.ascontiguousarray(np.repeat(values, runs).reshape(width, height).T)


def rasterize(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, or RLE with list or string counts) as a (height, width) uint8 mask.

    ``ValueError`` naming the problem, before pycocotools sees anything, for: an image size outside 1-20000;
    no segmentation (None, missing or ``[]``); a polygon that is not a list of numbers, has fewer than 3 points
    or an odd count, or a non-finite coordinate; outlines longer than :data:`MAX_OUTLINE` half-perimeters; an
    RLE whose ``size`` is not the image's, whose counts are not non-negative integers summing to height x
    width, or whose compressed string is malformed; anything else. Polygons reaching more than
    ``max(height, width)`` beyond the image are clipped to that margin (within a pixel of pycocotools' mask of
    the unclipped polygon along the clipped edges); others are rasterised by pycocotools as given. A polygon
    clipped away adds nothing (all of them: an empty mask).
    """
    if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE):
        raise ValueError(f"image size {height}x{width} is not in 1-{MAX_SIDE}")
    if segmentation is None or (isinstance(segmentation, list) and not segmentation):
        raise ValueError("no segmentation (a bbox-only annotation?)")
    if isinstance(segmentation, list):
        from pycocotools import mask as mask_utils

        polys = _polygons(segmentation, height, width)
        if not polys:
            return np.zeros((height, width), np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects([p.ravel().tolist() for p in polys], height, width))
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)
    if isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        return _rle_mask(segmentation, height, width)
    raise ValueError(f"segmentation is neither polygons nor RLE: {_short(segmentation)}")


def annotation_rows(source: CocoSource, file_name: str, num_attributes: int) -> tuple[list[Row], list[Problem]]:
    """One image's annotations as validated rows at its size (see the module docstring for what is skipped)."""
    h, w = source.images[file_name]
    rows, problems = [], []
    for a in source.annotations.get(file_name, []):
        ann_id = a["id"]  # an int (read_coco keeps no other)

        def bad(reason):
            problems.append(Problem(str(source.path), ann_id, file_name, f"{reason}; annotation skipped"))

        cid = a.get("category_id")
        if not (_is_int(cid) and cid in source.category_map):
            if not (_is_int(cid) and cid in source.unmapped_categories):  # those: reported once per category
                bad(f"category id {_short(cid)} is not in the file's categories")
            continue
        ids = a.get("attribute_ids")
        ids = [] if ids is None else ids
        if not (isinstance(ids, list) and all(_is_int(i) for i in ids)):
            bad(f"attribute_ids {_short(ids)} is not a list of integers")
            continue
        unknown = [i for i in ids if i not in source.attribute_names]
        if unknown:
            bad(f"attribute ids {_short(unknown)} are not in the file's attributes")
            continue
        try:
            m = rasterize(a.get("segmentation"), h, w)
        except ValueError as e:
            bad(str(e))
            continue
        if not m.any():
            bad("empty mask")
            continue
        cat = source.category_map[cid]
        attrs = tuple(sorted({source.attribute_map[i] for i in ids if i in source.attribute_map
                              and source.attribute_map[i] < num_attributes}))
        rows.append(Row(ann_id, file_name, lrle.encode(m), h, w, cat, attrs, format_class_id(cat, attrs)))
    return rows, problems
