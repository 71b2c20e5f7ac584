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
    rows = np.flatnonzero(q.any(axis=1))
    if rows.size == 0:
        q, x0, y0 = np.zeros((1, 1), np.uint8), 0, 0
    else:
        cols = np.flatnonzero(q.any(axis=0))
        y0, x0 = int(rows[0]), int(cols[0])
        q = q[y0:rows[-1] + 1, x0:cols[-1] + 1]
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(q), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError("PNG encoding of a mask failed")
    return x0, y0, buf.tobytes()


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
