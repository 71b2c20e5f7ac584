"""The prepared-data cache written by ``01_prepare_data.py`` and read by training.

Layout of a cache directory (e.g. ``work/prepared``)::

    meta.json              stage, args, labels (categories/attributes), counts, sizes, split summary
    index.parquet          one row per prepared image (see INDEX_COLUMNS)
    problems.csv           file,row,image_id,reason for every skipped row/image
    images/<stem>.jpg      the image resized so its long side is ``long_side`` (RGB content, JPEG q95)
    ann/<stem>.json        per-image annotation record (see below), written after its image
    .lock                  held (flock) by the 01 run writing the cache; a second run is refused

An annotation record::

    {"image_id": "abc.jpg", "orig_height": H0, "orig_width": W0, "height": H, "width": W,
     "instances": [{"category": 6, "attributes": [7, 20], "class_id": "6_7_20",
                    "rle": "<Kaggle RLE at (H, W)>", "bbox": [x1, y1, x2, y2], "row": 17}, ...],
     "problems": [[file, row, image_id, reason], ...],
     "settings": {"cache_version": 1, "long_side": 1024, "jpeg_quality": 95}}

``bbox`` is in pixels of the resized image, x2/y2 exclusive (a one-pixel mask
at (r, c) has bbox [c, r, c + 1, r + 1]), as torchvision expects for masks.
The record is the per-image "done" marker: a rerun of 01 skips images whose
record exists (and was made with the same ``settings``: cache version, long side, JPEG quality).
``meta.json`` is written last and removed when 01 starts, so it marks a complete cache:
:func:`load_meta` and :func:`load_index` refuse a directory without it.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import io as lio
from . import rle as lrle

INDEX_COLUMNS = [
    "image_id",  # Kaggle ImageId, e.g. "abc.jpg"
    "split",  # "train" or "val"
    "height",  # resized size
    "width",
    "orig_height",
    "orig_width",
    "num_instances",
    "categories",  # space-separated sorted unique category ids, e.g. "0 6 31"
]


def stem(image_id: str) -> str:
    """File stem of a Kaggle ImageId (``"abc.jpg"`` -> ``"abc"``)."""
    return Path(image_id).stem


def image_path(cache_dir: str | Path, image_id: str) -> Path:
    return Path(cache_dir) / "images" / f"{stem(image_id)}.jpg"


def ann_path(cache_dir: str | Path, image_id: str) -> Path:
    return Path(cache_dir) / "ann" / f"{stem(image_id)}.json"


def read_ann(cache_dir: str | Path, image_id: str) -> dict:
    return lio.read_json(ann_path(cache_dir, image_id))


def load_meta(cache_dir: str | Path) -> dict:
    p = Path(cache_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run 01_prepare_data.py first (or point --prepared-dir at its output)")
    return lio.read_json(p)


def load_index(cache_dir: str | Path, split: str | None = None) -> pd.DataFrame:
    """The image index, optionally only one split ("train" / "val")."""
    p = Path(cache_dir) / "index.parquet"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: run 01_prepare_data.py first")
    if not (Path(cache_dir) / "meta.json").exists():
        raise FileNotFoundError(f"{Path(cache_dir) / 'meta.json'} not found: the cache is incomplete "
                                f"(01_prepare_data.py did not finish); rerun it to complete the cache")
    df = pd.read_parquet(p)
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    return df


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """[x1, y1, x2, y2] (x2/y2 exclusive) of a (H, W) mask, or None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def decode_instances(ann: dict) -> tuple[np.ndarray, np.ndarray, list[tuple[int, ...]]]:
    """Decode a record's instances.

    Returns ``masks`` (N, H, W) uint8 0/1 (C-ordered), ``categories`` (N,) int64
    and ``attributes`` (a list of N tuples). N may be 0.
    """
    h, w = int(ann["height"]), int(ann["width"])
    inst = ann["instances"]
    masks = np.zeros((len(inst), h, w), np.uint8)
    for i, a in enumerate(inst):
        masks[i] = lrle.decode(a["rle"], (h, w))
    cats = np.array([a["category"] for a in inst], np.int64)
    attrs = [tuple(a.get("attributes", ())) for a in inst]
    return masks, cats, attrs
