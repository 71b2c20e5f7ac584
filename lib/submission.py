"""From a prediction table (:mod:`lib.prediction_table`) to a checked Kaggle ``submission.csv``, and its score.

Post-processing of one image (:func:`postprocess_image`), in this order:

1. keep / drop categories (``keep_categories``, ``drop_categories``);
2. drop instances scoring below ``score_thresh``;
3. resize each soft probability map to the output size (bilinear, only the
   window around its stored crop), then binarise at ``>= mask_thresh``;
4. mask NMS per category: by descending score, an instance whose mask IoU
   with an already kept instance of its category is ``> nms_iou`` is
   dropped (``nms_iou >= 1`` disables it);
5. same-class overlap suppression (``overlap="score"``): by descending score,
   each mask loses the pixels already taken by higher-scoring masks of the
   same *category* (Kaggle requires same-class masks not to overlap; the
   category is the stricter reading, since ClassIds with attributes of one
   category are still the same garment). ``overlap="none"`` skips it, which
   can produce files :func:`validate_submission` rejects (useful for scoring
   experiments only);
6. drop masks smaller than ``min_area`` pixels (empty masks always);
7. ClassId: the category, plus (``attributes="on"``, categories in
   :data:`lib.labels.ATTRIBUTE_CATEGORIES` only) the attributes whose score
   is ``>= attr_thresh``.

:data:`POSTPROCESS_DEFAULTS` is the recipe of the competition's winning
solution (score 0.5, mask threshold 0.45, NMS 0.3, same-class overlap
suppression, minimum area 20 px). Masks are written at ``mask_size x
mask_size`` (512 by the competition's convention) or, with ``mask_size=None``,
at each image's original size.

Every test image gets at least one row: an image without any instance gets
the placeholder ``EncodedPixels="1 1", ClassId="0"`` (one pixel of class 0),
because Kaggle rejects a submission with missing ImageIds and the
competition's ``sample_submission.csv`` uses this same one-run shape. It costs
that image a false class in the metric, so :func:`score_table` (which scores
the post-processed instances, not the file) does not count it.
"""
from __future__ import annotations

import csv
import io
import itertools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from . import kaggle_data as ldata
from . import labels as llabels
from . import rle as lrle
from .io import atomic_path, atomic_write_json, process_map, read_json
from .metric import Evaluator, image_score

__all__ = [
    "POSTPROCESS_DEFAULTS",
    "DEFAULT_GRID",
    "PLACEHOLDER",
    "SubmissionError",
    "resolve_params",
    "load_params",
    "save_params",
    "postprocess_image",
    "build_submission",
    "validate_submission",
    "write_submission",
    "load_ground_truth",
    "score_table",
    "tune",
    "list_test_images",
]

POSTPROCESS_DEFAULTS = dict(
    score_thresh=0.5,
    mask_thresh=0.45,
    nms_iou=0.3,
    overlap="score",
    min_area=20,
    keep_categories=None,
    drop_categories=(),
    attributes="off",
    attr_thresh=0.5,
)

# Grid searched by 06_make_submission.py --tune unless another is given.
DEFAULT_GRID = dict(
    score_thresh=[0.3, 0.4, 0.5, 0.6, 0.7],
    mask_thresh=[0.35, 0.45, 0.55],
    nms_iou=[0.3, 0.5, 0.7],
    min_area=[0, 20, 50],
)

# (EncodedPixels, ClassId) of the row written for an image without any instance.
PLACEHOLDER = ("1 1", "0")


class SubmissionError(ValueError):
    """A submission that fails :func:`validate_submission`; ``problems`` lists every problem."""

    def __init__(self, problems: list[str], what: str = "submission"):
        self.problems = list(problems)
        shown = self.problems[:200]
        more = f"\n... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        super().__init__(f"{what} is invalid ({len(self.problems)} problems):\n" + "\n".join(shown) + more)


# ------------------------------------------------------------------ parameters


def _category_set(value, name: str) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return llabels.resolve_category_spec(value) if value.strip() else ()
    try:
        out = tuple(sorted({int(v) for v in value}))
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a category spec string or a list of ids, got {value!r:.80}") from None
    bad = [c for c in out if not 0 <= c < llabels.N_CATEGORIES]
    if bad:
        raise ValueError(f"{name}: categories {bad} out of range 0-{llabels.N_CATEGORIES - 1}")
    return out


