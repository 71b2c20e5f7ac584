"""Reading COCO-format instance JSON (Fashionpedia's ``instances_attributes_*2020.json``) as a source for 01.

A file holds ``images`` (``id``, ``file_name``, ``height``, ``width``), ``annotations`` (``image_id``,
``category_id``, ``segmentation``, optional ``attribute_ids``), ``categories`` and, in Fashionpedia,
``attributes``. :func:`read_coco` indexes it by image and maps its vocabularies onto the prepared set's
label set **by name** (ids differ between releases: the public sample uses a 48-category pre-release list):
categories by their name, attributes by theirs. :func:`annotation_rows` rasterises one image's annotations at
its size - polygons, uncompressed RLE (``counts`` a list) and compressed RLE (``counts`` a string) - into
:class:`lib.kaggle_data.Row` records (Kaggle RLE, ``row`` = the annotation id), so the rest of 01 treats them
as train.csv rows.

Bad input becomes a :class:`lib.kaggle_data.Problem` (file = the JSON, row = the annotation id), never a
crash: an annotation on an image the file does not list, a category that is not one of the label set's
(by name; reported once per category too), an attribute id outside the file's vocabulary, a polygon with
fewer than 3 points, an RLE whose size is not the image's, an empty mask. Attributes without a namesake in
the label set are dropped from ``attributes`` (the ids stay in ``source_attributes``).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import rle as lrle
from .kaggle_data import Problem, Row
from .labels import LabelSet, format_class_id

__all__ = ["CocoSource", "read_coco", "annotation_rows", "rasterize"]


@dataclass
class CocoSource:
    """An indexed COCO file: per image (by ``file_name``) its size and annotations, and the vocabulary maps."""

    path: Path
    image_dir: Path
    images: dict[str, tuple[int, int]]  # file_name -> (height, width)
    annotations: dict[str, list[dict]]  # file_name -> its annotations
    category_map: dict[int, int]  # COCO category id -> label-set category
    attribute_map: dict[int, int]  # COCO attribute id -> label-set attribute (names in both)
    attribute_names: dict[int, str]  # the file's attribute vocabulary
    unmapped_categories: dict[int, str]  # COCO categories with no namesake in the label set
    problems: list[Problem] = field(default_factory=list)

    def for_image(self, file_name: str) -> CocoSource:
        """This source restricted to one image (what a worker process is sent)."""
        return replace(self, images={file_name: self.images[file_name]},
                       annotations={file_name: self.annotations.get(file_name, [])}, problems=[])

    def summary(self) -> dict:
        """What meta.json records of this source."""
        return {"kind": "coco", "json": str(self.path), "image_dir": str(self.image_dir),
                "num_images": len(self.images), "num_annotations": sum(map(len, self.annotations.values())),
                "unmapped_categories": {str(k): v for k, v in sorted(self.unmapped_categories.items())},
                "attribute_vocabulary": {"size": len(self.attribute_names), "mapped": len(self.attribute_map),
                                         "names": {str(k): v for k, v in sorted(self.attribute_names.items())}}}


def read_coco(json_path: str | Path, image_dir: str | Path, labels: LabelSet) -> CocoSource:
    """Index ``json_path`` (images under ``image_dir``) against ``labels``. ``ValueError`` naming the file
    for one that is not a COCO instance file."""
    path = Path(json_path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot read COCO JSON ({e})") from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), list) for k in ("images", "annotations",
                                                                                      "categories")):
        raise ValueError(f"{path}: not a COCO instance file (needs lists 'images', 'annotations', 'categories')")
    cat_by_name = {n: i for i, n in enumerate(labels.category_names)}
    attr_by_name = {a["name"]: i for i, a in enumerate(labels.attributes)}
    cats = {int(c["id"]): str(c["name"]) for c in obj["categories"]}
    category_map = {i: cat_by_name[n] for i, n in cats.items() if n in cat_by_name}
    attribute_names = {int(a["id"]): str(a["name"]) for a in obj.get("attributes") or []}
    attribute_map = {i: attr_by_name[n] for i, n in attribute_names.items() if n in attr_by_name}
    images, by_id = {}, {}
    for im in obj["images"]:
        images[str(im["file_name"])] = (int(im["height"]), int(im["width"]))
        by_id[im["id"]] = str(im["file_name"])
    annotations: dict[str, list[dict]] = {}
    problems = [Problem(str(path), 0, "", f"category {n!r} (id {i}) is not one of the {len(cat_by_name)} "
                                          f"categories; its annotations are skipped")
                for i, n in sorted(cats.items()) if i not in category_map]
    for a in obj["annotations"]:
        name = by_id.get(a.get("image_id"))
        if name is None:
            problems.append(Problem(str(path), int(a.get("id", 0)), str(a.get("image_id")),
                                    "annotation on an image the file does not list; skipped"))
            continue
        annotations.setdefault(name, []).append(a)
    return CocoSource(path, Path(image_dir), images, annotations, category_map, attribute_map, attribute_names,
                      {i: n for i, n in cats.items() if i not in category_map}, problems)


def rasterize(segmentation, height: int, width: int) -> np.ndarray:
    """A COCO ``segmentation`` (polygons, or RLE with list or string counts) as a (height, width) uint8 mask;
    ``ValueError`` for a polygon with fewer than 3 points or an RLE of another size."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, list):
        polys = [list(map(float, p)) for p in segmentation]
        if not polys or any(len(p) < 6 or len(p) % 2 for p in polys):
            raise ValueError("polygon with fewer than 3 points (or an odd number of coordinates)")
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, height, width))
    elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
        if [int(s) for s in segmentation["size"]] != [height, width]:
            raise ValueError(f"RLE size {list(segmentation['size'])} differs from the image's {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, list):  # uncompressed
            rle = mask_utils.frPyObjects(segmentation, height, width)
        else:
            rle = {"size": [height, width], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    else:
        raise ValueError(f"segmentation is neither polygons nor RLE: {str(segmentation)[:60]}")
    return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.uint8)


def annotation_rows(source: CocoSource, file_name: str, num_attributes: int) -> tuple[list[Row], list[Problem]]:
    """One image's annotations as validated rows at its size (see the module docstring for what is skipped)."""
    h, w = source.images[file_name]
    rows, problems = [], []
    for a in source.annotations.get(file_name, []):
        ann_id = int(a.get("id", 0))

        def bad(reason):
            problems.append(Problem(str(source.path), ann_id, file_name, f"{reason}; annotation skipped"))

        cat = source.category_map.get(a.get("category_id"))
        if cat is None:
            continue  # reported once per category by read_coco
        ids = [int(i) for i in a.get("attribute_ids") or []]
        unknown = [i for i in ids if i not in source.attribute_names]
        if unknown:
            bad(f"attribute ids {unknown} are not in the file's attributes")
            continue
        try:
            m = rasterize(a.get("segmentation"), h, w)
        except (ValueError, TypeError) as e:
            bad(str(e))
            continue
        if not m.any():
            bad("empty mask")
            continue
        attrs = tuple(sorted({source.attribute_map[i] for i in ids if i in source.attribute_map
                              and source.attribute_map[i] < num_attributes}))
        rows.append(Row(ann_id, file_name, lrle.encode(m), h, w, cat, attrs, format_class_id(cat, attrs)))
    return rows, problems
