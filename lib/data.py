"""Reading the Kaggle layout: ``train.csv`` streamed and grouped per image, images, problems.

``train.csv`` has the header ``ImageId,EncodedPixels,Height,Width,ClassId`` and one
row per instance (333k rows, ~45k images on the real data). It is read in two
steps so memory stays bounded whatever its size:

1. :func:`index_csv` scans the file once as bytes and keeps, per ImageId, only
   the (row number, byte offset) of its rows;
2. :func:`read_rows` seeks to those offsets and parses just that image's rows
   (so worker processes can each read their own images).

Row numbers are 1-based file line numbers (the header is line 1), as a text
editor shows them. Every bad row or image becomes a :class:`Problem`
(file, row, image_id, reason) and the rest continues.

Images are read with ``cv2.IMREAD_IGNORE_ORIENTATION``: EXIF orientation is
*not* applied, because the Height/Width in train.csv refer to the stored pixel
array (cv2's default would rotate some images and break the masks).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from . import labels as llabels
from . import rle as lrle

TRAIN_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "ClassId")
SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels", "ClassId")
MAX_SIDE = 20000  # larger Height/Width values are treated as corrupt rows


class Problem(NamedTuple):
    """One skipped row or image: ``row`` is the 1-based line in ``file`` (0 when not a row)."""

    file: str
    row: int
    image_id: str
    reason: str


@dataclass(frozen=True)
class Row:
    """A parsed and validated train.csv row."""

    row: int
    image_id: str
    rle: str
    height: int
    width: int
    category: int
    attributes: tuple[int, ...]
    class_id: str


def index_csv(path: str | Path, columns=TRAIN_COLUMNS) -> tuple[dict[str, list[tuple[int, int]]], list[Problem]]:
    """Scan a Kaggle CSV once; return ``{image_id: [(row, byte_offset), ...]}`` in file order, and problems.

    Checks the header exactly. Only the ImageId (first field) of each line is
    looked at here; the rest is validated by :func:`read_rows`. Blank lines are
    ignored. Raises ``ValueError`` for a missing/wrong header or an empty file.
    """
    path = Path(path)
    groups: dict[str, list[tuple[int, int]]] = {}
    problems: list[Problem] = []
    with open(path, "rb") as f:
        header = f.readline()
        if not header:
            raise ValueError(f"{path}: file is empty (expected the header {','.join(columns)})")
        got = header.decode("utf-8-sig", errors="replace").strip()
        if [c.strip() for c in got.split(",")] != list(columns):
            raise ValueError(f"{path}: header is {got[:200]!r}, expected {','.join(columns)!r}")
        offset = len(header)
        row = 1
        for line in f:
            row += 1
            start = offset
            offset += len(line)
            if not line.strip():
                continue
            image_id = _first_field(line)
            if not image_id:
                problems.append(Problem(str(path), row, "", "row has no ImageId"))
                continue
            groups.setdefault(image_id, []).append((row, start))
    return groups, problems


def _first_field(line: bytes) -> str:
    """The ImageId of a raw CSV line: its first field as :func:`split_csv_line` reads it, stripped (for a
    line that is not valid CSV, the text before the first comma)."""
    if b'"' not in line:  # fast path, same result as split_csv_line
        comma = line.find(b",")
        return (line[:comma] if comma >= 0 else line).decode("utf-8", errors="replace").strip()
    text = line.decode("utf-8", errors="replace")
    try:
        fields = split_csv_line(text)
    except ValueError:
        fields = [text.split(",", 1)[0].strip().strip('"')]  # read_rows reports the row; group it by this
    return fields[0].strip() if fields else ""


def split_csv_line(line: str) -> list[str]:
    """Split one CSV line into fields; ``ValueError`` if it cannot be parsed.

    Lines without quotes are split on commas (fast path; fields may be of any length). Quoted lines go
    through :mod:`csv`, with its field-size limit (128 KiB by default) raised to the line's length so a
    long EncodedPixels is read, not rejected.
    """
    line = line.rstrip("\r\n")
    if '"' not in line:
        return line.split(",")
    old = csv.field_size_limit()
    csv.field_size_limit(max(old, len(line) + 1))
    try:
        return next(csv.reader([line]), [])
    except csv.Error as e:
        raise ValueError(f"cannot parse the line as CSV ({e})") from None
    finally:
        csv.field_size_limit(old)


def parse_row(fields: list[str], row: int, path: str, num_categories: int, num_attributes: int) -> Row:
    """Validate one train.csv row (already split into fields); raise ``ValueError`` saying what is wrong."""
    if len(fields) != len(TRAIN_COLUMNS):
        raise ValueError(f"expected {len(TRAIN_COLUMNS)} fields, got {len(fields)}")
    image_id, enc, hs, ws, cls = (f.strip() for f in fields)
    if not all(v.isascii() and v.isdigit() and len(v) <= 9 for v in (hs, ws)):
        raise ValueError(f"Height/Width {hs[:20]!r}/{ws[:20]!r} are not integers")
    h, w = int(hs), int(ws)
    if not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
        raise ValueError(f"Height/Width {h}x{w} out of range 1-{MAX_SIDE}")
    cat, attrs = llabels.parse_class_id(cls, num_categories, num_attributes)
    starts, lengths = lrle.parse_runs(enc, (h, w))
    if not len(starts):
        raise ValueError("EncodedPixels is empty (no mask)")
    return Row(row, image_id, enc, h, w, cat, attrs, cls)


def read_rows(
    path: str | Path,
    entries: list[tuple[int, int]],
    num_categories: int = llabels.N_CATEGORIES,
    num_attributes: int = llabels.N_ATTRIBUTES,
) -> tuple[list[Row], list[Problem]]:
    """Read and validate the rows at ``entries`` (from :func:`index_csv`); bad and duplicate rows become problems."""
    path = Path(path)
    rows: list[Row] = []
    problems: list[Problem] = []
    seen: dict[tuple, int] = {}
    with open(path, "rb") as f:
        for row_no, offset in entries:
            f.seek(offset)
            raw = f.readline()
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                problems.append(Problem(str(path), row_no, _first_field(raw), f"not UTF-8 text (byte {e.start})"))
                continue
            image_id = _first_field(raw)
            try:
                fields = split_csv_line(line)
                r = parse_row(fields, row_no, str(path), num_categories, num_attributes)
            except ValueError as e:
                problems.append(Problem(str(path), row_no, image_id, str(e)))
                continue
            key = (r.rle, r.height, r.width, r.class_id)
            if key in seen:
                problems.append(Problem(str(path), row_no, image_id, f"duplicate of row {seen[key]}"))
                continue
            seen[key] = row_no
            rows.append(r)
    return rows, problems


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3) without applying EXIF orientation.

    Grayscale, 16-bit and CMYK files are converted to 8-bit RGB. Raises
    ``ValueError`` for a missing, unreadable, empty, truncated or undecodable file.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except OSError as e:  # a directory, no permission, an I/O error: a bad input, reported like the others
        raise ValueError(f"cannot read image file {path}: {e.strerror or e}") from None
    if not data:
        raise ValueError(f"image file is empty (0 bytes): {path}")
    if data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-4096:]:
        raise ValueError(f"truncated JPEG (no end-of-image marker): {path}")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if img is None:
        raise ValueError(f"cannot decode image: {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def write_jpeg(path: str | Path, rgb: np.ndarray, quality: int = 95) -> None:
    """Encode an RGB uint8 (H, W, 3) array as JPEG and write it atomically."""
    from .io import atomic_write_bytes

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not encode JPEG for {path}")
    atomic_write_bytes(path, buf.tobytes())


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) 0/1 mask to ``size`` = (h, w) as uint8 0/1 (C-ordered).

    Area interpolation of the 0/255 mask then a 50% threshold: a target pixel
    is foreground when at least half of the source area it covers is.
    """
    h, w = size
    m = np.ascontiguousarray(mask, dtype=np.uint8)
    if m.shape == (h, w):
        return (m != 0).astype(np.uint8)
    src = m * np.uint8(255) if m.max(initial=0) <= 1 else (m != 0).astype(np.uint8) * np.uint8(255)
    interp = cv2.INTER_AREA if h <= m.shape[0] and w <= m.shape[1] else cv2.INTER_LINEAR
    return (cv2.resize(src, (w, h), interpolation=interp) >= 128).astype(np.uint8)


def resized_shape(height: int, width: int, long_side: int | None, upscale: bool = False) -> tuple[int, int]:
    """(h, w) after scaling so the long side is ``long_side`` (aspect kept; no upscaling unless asked)."""
    if not long_side:
        return height, width
    s = long_side / max(height, width)
    if s >= 1 and not upscale:
        return height, width
    return max(1, round(height * s)), max(1, round(width * s))


def list_images(directory: str | Path) -> list[str]:
    """Sorted image file names (jpg/jpeg/png) directly inside ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"image directory not found: {d}")
    return sorted(p.name for p in d.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png") and not p.name.startswith("."))
