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

An ImageId names its image file in the 2019 edition (``"abc.jpg"``) but not in the 2020 edition (``"abc"``,
file ``abc.jpg``), in train.csv and sample_submission.csv alike: ids are kept as written, :func:`image_file`
finds the file of either form and :func:`image_key` is the part both forms share. :func:`list_test_images`
lists the test images (``sample_submission.csv``'s ids, else ``test/``'s files) with their sizes.

Images are read with ``cv2.IMREAD_IGNORE_ORIENTATION``: EXIF orientation is
*not* applied, because the Height/Width in train.csv refer to the stored pixel
array (cv2's default would rotate some images and break the masks).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import NamedTuple

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import labels as llabels
from . import rle as lrle

TRAIN_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "ClassId")
# iMaterialist (Fashion) 2020 (FGVC7): ClassId is the category alone, attribute ids in their own column
# ("115,136,143", or empty), of the 294 of its label_descriptions.json.
TRAIN_COLUMNS_2020 = TRAIN_COLUMNS + ("AttributesIds",)
SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels", "ClassId")
SUBMISSION_COLUMNS_2020 = SUBMISSION_COLUMNS + ("AttributesIds",)
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

    Checks the header exactly (train.csv: the 2019 or the 2020 edition's, :func:`csv_layout`). Only the ImageId
    (first field) of each line is
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
        names = [c.strip() for c in got.split(",")]
        if names != list(columns) and not (tuple(columns) == TRAIN_COLUMNS and names == list(TRAIN_COLUMNS_2020)):
            raise ValueError(f"{path}: header is {got[:200]!r}, expected {','.join(columns)!r}"
                             + (f" (or the 2020 edition's {','.join(TRAIN_COLUMNS_2020)!r})"
                                if tuple(columns) == TRAIN_COLUMNS else ""))
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


def csv_layout(path: str | Path) -> str:
    """``"2020"`` when a train.csv has the 2020 edition's header (:data:`TRAIN_COLUMNS_2020`), else ``"2019"``."""
    with open(path, "rb") as f:
        header = f.readline().decode("utf-8-sig", errors="replace").strip()
    return "2020" if [c.strip() for c in header.split(",")] == list(TRAIN_COLUMNS_2020) else "2019"


def _attribute_ids(text: str, num_attributes: int) -> tuple[int, ...]:
    """The 2020 edition's AttributesIds field ("115,136,143" or empty) as sorted unique ids."""
    items = [a.strip() for a in text.split(",")] if text.strip() else []
    if not all(a.isascii() and a.isdigit() and len(a) <= 6 for a in items):
        raise ValueError(f"AttributesIds {text[:40]!r} is not a comma-separated list of ids")
    ids = sorted({int(a) for a in items})
    bad = [a for a in ids if a >= num_attributes]
    if bad:
        raise ValueError(f"attribute ids {bad} out of range 0-{num_attributes - 1}")
    return tuple(ids)


def parse_row(fields: list[str], row: int, path: str, num_categories: int, num_attributes: int,
              layout: str = "2019") -> Row:
    """Validate one train.csv row (already split into fields); raise ``ValueError`` saying what is wrong.
    ``layout="2020"``: the row has the AttributesIds field and its ClassId is the category alone; the row's
    ``class_id`` is written the 2019 way (``"10_7_20"``) either way."""
    columns = TRAIN_COLUMNS_2020 if layout == "2020" else TRAIN_COLUMNS
    if len(fields) != len(columns):
        raise ValueError(f"expected {len(columns)} fields, got {len(fields)}")
    if layout == "2020":
        if not fields[4].strip().isdigit():
            raise ValueError(f"ClassId {fields[4].strip()[:20]!r} is not a category id (2020 layout)")
        attrs = _attribute_ids(fields[5], num_attributes)
        fields = [*fields[:4], llabels.format_class_id(int(fields[4].strip()), attrs)]
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
    layout = csv_layout(path)
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
                r = parse_row(fields, row_no, str(path), num_categories, num_attributes, layout)
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


def write_train_csv(path: str | Path, rows) -> int:
    """Write ``rows`` = ``(ImageId, EncodedPixels, Height, Width, ClassId)`` tuples as a train.csv of the 2019
    layout (:data:`TRAIN_COLUMNS`, ClassId with its attributes, ``"6_7_20"``) atomically. Returns the number of
    rows (0: the header alone)."""
    from .files import atomic_path

    df = pd.DataFrame(list(rows), columns=list(TRAIN_COLUMNS))
    with atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return len(df)


def remap_attributes(rows: list[Row], mapping: dict[int, int]) -> list[Row]:
    """Rows with their attribute ids mapped through ``mapping`` (ids without an entry dropped), ClassIds
    rewritten to match."""
    from dataclasses import replace

    out = []
    for r in rows:
        attrs = tuple(sorted({mapping[a] for a in r.attributes if a in mapping}))
        out.append(replace(r, attributes=attrs, class_id=llabels.format_class_id(r.category, attrs)))
    return out


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as RGB uint8 (H, W, 3) without applying EXIF orientation.

    Grayscale, 16-bit and CMYK files are converted to 8-bit RGB. Raises
    ``ValueError`` for a missing, unreadable, empty, truncated or undecodable file.
    """
    return decode_image(read_image_bytes(path), path)


def read_image_bytes(path: str | Path) -> bytes:
    """The bytes of an image file; ``ValueError`` naming it when it is missing or cannot be read."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"image file not found: {path}") from None
    except OSError as e:  # a directory, no permission, an I/O error: a bad input, reported like the others
        raise ValueError(f"cannot read image file {path}: {e.strerror or e}") from None


def decode_image(data: bytes, path: str | Path) -> np.ndarray:
    """:func:`read_image` of bytes already read from ``path`` (named in the errors)."""
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
    from .files import atomic_write_bytes

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError(f"could not encode JPEG for {path}")
    atomic_write_bytes(path, buf.tobytes())


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (H, W) mask (nonzero = foreground) to ``size`` = (h, w) as uint8 0/1 (C-ordered).

    Shrinking (``h <= H`` and ``w <= W``): a target pixel is foreground when at least half of the source
    area it covers is foreground, computed exactly in integers (:func:`area_downscale`; cv2's INTER_AREA
    then a 50% threshold gives the same mask except where a pixel's coverage is exactly one half and
    float rounding tips it). Growing in either side: bilinear interpolation (cv2.INTER_LINEAR) of the
    0/255 mask, then a 50% threshold. Same size: the mask made 0/1.
    """
    h, w = size
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    elif m.dtype != np.uint8 or m.max(initial=0) > 1:
        m = (m != 0).view(np.uint8)
    if m.shape == (h, w):
        return np.ascontiguousarray(m)
    if h <= m.shape[0] and w <= m.shape[1]:
        return area_downscale(m, m.shape, (h, w))
    src = np.ascontiguousarray(m) * np.uint8(255)
    return (cv2.resize(src, (w, h), interpolation=cv2.INTER_LINEAR) >= 128).astype(np.uint8)


def resize_runs(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """``resize_mask(lrle.decode_runs(starts, lengths, shape), size)``, without the full-size mask when it
    shrinks: only the runs' bounding window (:func:`lib.rle.runs_bbox`) is rasterised and resized, so the
    work scales with the object, not the image. Returns uint8 0/1 (h, w), C-ordered."""
    H, W = shape
    h, w = size
    if not (h <= H and w <= W) or (h, w) == (H, W):
        return resize_mask(lrle.decode_runs(starts, lengths, shape), size)
    box = lrle.runs_bbox(starts, lengths, shape)
    if box is None:
        return np.zeros((h, w), np.uint8)
    return area_downscale(lrle.decode_window(starts, lengths, shape, box), shape, size, offset=(box[0], box[2]))


def resize_rle(rle: str, shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string of a ``shape`` = (H, W) mask straight to ``size`` = (h, w):
    ``resize_mask(lrle.decode(rle, shape), size)`` by way of :func:`resize_runs`. uint8 0/1, C-ordered."""
    return resize_runs(*lrle.parse_runs(rle, shape), shape, size)


def area_downscale(window: np.ndarray, shape: tuple[int, int], size: tuple[int, int],
                   offset: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Shrink a binary (H, W) mask to ``size`` = (h, w) (``h <= H``, ``w <= W``) by exact area coverage.

    ``window`` is the uint8 0/1 part ``mask[r0:r0 + a, c0:c0 + b]`` at ``offset`` = (r0, c0) that holds all
    of the foreground (the whole mask with the default offset); C- or Fortran-ordered. Returns the uint8 0/1
    (h, w) mask, C-ordered: pixel (y, x) covers source rows [y*H/h, (y+1)*H/h) and columns [x*W/w, (x+1)*W/w)
    and is foreground iff the foreground area inside is >= half of that rectangle.

    Exact integer arithmetic: in units where a source pixel is ``h x w`` and a target pixel ``H x W``, the
    foreground area below-left of any target corner is a bilinear combination (integer weights) of four
    entries of the window's integral image (cv2.integral), and a target pixel's area is the usual
    four-corner difference. Only target rows and columns that meet the window are computed.
    """
    H, W = (int(v) for v in shape)
    h, w = (int(v) for v in size)
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"area_downscale shrinks only: {H}x{W} -> {h}x{w}")
    r0, c0 = (int(v) for v in offset)
    out = np.zeros((h, w), np.uint8)
    a, b = window.shape
    if a == 0 or b == 0:
        return out
    if not window.flags.c_contiguous and window.flags.f_contiguous:  # e.g. a decoded RLE: work on its transpose
        (x0, y0), blk = _area_block(window.T, (W, H), (w, h), (c0, r0))
        blk = blk.T
    else:
        (y0, x0), blk = _area_block(np.ascontiguousarray(window), (H, W), (h, w), (r0, c0))
    out[y0:y0 + blk.shape[0], x0:x0 + blk.shape[1]] = blk
    return out


def _area_block(win: np.ndarray, shape, size, offset):
    """Target block ``((y0, x0), uint8 0/1 block)`` of :func:`area_downscale` for a C-ordered window."""
    (H, W), (h, w), (r0, c0) = shape, size, offset
    a, b = win.shape
    integral = cv2.integral(win, sdepth=cv2.CV_32S)  # (a + 1, b + 1); exact up to 2**31 pixels
    # Target rows / columns whose rectangles meet the window, and their boundary lines (one more each).
    y0, y1 = r0 * h // H, -(-(r0 + a) * h // H)
    x0, x1 = c0 * w // W, -(-(c0 + b) * w // W)
    rows = _boundary_weights(np.arange(y0, y1 + 1, dtype=np.int64) * H, h, r0, a)
    cols = _boundary_weights(np.arange(x0, x1 + 1, dtype=np.int64) * W, w, c0, b)
    # Below-left area at every (row line, column line) corner, in units of 1/(h*w) source pixels.
    (i, i1, wi0, wi1), (j, j1, wj0, wj1) = rows, cols
    part = wi0[:, None] * integral[i].astype(np.int64) + wi1[:, None] * integral[i1]  # (rows, b + 1)
    corner = part[:, j] * wj0 + part[:, j1] * wj1  # (rows, cols)
    cover = corner[1:, 1:] - corner[:-1, 1:] - corner[1:, :-1] + corner[:-1, :-1]
    return (y0, x0), (2 * cover >= H * W).astype(np.uint8)


def _boundary_weights(units: np.ndarray, n: int, lo: int, length: int):
    """For line positions ``units`` (source pixel = ``n`` units), the two integral-image indices (local to a
    window starting at source index ``lo`` of ``length`` pixels, clipped to it) and their integer weights
    (summing to ``n``) that interpolate the prefix area at that line."""
    i, r = np.divmod(units, n)
    return (np.clip(i - lo, 0, length), np.clip(i + 1 - lo, 0, length), n - r, r)


def resized_shape(height: int, width: int, long_side: int | None, upscale: bool = False) -> tuple[int, int]:
    """(h, w) after scaling so the long side is ``long_side`` (aspect kept; no upscaling unless asked)."""
    if not long_side:
        return height, width
    s = long_side / max(height, width)
    if s >= 1 and not upscale:
        return height, width
    return max(1, round(height * s)), max(1, round(width * s))


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def is_image_file(path: str | Path) -> bool:
    """A visible file named like an image (:data:`IMAGE_SUFFIXES`, any case)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(directory: str | Path) -> list[str]:
    """Sorted image file names (:func:`is_image_file`) directly inside ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"image directory not found: {d}")
    return sorted(p.name for p in d.iterdir() if is_image_file(p))


def image_key(image_id: str) -> str:
    """An ImageId without its image suffix (:data:`IMAGE_SUFFIXES`, any case), the part both editions' forms
    share: the 2019 edition's ids name the file (``"abc.jpg"``), the 2020 edition's do not (``"abc"``, file
    ``abc.jpg``); both give ``"abc"``. Another suffix is kept (``"a.txt"``)."""
    suffix = PurePosixPath(image_id).suffix
    return image_id[:-len(suffix)] if suffix.lower() in IMAGE_SUFFIXES else image_id


def image_file(directory: str | Path, image_id: str) -> Path:
    """The file of ``image_id`` in ``directory``: ``directory/image_id`` when that file exists (the 2019
    edition's ids, ``"abc.jpg"``), else the first existing ``directory/image_id + suffix`` of
    :data:`IMAGE_SUFFIXES`, lower then upper case (the 2020 edition's, ``"abc"`` -> ``abc.jpg``). When none
    exists, ``directory/image_id``, which the caller's read then names as missing."""
    plain = Path(directory) / image_id
    if plain.is_file():
        return plain
    for suffix in IMAGE_SUFFIXES + tuple(s.upper() for s in IMAGE_SUFFIXES):
        f = plain.with_name(plain.name + suffix)
        if f.is_file():
            return f
    return plain


def image_size(path: str | Path) -> tuple[int, int]:
    """(height, width) of the stored pixel array (EXIF orientation not applied), from the header when possible."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception:  # noqa: BLE001 - fall back to a full decode, which raises a clear error
        img = read_image(path)
        return int(img.shape[0]), int(img.shape[1])


def list_test_images(data_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """The test images of a Kaggle-layout directory: DataFrame ``image_id, orig_height, orig_width``.

    Ids come from ``sample_submission.csv`` (unique, in file order, as written there: the 2019 edition's
    with ``.jpg``, the 2020 edition's without), or, if it is absent, from the images in ``test/`` (file
    names). Each id's file is ``test/<id>``, else ``test/<id>.jpg`` (or ``.jpeg``, ``.png``:
    :func:`image_file`).
    Sizes are read from the image headers (no EXIF rotation, as :func:`read_image`). Raises
    ``FileNotFoundError`` listing images that are missing from ``test/``.
    """
    data_dir = Path(data_dir)
    test_dir = data_dir / "test"
    sample = data_dir / "sample_submission.csv"
    if sample.is_file():
        try:
            ids = pd.read_csv(sample, usecols=["ImageId"], dtype=str)["ImageId"].str.strip()
        except ValueError as e:
            raise ValueError(f"{sample}: cannot read the ImageId column ({e})") from None
        ids = list(dict.fromkeys(ids.dropna()))
    else:
        ids = list_images(test_dir)
    files = [image_file(test_dir, i) for i in ids]
    missing = [i for i, f in zip(ids, files) if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} test images listed in {sample} are missing from {test_dir} "
                                f"(looked for <ImageId> and <ImageId>{'/'.join(IMAGE_SUFFIXES)}): "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    sizes = [image_size(f) for f in tqdm(files, desc="test images", unit="img", disable=not progress)]
    return pd.DataFrame({"image_id": ids, "orig_height": [s[0] for s in sizes],
                         "orig_width": [s[1] for s in sizes]}).astype({"orig_height": "int32", "orig_width": "int32"})
