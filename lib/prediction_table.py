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


def _table_file(path) -> Path:
    """A ``predictions.parquet`` file, or the 05 output directory holding one."""
    p = Path(path)
    return p / "predictions.parquet" if p.is_dir() else p


def read_sources(paths, models=None) -> tuple[list[tuple[str, pd.DataFrame]], set[str]]:
    """The prediction tables of 05 runs, one source per model: ``([(name, table)], predicted image ids)``.

    ``paths``: ``predictions.parquet`` files or 05 output directories. A model is named as in its table (a
    name seen twice gets ``@<file>``); ``meta.json`` lists a model that predicted nothing above its score
    floor too. ``models``: keep only these names. The predicted ids are those of ``images.parquet`` (an
    image predicted without instances is predicted). Raises ``FileNotFoundError`` for a missing table and
    ``ValueError`` for an unfinished 05 run, unknown ``models`` or nothing to use.
    """
    sources, predicted = [], set()
    for f in map(_table_file, paths):
        if not f.is_file():
            raise FileNotFoundError(f"prediction table not found: {f}")
        meta = f.parent / "meta.json"
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        if info.get("status") not in (None, "done"):
            raise ValueError(f"{f.parent}: 05_predict.py did not finish there (status {info.get('status')!r}); rerun "
                             f"the same 05 command to complete it before making a submission")
        table = read_table(f)
        images = f.parent / "images.parquet"
        predicted.update(pd.read_parquet(images, columns=["image_id"])["image_id"] if images.is_file()
                         else table["image_id"])
        names = list(dict.fromkeys(table["model"]))
        listed = [m["name"] for m in info.get("models", []) if m.get("name")]
        names = listed + [n for n in names if n not in listed]
        for m in names if models is None else [m for m in names if m in models]:
            name = m if all(m != s[0] for s in sources) else f"{m}@{f}"
            sources.append((name, table[table["model"] == m].reset_index(drop=True)))
    if models is not None:
        missing = set(models) - {s[0].split("@")[0] for s in sources}
        if missing:
            raise ValueError(f"--models {sorted(missing)} not in the tables")
    if not sources:
        raise ValueError("no predictions to use (empty tables, or --models matched nothing)")
    return sources, predicted


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
