"""The instance-prediction table written by ``05_predict.py`` (parquet; no pickle).

One row per predicted instance:

=============== ======== =====================================================
column          type     meaning
=============== ======== =====================================================
image_id        str      Kaggle ImageId ("abc.jpg")
model           str      name of the model/checkpoint (or "ensemble")
category        int16    category id 0-45
score           float32  instance confidence
x1 y1 x2 y2     float32  box in original-image pixels
orig_height     int32    original image size
orig_width      int32
mask_height     int32    resolution the mask is stored at (512x512 by default)
mask_width      int32
mask_x0 mask_y0 int32    top-left of the stored crop, in mask pixels
mask_png        binary   PNG of the uint8 probability crop (0-255 = 0..1)
attr_scores     list     92 attribute probabilities, or null when the model has no attribute head
=============== ======== =====================================================

Masks keep their soft probabilities (quantised to 1/255, cropped to where
they are nonzero) so that 06 can tune the binarisation threshold and the
ensemble can vote with them. Images with no prediction still get a row
in the companion ``images.parquet`` (image_id, orig_height, orig_width), so
"predicted, found nothing" differs from "not predicted yet".
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

COLUMNS = ["image_id", "model", "category", "score", "x1", "y1", "x2", "y2", "orig_height", "orig_width",
           "mask_height", "mask_width", "mask_x0", "mask_y0", "mask_png", "attr_scores"]
DTYPES = {"category": "int16", "score": "float32", "x1": "float32", "y1": "float32", "x2": "float32",
          "y2": "float32", "orig_height": "int32", "orig_width": "int32", "mask_height": "int32",
          "mask_width": "int32", "mask_x0": "int32", "mask_y0": "int32"}


def encode_prob(prob: np.ndarray) -> tuple[int, int, bytes]:
    """(H, W) float probabilities in [0, 1] -> (x0, y0, PNG bytes of the uint8 crop of the nonzero area).

    An all-zero mask is stored as a 1x1 zero crop at (0, 0).
    """
    return encode_quantized(np.clip(np.rint(np.asarray(prob, np.float32) * 255), 0, 255).astype(np.uint8))


def encode_quantized(q: np.ndarray) -> tuple[int, int, bytes]:
    """:func:`encode_prob` of a map already quantized: (H, W) uint8 ``round(p * 255)``."""
    x0, y0, q = nonzero_crop(q)
    return x0, y0, png_bytes(q)


def nonzero_crop(q: np.ndarray) -> tuple[int, int, np.ndarray]:
    """(H, W) uint8 -> ``(x0, y0, crop)`` of its nonzero area; an all-zero map gives a 1x1 zero crop at (0, 0)."""
    rows = np.flatnonzero(q.any(axis=1))
    if rows.size == 0:
        return 0, 0, np.zeros((1, 1), np.uint8)
    cols = np.flatnonzero(q.any(axis=0))
    y0, x0 = int(rows[0]), int(cols[0])
    return x0, y0, q[y0:rows[-1] + 1, x0:cols[-1] + 1]


def png_bytes(q: np.ndarray) -> bytes:
    """The ``mask_png`` of a (h, w) uint8 crop."""
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(q), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding of a mask failed")
    return buf.tobytes()


@dataclass
class StoredMask:
    """One row's instance as the table stores it: ``q`` (h, w) uint8 ``round(p * 255)`` crop at (y0, x0) of a
    ``hw`` = (mask_height, mask_width) map that is zero elsewhere; ``score`` a float32 value; ``attrs`` (A,)
    float32 or None; ``box`` (x1, y1, x2, y2) in original-image pixels, or None where not needed (a fused mask
    that no table row will hold)."""

    category: int
    score: float
    attrs: np.ndarray | None
    x0: int
    y0: int
    q: np.ndarray
    hw: tuple[int, int]
    box: tuple[float, float, float, float] | None


def _attrs_of(value) -> np.ndarray | None:
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return None
    return np.asarray(value, np.float32)


def decode_png(row) -> np.ndarray:
    """The (h, w) uint8 crop of a row's ``mask_png``; ``ValueError`` naming the image when it is not one."""
    crop = cv2.imdecode(np.frombuffer(row.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
    if crop is None or crop.ndim != 2:
        raise ValueError(f"bad mask_png in the prediction table for image {row.image_id}")
    return crop


def stored_masks(rows: pd.DataFrame) -> list[StoredMask]:
    """The rows of a table (one image), in table order, as :class:`StoredMask` (PNGs decoded)."""
    return [StoredMask(int(r.category), float(r.score), _attrs_of(r.attr_scores), int(r.mask_x0), int(r.mask_y0),
                       decode_png(r), (int(r.mask_height), int(r.mask_width)),
                       (float(r.x1), float(r.y1), float(r.x2), float(r.y2)))
            for r in rows.itertuples(index=False)]


def mask_rows(image_id: str, model: str, masks: list[StoredMask], orig_hw: tuple[int, int]) -> list[dict]:
    """:class:`StoredMask` of one image -> table rows (:func:`make_table` input)."""
    return [{"image_id": image_id, "model": model, "category": m.category, "score": m.score,
             "x1": m.box[0], "y1": m.box[1], "x2": m.box[2], "y2": m.box[3],
             "orig_height": int(orig_hw[0]), "orig_width": int(orig_hw[1]), "mask_height": m.hw[0],
             "mask_width": m.hw[1], "mask_x0": m.x0, "mask_y0": m.y0, "mask_png": png_bytes(m.q),
             "attr_scores": None if m.attrs is None else m.attrs.tolist()} for m in masks]


def decode_prob(row) -> np.ndarray:
    """A table row (mapping or namedtuple with mask_* fields) -> (mask_height, mask_width) float32 probabilities."""
    get = row.__getitem__ if isinstance(row, (dict, pd.Series)) else lambda k: getattr(row, k)
    h, w = int(get("mask_height")), int(get("mask_width"))
    x0, y0 = int(get("mask_x0")), int(get("mask_y0"))
    crop = cv2.imdecode(np.frombuffer(get("mask_png"), np.uint8), cv2.IMREAD_UNCHANGED)
    if crop is None or crop.ndim != 2:
        raise ValueError(f"bad mask_png for image {get('image_id')}")
    out = np.zeros((h, w), np.float32)
    ch, cw = min(crop.shape[0], h - y0), min(crop.shape[1], w - x0)
    out[y0:y0 + ch, x0:x0 + cw] = crop[:ch, :cw].astype(np.float32) / 255.0
    return out


def make_table(rows: list[dict]) -> pd.DataFrame:
    """Rows (dicts with the COLUMNS keys) -> a typed DataFrame (empty rows -> empty typed frame)."""
    df = pd.DataFrame(rows, columns=COLUMNS)
    return df.astype(DTYPES)


def read_table(path) -> pd.DataFrame:
    df = pd.read_parquet(path)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: not a prediction table (missing columns {missing})")
    return df


def check_images(images: pd.DataFrame) -> pd.DataFrame:
    """``images`` (an images table: ``image_id, orig_height, orig_width``, as ``images.parquet``), checked:
    the columns are there and no image is listed twice; else ``ValueError``."""
    missing = [c for c in ("image_id", "orig_height", "orig_width") if c not in images.columns]
    if missing:
        raise ValueError(f"images table lacks columns {missing} (needs image_id, orig_height, orig_width)")
    dup = images["image_id"][images["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"images table lists {dup.iloc[0]!r} more than once")
    return images


def table_file(path) -> Path:
    """A ``predictions.parquet`` file, or the 05 output directory holding one."""
    p = Path(path)
    return p / "predictions.parquet" if p.is_dir() else p


def split_source(paths) -> dict | None:
    """When the first of ``paths`` is a 05 output of a prepared split (``05_predict.py --prepared-dir --split``)
    or of a folder (``--images``): ``{"dir", "split" (None for a folder), "images" (its images.parquet), "gt"
    (the split's gt.csv, or None), "image_dir", "what"}``; else None (05 predicted a Kaggle test folder)."""
    d = Path(paths[0])
    d = d if d.is_dir() else d.parent
    meta = d / "meta.json"
    src = (json.loads(meta.read_text()).get("source") or {}) if meta.is_file() else {}
    if not isinstance(src, dict) or not (src.get("prepared_dir") or src.get("images")):
        return None
    images = pd.read_parquet(d / "images.parquet")
    if src.get("images"):
        return {"dir": d, "split": None, "images": images, "gt": None, "image_dir": src.get("root"),
                "what": f"the images of {src['images']}"}
    gt = d / "gt.csv"
    return {"dir": d, "split": src.get("split"), "images": images, "gt": str(gt) if gt.is_file() else None,
            "image_dir": str(Path(src["prepared_dir"]) / "images"), "what": f"prepared split {src.get('split')!r}"}
