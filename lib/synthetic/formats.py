"""The annotations in other layouts: a COCO instance file as Fashionpedia ships it (:func:`coco_json`) and
the 2020 edition's label file and rows (:func:`edition_2020_labels`)."""
from __future__ import annotations

import numpy as np

from .. import rle as lrle
from ..label_descriptions import label_descriptions


def coco_json(rows) -> dict:
    """Kaggle-format rows ``(ImageId, EncodedPixels, Height, Width, ClassId)`` as a COCO instance file in
    Fashionpedia's form: ``images``, ``annotations`` (``segmentation`` as compressed RLE, or - every third
    one - as uncompressed RLE, so readers meet both; ``attribute_ids``, ``area``, ``bbox``, ``iscrowd``),
    ``categories`` and ``attributes`` of the competition's label file (ids as there)."""
    from pycocotools import mask as mask_utils

    from ..boxes import mask_bbox
    from ..labels import parse_class_id

    labels = label_descriptions()
    images, annotations, ids = [], [], {}
    for image_id, enc, h, w, class_id in rows:
        if image_id not in ids:
            ids[image_id] = len(ids) + 1
            images.append({"id": ids[image_id], "file_name": image_id, "height": int(h), "width": int(w)})
        m = lrle.decode(enc, (int(h), int(w)))
        cat, attrs = parse_class_id(class_id)
        if len(annotations) % 3 == 2:  # uncompressed: run lengths down the columns, background first
            flat = m.flatten(order="F")
            edges = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
            seg = {"size": [int(h), int(w)], "counts": np.diff(np.concatenate([[0], edges])).tolist()}
        else:
            rle = mask_utils.encode(np.asfortranarray(m))
            seg = {"size": [int(h), int(w)], "counts": rle["counts"].decode("ascii")}
        x1, y1, x2, y2 = mask_bbox(m)
        annotations.append({"id": len(annotations) + 1, "image_id": ids[image_id], "category_id": cat,
                            "attribute_ids": list(attrs), "segmentation": seg, "area": int(m.sum()),
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "iscrowd": 0})
    return {"info": dict(labels["info"]), "images": images, "annotations": annotations,
            "categories": labels["categories"], "attributes": labels["attributes"]}


def _attribute_id_2020(attribute: int) -> int:
    return 3 * attribute + 2  # sparse, as the 2020 edition's ids are


def edition_2020_labels() -> dict:
    """A label file in the 2020 edition's form for the synthetic set: the 46 categories and the 2019 attributes
    under sparse ids (:func:`_attribute_id_2020`; the real file has 294 attributes, ids not 0..N-1)."""
    d = label_descriptions()
    return {"info": dict(d["info"], year=2020),
            "categories": d["categories"],
            "attributes": [dict(a, id=_attribute_id_2020(a["id"])) for a in d["attributes"]]}


def _row_2020(row) -> tuple:
    """A 2019 train.csv row as the 2020 edition writes it: ClassId the category, attribute ids (sparse) quoted."""
    from ..labels import parse_class_id

    image_id, enc, h, w, class_id = row
    cat, attrs = parse_class_id(class_id)
    ids = ",".join(str(_attribute_id_2020(a)) for a in attrs)
    return image_id, enc, h, w, cat, f'"{ids}"' if "," in ids else ids
