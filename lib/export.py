"""What a user looks at or feeds to other tools, from a prediction table: overlay PNGs and COCO results JSON.

:func:`export_predictions` post-processes every image at its original size (:mod:`lib.postprocess`; several
models are first fused, :func:`lib.fusion.combine`, as 06 would) and writes next to the table::

    overlays/<image id>.png    the image with each instance's mask, class name and score (:func:`lib.viz.draw_overlay`)
    coco_results.json          COCO "results" format, one record per instance:
                               {"image_id", "file_name", "category_id", "segmentation" (RLE), "bbox", "score"}

``image_id`` counts the images from 1 in the table's image order, ``file_name`` is the image's id (its path
below the predicted folder); ``category_id`` is the category id 0-45 of ``label_descriptions.json`` (as in
Fashionpedia's JSON); ``segmentation`` is a pycocotools RLE of the mask at the original image size
(``counts`` as str); ``bbox`` is ``[x, y, width, height]`` (:func:`lib.boxes.mask_bbox`).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import io as lio
from . import kaggle_data as lkaggle
from . import viz
from .boxes import mask_bbox
from .fusion import combine
from .labels import parse_class_id
from .postprocess import image_groups, load_params, postprocess_image, resolve_params

__all__ = ["export_table", "coco_record", "export_predictions"]


def export_table(table: pd.DataFrame, params_path: str | Path | None = None) -> tuple[pd.DataFrame, dict, str]:
    """The table to export and its post-processing: ``(table, params, what)``. One model: its rows. Several:
    fused with the combination saved in ``params_path`` (06's ``params.json``) when it has one, else all
    models with equal weights. ``params``: those of ``params_path``, else the winning recipe."""
    from .tuning import load_combination

    params = load_params(params_path) if params_path else resolve_params()
    names = list(dict.fromkeys(table["model"]))
    if len(names) <= 1:
        return table, params, names[0] if names else "no predictions"
    combo = load_combination(params_path) if params_path else None
    if combo is None:
        combo = {"models": names, "weights": [1.0] * len(names), "iou": 0.5, "min_votes": 1}
    sources = {n: table[table["model"] == n].reset_index(drop=True) for n in names}
    return combine(sources, combo), params, f"ensemble of {'+'.join(combo['models'])}"


def coco_record(number: int, image_id: str, class_id: str, mask: np.ndarray, score: float) -> dict:
    """One COCO result of a post-processed instance (``mask``: (H, W) 0/1 at the original size)."""
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    x1, y1, x2, y2 = mask_bbox(mask) or [0, 0, 0, 0]
    return {"image_id": number, "file_name": image_id, "category_id": parse_class_id(class_id)[0],
            "segmentation": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": round(float(score), 6)}


def _overlay_name(image_id: str) -> str:
    return Path(image_id).with_suffix("").as_posix().replace("/", "__") + ".png"


def export_predictions(out_dir: str | Path, table: pd.DataFrame, images: pd.DataFrame, paths: dict[str, str],
                       class_names, params_path: str | Path | None = None, overlays: bool = True,
                       coco: bool = True, progress: bool = True) -> dict:
    """Write ``overlays/`` and ``coco_results.json`` into ``out_dir`` (module docstring) for the readable
    images of ``images`` (``image_id, orig_height, orig_width[, error]``; ``paths``: image id -> file).
    Returns what was written: ``{"exported": what, "overlays": dir or None, "coco_results": file or None,
    "num_instances": n}``."""
    out_dir = Path(out_dir)
    table, params, what = export_table(table, params_path)
    groups = image_groups(table)
    if "error" in images:
        images = images[images["error"].fillna("") == ""]
    records, n_inst = [], 0
    for number, r in enumerate(tqdm(list(images.itertuples(index=False)), desc="05 export", unit="img",
                                    disable=not progress), start=1):
        size = (int(r.orig_height), int(r.orig_width))
        idx = groups.get(r.image_id)
        insts = postprocess_image(table.iloc[idx], params, size) if idx is not None else []
        n_inst += len(insts)
        if coco:
            records += [coco_record(number, r.image_id, c, m, s) for c, m, s in insts]
        if overlays:
            masks = np.stack([m for _, m, _ in insts]) if insts else np.zeros((0, *size), np.uint8)
            names = [_class_name(c, class_names) for c, _, _ in insts]
            rgb = viz.draw_overlay(lkaggle.read_image(paths[r.image_id]), masks, names, [s for _, _, s in insts])
            ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            lio.atomic_write_bytes(out_dir / "overlays" / _overlay_name(r.image_id), buf.tobytes())
    if coco:
        lio.atomic_write_json(out_dir / "coco_results.json", records, indent=None)
    return {"exported": what, "overlays": str(out_dir / "overlays") if overlays else None,
            "coco_results": str(out_dir / "coco_results.json") if coco else None, "num_instances": n_inst}


def _class_name(class_id: str, class_names) -> str:
    cat = parse_class_id(class_id)[0]
    return str(class_names[cat]) if class_names and cat < len(class_names) else str(cat)