def resolve_params(params: dict | None = None, **overrides) -> dict:
    """:data:`POSTPROCESS_DEFAULTS` updated with ``params`` then ``overrides`` (None values ignored), checked.

    Category sets become sorted tuples (``keep_categories`` None = all);
    strings such as ``"garments"`` or ``"0-26,31"`` are accepted. Raises
    ``ValueError`` naming an unknown key or a bad value.
    """
    p = dict(POSTPROCESS_DEFAULTS)
    for src, skip_none in ((params or {}), False), (overrides, True):
        unknown = sorted(set(src) - set(POSTPROCESS_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown post-processing parameters {unknown}; known: {sorted(POSTPROCESS_DEFAULTS)}")
        p.update({k: v for k, v in src.items() if not (skip_none and v is None)})
    for k in ("score_thresh", "mask_thresh", "attr_thresh"):
        p[k] = float(p[k])
        if not 0.0 <= p[k] <= 1.0:
            raise ValueError(f"{k} must be in [0, 1], got {p[k]}")
    p["nms_iou"] = float(p["nms_iou"])
    if not 0.0 <= p["nms_iou"]:
        raise ValueError(f"nms_iou must be >= 0, got {p['nms_iou']}")
    p["min_area"] = int(p["min_area"])
    if p["min_area"] < 0:
        raise ValueError(f"min_area must be >= 0, got {p['min_area']}")
    if p["overlap"] not in ("score", "none"):
        raise ValueError(f"overlap must be 'score' or 'none', got {p['overlap']!r}")
    if p["attributes"] not in ("off", "on"):
        raise ValueError(f"attributes must be 'off' or 'on', got {p['attributes']!r}")
    p["keep_categories"] = _category_set(p["keep_categories"], "keep_categories")
    p["drop_categories"] = _category_set(p["drop_categories"], "drop_categories") or ()
    return p


def load_params(path: str | Path) -> dict:
    """Read a params JSON (``{"params": {...}, ...}`` as :func:`save_params` writes, or a flat dict), checked."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a JSON object of post-processing parameters")
    params = obj.get("params", obj)
    try:
        return resolve_params(params)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def save_params(path: str | Path, params: dict, **info) -> None:
    """Write ``{"params": params, **info}`` atomically (the format :func:`load_params` reads)."""
    p = resolve_params(params)
    p = {k: (list(v) if isinstance(v, tuple) else v) for k, v in p.items()}
    atomic_write_json(path, {"params": p, **info})


# ------------------------------------------------------------------ post-processing


@dataclass
class _Prob:
    """One instance's probability map at the output size, kept as a window: ``prob`` covers rows y0.., cols x0.."""

    category: int
    score: float
    attrs: np.ndarray | None
    y0: int
    x0: int
    prob: np.ndarray  # (h, w) float32


@dataclass
class _Inst:
    """A post-processed instance: binary ``mask`` window at (y0, x0) of the output canvas."""

    category: int
    score: float
    class_id: str
    y0: int
    x0: int
    mask: np.ndarray  # (h, w) bool
    area: int
    rank: int = 0  # position in score order (ties keep table order)

    def full(self, size: tuple[int, int]) -> np.ndarray:
        out = np.zeros(size, np.uint8)
        h, w = self.mask.shape
        out[self.y0:self.y0 + h, self.x0:self.x0 + w] = self.mask
        return out

    def rle(self, size: tuple[int, int]) -> str:
        """Kaggle RLE of the mask on the (H, W) canvas ``size``, computed from the window only.

        The window is padded with a background row above and below so no
        run crosses a column; runs are shifted to canvas indices, and runs
        that touch across columns (full-height windows) are merged.
        """
        h, w = self.mask.shape
        pad = np.zeros((h + 2, w), np.uint8)
        pad[1:-1] = self.mask
        starts, lengths = lrle.encode_runs(pad)
        col, row = np.divmod(starts - 1, h + 2)
        g = (self.x0 + col) * int(size[0]) + self.y0 + row - 1  # 0-based canvas starts
        e = g + lengths
        if len(g) > 1:
            brk = np.flatnonzero(g[1:] != e[:-1]) + 1
            g, e = g[np.concatenate([[0], brk])], e[np.concatenate([brk - 1, [len(e) - 1]])]
        return lrle.runs_to_string(g + 1, e - g)


def _resize_window(crop: np.ndarray, x0: int, y0: int, src_hw: tuple[int, int], dst_hw: tuple[int, int]):
    """Resize the nonzero window of a (src_h, src_w) map to (dst_h, dst_w) without building the full map.

    ``crop`` (h, w) float32 sits at (y0, x0) of an otherwise zero map. The
    result equals (up to OpenCV's 1/32-pixel interpolation grid)
    ``cv2.resize(full_map, (dst_w, dst_h), interpolation=cv2.INTER_LINEAR)``
    restricted to the output window it touches: source coordinate
    ``u = (X + 0.5) * src_w / dst_w - 0.5``, clamped at the map's borders.
    Returns ``(Y0, X0, window)``.
    """
    (sh, sw), (dh, dw) = src_hw, dst_hw
    h, w = crop.shape
    sx, sy = dw / sw, dh / sh
    # Pad by one pixel: zeros inside the map, the edge value at the map's border (cv2.resize clamps there).
    pad = np.pad(crop, 1, mode="constant")
    if y0 == 0:
        pad[0, 1:-1] = crop[0]
    if y0 + h >= sh:
        pad[-1, 1:-1] = crop[-1]
    if x0 == 0:
        pad[:, 0] = pad[:, 1]
    if x0 + w >= sw:
        pad[:, -1] = pad[:, -2]
    X0 = max(0, math.floor((x0 - 0.5) * sx - 0.5))
    X1 = min(dw, math.ceil((x0 + w + 0.5) * sx - 0.5) + 1)
    Y0 = max(0, math.floor((y0 - 0.5) * sy - 0.5))
    Y1 = min(dh, math.ceil((y0 + h + 0.5) * sy - 0.5) + 1)
    if X1 <= X0 or Y1 <= Y0:
        return 0, 0, np.zeros((0, 0), np.float32)
    m = np.array([[1 / sx, 0, (X0 + 0.5) / sx - 0.5 - x0 + 1],
                  [0, 1 / sy, (Y0 + 0.5) / sy - 0.5 - y0 + 1]], np.float64)
    out = cv2.warpAffine(pad, m, (X1 - X0, Y1 - Y0), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_REPLICATE)
    return Y0, X0, out


def _attrs_of(value) -> np.ndarray | None:
    if value is None or (np.isscalar(value) and pd.isna(value)):
        return None
    return np.asarray(value, np.float32)


def _decode_windows(rows: pd.DataFrame, out_size: tuple[int, int], min_score: float = 0.0) -> list[_Prob]:
    """Rows of one image -> probability windows at ``out_size``, best score first (stable)."""
    if rows is None or len(rows) == 0:
        return []
    rows = rows[rows["score"].to_numpy() >= min_score]
    rows = rows.iloc[np.argsort(-rows["score"].to_numpy(np.float64), kind="stable")]
    out = []
    oh, ow = int(out_size[0]), int(out_size[1])
    for r in rows.itertuples(index=False):
        crop = cv2.imdecode(np.frombuffer(r.mask_png, np.uint8), cv2.IMREAD_UNCHANGED)
        if crop is None or crop.ndim != 2:
            raise ValueError(f"bad mask_png in the prediction table for image {r.image_id}")
        mh, mw, x0, y0 = int(r.mask_height), int(r.mask_width), int(r.mask_x0), int(r.mask_y0)
        crop = crop[:max(0, mh - y0), :max(0, mw - x0)].astype(np.float32) / 255.0
        if crop.size == 0:
            continue
        if (mh, mw) != (oh, ow):
            y0, x0, crop = _resize_window(crop, x0, y0, (mh, mw), (oh, ow))
        out.append(_Prob(int(r.category), float(r.score), _attrs_of(r.attr_scores), y0, x0, crop))
    return out


def _window_iou(a: _Inst, b: _Inst) -> float:
    ya, yb = max(a.y0, b.y0), min(a.y0 + a.mask.shape[0], b.y0 + b.mask.shape[0])
    xa, xb = max(a.x0, b.x0), min(a.x0 + a.mask.shape[1], b.x0 + b.mask.shape[1])
    if yb <= ya or xb <= xa:
        return 0.0
    inter = int(np.count_nonzero(a.mask[ya - a.y0:yb - a.y0, xa - a.x0:xb - a.x0]
                                 & b.mask[ya - b.y0:yb - b.y0, xa - b.x0:xb - b.x0]))
    union = a.area + b.area - inter
    return inter / union if union else 0.0


def _class_id(p: _Prob, params: dict) -> str:
    if params["attributes"] == "on" and p.attrs is not None and p.category in llabels.ATTRIBUTE_CATEGORIES:
        return llabels.format_class_id(p.category, np.flatnonzero(p.attrs >= params["attr_thresh"]))
    return str(p.category)


def _finalize(probs: list[_Prob], params: dict, out_size: tuple[int, int]) -> list[_Inst]:
    """Steps 1-7 of the module docstring on decoded windows (already sorted by score)."""
    keep, drop = params["keep_categories"], set(params["drop_categories"])
    kept: dict[int, list[_Inst]] = {}
    for rank, p in enumerate(probs):
        if p.score < params["score_thresh"] or p.category in drop or (keep is not None and p.category not in keep):
            continue
        fg = p.prob >= params["mask_thresh"]
        rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
        if rows.size == 0:
            continue
        fg = fg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        inst = _Inst(p.category, p.score, _class_id(p, params), p.y0 + int(rows[0]), p.x0 + int(cols[0]), fg,
                     int(np.count_nonzero(fg)), rank)
        same = kept.setdefault(p.category, [])
        if any(_window_iou(inst, k) > params["nms_iou"] for k in same):
            continue
        same.append(inst)
    out = []
    for insts in kept.values():
        if params["overlap"] == "score":
            for n, inst in enumerate(insts):  # remove the pixels of every higher-scoring mask of the category
                for k in insts[:n]:
                    ya, yb = max(inst.y0, k.y0), min(inst.y0 + inst.mask.shape[0], k.y0 + k.mask.shape[0])
                    xa, xb = max(inst.x0, k.x0), min(inst.x0 + inst.mask.shape[1], k.x0 + k.mask.shape[1])
                    if yb > ya and xb > xa:
                        inst.mask[ya - inst.y0:yb - inst.y0, xa - inst.x0:xb - inst.x0] &= \
                            ~k.mask[ya - k.y0:yb - k.y0, xa - k.x0:xb - k.x0]
                inst.area = int(np.count_nonzero(inst.mask))
        out += [i for i in insts if i.area >= max(1, params["min_area"])]
    out.sort(key=lambda i: i.rank)
    return out


def postprocess_image(rows: pd.DataFrame, params: dict | None = None,
                      out_size: tuple[int, int] = (512, 512)) -> list[tuple[str, np.ndarray, float]]:
    """Post-process the prediction-table rows of one image (steps in the module docstring).

    Args:
        rows: the rows of one image (:mod:`lib.prediction_table` columns).
        params: post-processing parameters (missing keys from :data:`POSTPROCESS_DEFAULTS`).
        out_size: (h, w) of the output masks (512x512, or the original size).

    Returns:
        ``[(class_id, mask, score), ...]`` best score first; ``mask`` is
        (h, w) uint8 0/1.
    """
    params = resolve_params(params)
    out_size = (int(out_size[0]), int(out_size[1]))
    insts = _finalize(_decode_windows(rows, out_size), params, out_size)
    return [(i.class_id, i.full(out_size), i.score) for i in insts]


def _image_groups(pred_table: pd.DataFrame) -> dict[str, np.ndarray]:
    if len(pred_table) == 0:
        return {}
    return pred_table.groupby("image_id", sort=False).indices


def _images_frame(images: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in ("image_id", "orig_height", "orig_width") if c not in images.columns]
    if missing:
        raise ValueError(f"images table lacks columns {missing} (needs image_id, orig_height, orig_width)")
    dup = images["image_id"][images["image_id"].duplicated()]
    if len(dup):
        raise ValueError(f"images table lists {dup.iloc[0]!r} more than once")
    return images


def _submission_rows(task) -> list[tuple[str, str, str]]:
    """The submission rows of one image: ``task`` = (image_id, (h, w), its prediction rows or None, params)."""
    image_id, size, rows, params = task
    insts = [] if rows is None else _finalize(_decode_windows(rows, size, params["score_thresh"]), params, size)
    if not insts:
        return [(image_id, *PLACEHOLDER)]
    return [(image_id, i.rle(size), i.class_id) for i in insts]


def build_submission(pred_table: pd.DataFrame, images: pd.DataFrame, params: dict | None = None,
                     mask_size: int | None = 512, progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Post-process every image and encode the Kaggle submission.

    Args:
        pred_table: prediction table (:mod:`lib.prediction_table`); rows of images
            not in ``images`` are ignored.
        images: DataFrame ``image_id, orig_height, orig_width`` listing EVERY
            test image (order kept in the output).
        params: post-processing parameters.
        mask_size: masks are ``mask_size x mask_size``; None = original size.
        workers: processes that post-process images in parallel (1 = in this
            process; 0 = one per CPU). The output does not depend on it.

    Returns:
        DataFrame ``ImageId, EncodedPixels, ClassId`` (strings); an image
        without any instance gets the :data:`PLACEHOLDER` row.
    """
    params = resolve_params(params)
    images = _images_frame(images)
    groups = _image_groups(pred_table)

    def tasks():
        for r in images.itertuples(index=False):
            size = (int(mask_size), int(mask_size)) if mask_size else (int(r.orig_height), int(r.orig_width))
            idx = groups.get(r.image_id)
            yield r.image_id, size, None if idx is None else pred_table.iloc[idx], params

    n_workers = min(workers or os.cpu_count() or 1, max(1, len(images)))
    out: list[tuple[str, str, str]] = []
    with process_map(_submission_rows, tasks(), n_workers, chunksize=8) as per_image:  # in image order
        for rows in tqdm(per_image, total=len(images), desc="submission", unit="img", disable=not progress):
            out += rows
    return pd.DataFrame(out, columns=list(ldata.SUBMISSION_COLUMNS))


# ------------------------------------------------------------------ validation


def _rows_from_csv(path: Path, problems: list[str]):
    """Yield (line, ImageId, EncodedPixels, ClassId) from a submission CSV; header problems go to ``problems``.

    The ImageId is yielded as written (the caller checks for padding); the other fields are stripped.
    Undecodable bytes are a problem (naming their line) and read as U+FFFD, so the rows are still checked;
    text the csv module cannot parse is a problem that ends the check. csv's field-size limit is lifted to
    the file size, so long EncodedPixels are read, not refused.
    """
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        problems.append(f"line {line}: not UTF-8 text (undecodable byte at offset {e.start})")
        text = raw.decode("utf-8-sig", errors="replace")
    old_limit = csv.field_size_limit()
    csv.field_size_limit(max(old_limit, min(len(text) + 1, 2**31 - 1)))
    # strict: an unterminated quote or text after a closing quote is an error, not guessed at (pandas, as
    # Kaggle's reader may, refuses such a file)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            problems.append(f"{path}: file is empty (expected the header {','.join(ldata.SUBMISSION_COLUMNS)})")
            return
        pos = _header_positions(header, problems)
        if pos is None:
            return
        for fields in reader:
            line = reader.line_num
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                image_id = fields[0].strip() if fields else ""
                problems.append(f"line {line} ({image_id}): expected {len(header)} fields, got {len(fields)}")
                continue
            yield line, fields[pos[0]], fields[pos[1]].strip(), fields[pos[2]]
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: not parseable as CSV ({e}); the rows after it are not checked")
    finally:
        csv.field_size_limit(old_limit)


def _header_positions(columns: list[str], problems: list[str]) -> list[int] | None:
    """Positions of ImageId, EncodedPixels, ClassId. Anything but the exact header is a problem (a padded
    name may not be found by Kaggle's reader); the rows are still checked when the names can be found."""
    want = list(ldata.SUBMISSION_COLUMNS)
    if columns == want:
        return [0, 1, 2]
    problems.append(f"header: expected {','.join(want)!r}, got {','.join(map(str, columns))[:200]!r}")
    columns = [str(c).strip() for c in columns]
    if all(c in columns for c in want):
        return [columns.index(c) for c in want]
    problems.append(f"header: cannot check the rows without the columns "
                    f"{[c for c in want if c not in columns]}")
    return None


def _cell(v, strip: bool = True) -> str:
    if v is None or (not isinstance(v, str) and np.isscalar(v) and pd.isna(v)):
        return ""
    return str(v).strip() if strip else str(v)


def _rows_from_frame(df: pd.DataFrame, problems: list[str]):
    pos = _header_positions([str(c) for c in df.columns], problems)
    if pos is None:
        return
    cols = [df.iloc[:, i].tolist() for i in pos]  # by position: column names may repeat
    for k, (image_id, enc, cls) in enumerate(zip(*cols)):
        yield k + 2, _cell(image_id, strip=False), _cell(enc), _cell(cls, strip=False)


def _overlaps(runs: list[tuple[int, np.ndarray, np.ndarray]]) -> dict[tuple[int, int], int]:
    """Pixels shared by each pair of masks, from their runs: ``[(line, starts, lengths)]`` -> {(line_a, line_b): n}."""
    iv = sorted((int(s), int(s + n), line) for line, st, ln in runs for s, n in zip(st, ln))
    active: list[tuple[int, int]] = []  # (end, line)
    out: dict[tuple[int, int], int] = {}
    for s, e, line in iv:
        active = [(ae, al) for ae, al in active if ae > s]
        for ae, al in active:
            if al != line:
                key = (min(al, line), max(al, line))
                out[key] = out.get(key, 0) + min(ae, e) - s
        active.append((e, line))
    return out


def validate_submission(sub, expected_image_ids: Iterable[str], mask_size: int | None = 512,
                        image_sizes: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """Check a submission (DataFrame or CSV path) and return EVERY problem found (empty list = valid).

    Checks: the header ``ImageId,EncodedPixels,ClassId``; the field count of
    each line; ImageIds missing from the file or not among
    ``expected_image_ids``; duplicate identical rows; each EncodedPixels parses
    strictly (:func:`lib.rle.parse_runs`: integers, even count, sorted, not
    overlapping, inside the ``mask_size x mask_size`` mask, or inside the
    image's ``image_sizes[id] = (h, w)`` when ``mask_size`` is None) and is
    not empty; each ClassId parses (:func:`lib.labels.parse_class_id`); masks
    of the same category in one image do not overlap. Messages name the CSV
    line (the header is line 1; a DataFrame row i is line i + 2) and the
    ImageId.
    """
    problems: list[str] = []
    expected = list(dict.fromkeys(str(i) for i in expected_image_ids))
    expected_set = set(expected)
    if mask_size is None and image_sizes is None:
        raise ValueError("validate_submission: image_sizes is needed when mask_size is None")
    if isinstance(sub, pd.DataFrame):
        rows = _rows_from_frame(sub, problems)
    else:
        path = Path(sub)
        if not path.is_file():
            return [f"{path}: file not found"]
        rows = _rows_from_csv(path, problems)
    seen: dict[tuple[str, str, str], int] = {}
    present: set[str] = set()
    runs: dict[tuple[str, int], list] = {}
    for line, raw_id, enc, raw_cls in rows:
        image_id, cls = raw_id.strip(), raw_cls.strip()
        where = f"line {line} ({image_id})"
        if not image_id:
            problems.append(f"line {line}: empty ImageId")
            continue
        if raw_id != image_id:
            problems.append(f"{where}: ImageId {raw_id!r} has leading/trailing whitespace")
        if raw_cls != cls:
            problems.append(f"{where}: ClassId {raw_cls!r} has leading/trailing whitespace")
        present.add(image_id)
        known = image_id in expected_set
        if not known:
            problems.append(f"{where}: ImageId is not a test image")
        key = (image_id, enc, cls)
        if key in seen:
            problems.append(f"{where}: duplicate of line {seen[key]}")
            continue
        seen[key] = line
        cat = None
        try:
            cat, _ = llabels.parse_class_id(cls)
        except ValueError as e:
            problems.append(f"{where}: bad ClassId: {e}")
        if mask_size:
            shape = (int(mask_size), int(mask_size))
        else:
            shape = image_sizes.get(image_id)
            if shape is None and known:
                problems.append(f"{where}: no image size known to check EncodedPixels against")
        if not enc:
            problems.append(f"{where}: empty EncodedPixels (no mask)")
            continue
        try:
            starts, lengths = lrle.parse_runs(enc, shape)
        except ValueError as e:
            problems.append(f"{where}: bad EncodedPixels: {e}")
            continue
        if cat is not None:
            runs.setdefault((image_id, cat), []).append((line, starts, lengths))
    for (image_id, cat), group in runs.items():
        if len(group) < 2:
            continue
        for (la, lb), n in sorted(_overlaps(group).items()):
            problems.append(f"line {la} and line {lb} ({image_id}): masks of category {cat} overlap by {n} pixels")
    for image_id in expected:
        if image_id not in present:
            problems.append(f"ImageId {image_id}: missing (every test image needs at least one row)")
    return problems


def write_submission(df: pd.DataFrame, path: str | Path, expected_image_ids: Iterable[str],
                     mask_size: int | None = 512, image_sizes: dict[str, tuple[int, int]] | None = None) -> Path:
    """Validate ``df`` and write it as CSV atomically; raise :class:`SubmissionError` (a ValueError) if invalid.

    The CSV is written to a temporary file next to ``path`` and validated again as written; it gets its
    final name only if that passes, so nothing is written when the submission is invalid, and a failed
    write (full disk, read-only directory) leaves an earlier ``path`` untouched.
    """
    expected_image_ids = list(expected_image_ids)
    problems = validate_submission(df, expected_image_ids, mask_size, image_sizes)
    if problems:
        raise SubmissionError(problems)
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, columns=list(ldata.SUBMISSION_COLUMNS))
        # The bytes on disk are what Kaggle reads: validate them too before the file gets its final name.
        problems = validate_submission(tmp, expected_image_ids, mask_size, image_sizes)
        if problems:
            raise SubmissionError(problems, what=f"{path} as written")
    return path


# ------------------------------------------------------------------ scoring and tuning


def load_ground_truth(gt_csv_path: str | Path, mask_size: int | None = 512, full_class_ids: bool = False,
                      progress: bool = True) -> dict[str, tuple[np.ndarray, list]]:
    """A train.csv-format CSV -> ``{image_id: (masks (N, h, w) uint8, class keys)}`` at the output size.

    Masks are decoded at their Height x Width and resized with
    :func:`lib.kaggle_data.resize_mask` to ``mask_size x mask_size`` (None = kept).
    Class keys are categories (int), or normalised full ClassId strings with
    ``full_class_ids``. Raises ``ValueError`` listing bad rows.
    """
    groups, problems = ldata.index_csv(gt_csv_path)
    out = {}
    for image_id, entries in tqdm(groups.items(), desc="ground truth", unit="img", disable=not progress):
        rows, probs = ldata.read_rows(gt_csv_path, entries)
        problems += probs
        if not rows:
            continue
        size = (int(mask_size), int(mask_size)) if mask_size else (rows[0].height, rows[0].width)
        masks = np.stack([ldata.resize_rle(r.rle, (r.height, r.width), size) for r in rows])
        keys = [llabels.format_class_id(r.category, r.attributes) if full_class_ids else r.category for r in rows]
        out[image_id] = (masks, keys)
    if problems:
        lines = "\n".join(f"row {p.row} ({p.image_id}): {p.reason}" for p in problems[:20])
        raise ValueError(f"{gt_csv_path}: {len(problems)} bad ground-truth rows:\n{lines}")
    return out


def _scored_images(windows: dict, gt: dict, sizes: dict, params: dict, full_class_ids: bool):
    """Per scored image: ``(image_id, gt masks, gt keys, post-processed masks, their keys, their scores)``."""
    for image_id, size in sizes.items():
        insts = _finalize(windows.get(image_id, []), params, size)
        gt_masks, gt_keys = gt.get(image_id, (np.zeros((0, *size), np.uint8), []))
        pred = np.stack([i.full(size) for i in insts]) if insts else np.zeros((0, *size), np.uint8)
        keys = [i.class_id if full_class_ids else i.category for i in insts]
        yield image_id, gt_masks, list(gt_keys), pred, keys, [i.score for i in insts]


def _score_windows(windows: dict, gt: dict, sizes: dict, params: dict, full_class_ids: bool, coco: bool):
    ev = Evaluator(coco=coco)
    for image_id, *scored in _scored_images(windows, gt, sizes, params, full_class_ids):
        ev.add(image_id, *scored)
    return ev.summary()


def _decode_all(pred_table, gt, images, mask_size, min_score, progress):
    """Probability windows of every scored image and the output size of each."""
    groups = _image_groups(pred_table)
    sizes: dict[str, tuple[int, int]] = {}
    for image_id, (masks, _) in gt.items():
        sizes[image_id] = masks.shape[1:]
    if images is not None:
        for r in _images_frame(images).itertuples(index=False):
            if r.image_id not in sizes:
                sizes[r.image_id] = (mask_size, mask_size) if mask_size else (int(r.orig_height), int(r.orig_width))
    windows = {}
    for image_id in tqdm(list(sizes), desc="predictions", unit="img", disable=not progress):
        idx = groups.get(image_id)
        if idx is not None:
            windows[image_id] = _decode_windows(pred_table.iloc[idx], sizes[image_id], min_score)
    ignored = sum(1 for k in groups if k not in sizes)
    return windows, sizes, ignored


def score_table(pred_table: pd.DataFrame, gt_csv_path: str | Path, params: dict | None = None,
                mask_size: int | None = 512, per_class: bool = True, full_class_ids: bool = False,
                coco: bool = True, images: pd.DataFrame | None = None, progress: bool = True) -> dict:
    """Kaggle metric and COCO mask AP of a prediction table after post-processing.

    Scores every image of the ground truth (an image the table has no row
    for counts as predicting nothing), plus the images of ``images`` (image_id,
    orig_height, orig_width) when given (those absent from the ground truth
    have no objects). Masks are compared at ``mask_size x mask_size`` (None =
    original size). Classes are categories unless ``full_class_ids`` (for
    ``attributes="on"``). Submission placeholder rows are not part of this.
    The Kaggle metric uses the post-processed instances; COCO mask AP ranks
    every instance (the same post-processing with ``score_thresh`` 0), as AP
    is defined over a ranked list.

    Returns:
        ``kaggle``, ``AP``, ``AP50``, ``AP75`` (COCO mask AP; nan unless
        ``coco``), ``num_images``, ``ignored_pred_images`` (table images not
        scored), ``params``, ``mask_size``, and with ``per_class``:
        ``per_class`` (class -> Kaggle class score) and ``per_category_AP``.
    """
    params = resolve_params(params)
    gt = load_ground_truth(gt_csv_path, mask_size, full_class_ids, progress=progress)
    min_score = 0.0 if coco else params["score_thresh"]
    windows, sizes, ignored = _decode_all(pred_table, gt, images, mask_size, min_score, progress)
    s = _score_windows(windows, gt, sizes, params, full_class_ids, False)
    # COCO AP ranks every instance: the same post-processing without the score threshold.
    c = (_score_windows(windows, gt, sizes, dict(params, score_thresh=0.0), full_class_ids, True)["coco"]
         if coco else None) or {}
    out = {
        "kaggle": s["kaggle"],
        "AP": c.get("AP", float("nan")),
        "AP50": c.get("AP50", float("nan")),
        "AP75": c.get("AP75", float("nan")),
        "num_images": s["num_images"],
        "ignored_pred_images": ignored,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "mask_size": mask_size,
    }
    if per_class:
        out["per_class"] = s["per_class"]
        out["per_category_AP"] = c.get("per_category", {})
    return out


def class_scores(windows: dict, gt: dict, sizes: dict, params: dict) -> list[tuple[dict, set]]:
    """Per scored image: ``({category: Kaggle class score}`` over the categories of its ground truth and
    post-processed predictions, ``{ground-truth categories})`` (categories as class keys)."""
    out = []
    for _, gt_masks, gt_keys, pred, keys, scores in _scored_images(windows, gt, sizes, params, False):
        _, per_class = image_score(gt_masks, gt_keys, pred, keys, scores, return_per_class=True)
        out.append((per_class, set(gt_keys)))
    return out


def score_dropping(table: list[tuple[dict, set]], drop) -> float:
    """The Kaggle metric of :func:`class_scores`' images when the categories ``drop`` are not predicted.

    Post-processing works per category, so dropping one leaves the others' instances as they are: a
    dropped category scores 0 where the ground truth has it and leaves the image's average elsewhere.
    """
    drop, total = set(drop), 0.0
    for per_class, gt_keys in table:
        kept = [0.0 if c in drop else s for c, s in per_class.items() if c not in drop or c in gt_keys]
        total += float(np.mean(kept)) if kept else 1.0
    return total / max(1, len(table))


def choose_dropped_categories(table: list[tuple[dict, set]]) -> tuple[list[int], float]:
    """Greedy on the tuning images: the predicted categories, lowest mean class score first, are dropped
    one by one when that raises the Kaggle metric (:func:`score_dropping`). Returns ``(dropped, score)``."""
    seen: dict = {}
    for per_class, _ in table:
        for c, s in per_class.items():
            seen.setdefault(c, []).append(s)
    drop, best = [], score_dropping(table, ())
    for c in sorted(seen, key=lambda c: (float(np.mean(seen[c])), str(c))):
        score = score_dropping(table, drop + [c])
        if score > best + 1e-12:
            drop, best = drop + [c], score
    return sorted(drop, key=str), best


def tune(pred_table: pd.DataFrame, gt_csv_path: str | Path, grid: dict[str, Sequence] | None = None,
         mask_size: int | None = 512, base_params: dict | None = None, full_class_ids: bool = False,
         out_path: str | Path | None = None, images: pd.DataFrame | None = None,
         progress: bool = True, drop_categories: bool = False) -> tuple[dict, list[dict]]:
    """Grid search of post-processing parameters maximising the Kaggle metric on ``gt_csv_path`` (and, with
    ``drop_categories``, then the categories to drop).

    Args:
        grid: ``{param: [values, ...]}`` over :data:`POSTPROCESS_DEFAULTS` keys
            (default :data:`DEFAULT_GRID`); other parameters from ``base_params``.
        out_path: when given, the best parameters are saved there
            (:func:`save_params`, with the score and the grid) for 06 to load.
        images: also score these images (as :func:`score_table`).
        drop_categories: after the grid, with the best parameters, drop the categories whose
            predictions lower the score (:func:`choose_dropped_categories`; categories the model never
            gets right only add zeros to the images' averages). Not with ``full_class_ids``. Off by default:
            on a small tuning split it overfits (the demo's 12 val images: test 0.42 -> 0.36).

    Returns:
        ``(best_params, results)``; ``results`` is one dict ``{"params":
        {grid values}, "kaggle": score}`` per combination in grid order; ties
        go to the first combination; when categories were dropped, one more entry
        ``{"params": {grid values of the best, "drop_categories": [...]}, "kaggle": score}`` follows.

    Probability windows are decoded and resized once (at the lowest
    score_thresh of the grid) and reused for every combination.
    """
    grid = dict(DEFAULT_GRID if grid is None else grid)
    base = resolve_params(base_params)
    if not grid or any(len(v) == 0 for v in grid.values()):
        raise ValueError(f"tune: empty grid {grid}")
    combos = [dict(zip(grid, vals)) for vals in itertools.product(*grid.values())]
    checked = [resolve_params(base, **c) for c in combos]
    gt = load_ground_truth(gt_csv_path, mask_size, full_class_ids, progress=progress)
    floor = min(p["score_thresh"] for p in checked)
    windows, sizes, _ = _decode_all(pred_table, gt, images, mask_size, floor, progress)
    results = []
    best, best_score, best_combo = None, -math.inf, None
    for combo, params in tqdm(list(zip(combos, checked)), desc="tune", unit="combo", disable=not progress):
        score = _score_windows(windows, gt, sizes, params, full_class_ids, coco=False)["kaggle"]
        results.append({"params": combo, "kaggle": score})
        if score > best_score:
            best, best_score, best_combo = params, score, combo
    if drop_categories and not full_class_ids:
        dropped, score = choose_dropped_categories(class_scores(windows, gt, sizes, best))
        if dropped:
            best = resolve_params(best, drop_categories=sorted(set(best["drop_categories"]) | set(dropped)))
            best_score = score
            results.append({"params": dict(best_combo, drop_categories=list(best["drop_categories"])),
                            "kaggle": score})
    if out_path is not None:
        save_params(out_path, best, kaggle=best_score, mask_size=mask_size, gt=str(gt_csv_path),
                    grid={k: list(v) for k, v in grid.items()})
    return best, results


# ------------------------------------------------------------------ test images


def _image_size(path: Path) -> tuple[int, int]:
    """(height, width) of the stored pixel array (EXIF orientation not applied), from the header when possible."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            w, h = im.size
        return int(h), int(w)
    except Exception:  # noqa: BLE001 - fall back to a full decode, which raises a clear error
        img = ldata.read_image(path)
        return int(img.shape[0]), int(img.shape[1])


def list_test_images(data_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """The test images of a Kaggle-layout directory: DataFrame ``image_id, orig_height, orig_width``.

    Ids come from ``sample_submission.csv`` (unique, in file order), or, if it
    is absent, from the images in ``test/``. Sizes are read from the image
    headers (no EXIF rotation, as :func:`lib.kaggle_data.read_image`). Raises
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
        ids = ldata.list_images(test_dir)
    missing = [i for i in ids if not (test_dir / i).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} test images listed in {sample} are missing from {test_dir}: "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    sizes = [_image_size(test_dir / i) for i in tqdm(ids, desc="test images", unit="img", disable=not progress)]
    return pd.DataFrame({"image_id": ids, "orig_height": [s[0] for s in sizes],
                         "orig_width": [s[1] for s in sizes]}).astype({"orig_height": "int32", "orig_width": "int32"})
