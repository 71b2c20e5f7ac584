"""Kaggle run-length encoding for the iMaterialist (Fashion) 2019 masks.

Convention (the competition's, exact): a mask of shape (H, W) is flattened
**column-major** (down the first column, then the next column, ...), and
written as space-separated ``start length`` pairs with **1-indexed** starts,
e.g. ``"1 3 10 2"``: pixels 0,1,2 and 9,10 of the column-major flattening.

Masks are ``numpy`` arrays of shape (H, W), any dtype, nonzero = foreground.
Decoded masks are ``uint8`` (H, W) with values 0/1, returned as a
Fortran-ordered array (a transposed view of a C-ordered (W, H) buffer) so no
column-major copy is ever made; call ``np.ascontiguousarray`` if a C-ordered
array is needed (e.g. for OpenCV).

pycocotools uses the same column-major order but 0-indexed alternating
counts starting with a background run; :func:`to_coco` / :func:`from_coco`
convert between the two without touching pixels.
"""
from __future__ import annotations

import re

import numpy as np

_VALID = re.compile(r"[0-9 \t\r\n]*")
_TOO_LONG = re.compile(r"[0-9]{16,}")

__all__ = [
    "encode_runs",
    "runs_to_string",
    "encode",
    "parse_runs",
    "decode_runs",
    "decode",
    "runs_bbox",
    "decode_window",
    "to_coco",
    "from_coco",
    "area",
]


def encode_runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(starts, lengths)`` (int64, 1-indexed starts) of a (H, W) mask.

    Works on the C-ordered array directly: transitions inside a column are the
    row-to-row differences ``m[1:] != m[:-1]``; transitions between columns
    compare the last row of column c-1 with the first row of column c. The
    (few) transition positions are then sorted into column-major order, so the
    H*W column-major copy that pycocotools needs is never made.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    h, w = mask.shape
    if h == 0 or w == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if mask.dtype == np.bool_:
        mask = mask.view(np.uint8)
    elif mask.dtype != np.uint8:
        mask = (mask != 0).view(np.uint8)
    inner = _row_transitions(mask)
    # Column boundaries (padded with background before column 0 / after W-1).
    first = np.concatenate([mask[0] != 0, [False]])
    last = np.concatenate([[False], mask[-1] != 0])
    bcols = np.flatnonzero(first != last).astype(np.int64)
    trans = np.concatenate([inner, bcols * h])
    trans.sort(kind="stable")
    starts = trans[0::2]
    lengths = trans[1::2] - starts
    return starts + 1, lengths


def _row_transitions(mask: np.ndarray) -> np.ndarray:
    """Column-major linear indices (0-based) of pixels (r+1, c) whose value differs from (r, c).

    ``mask`` is (H, W) uint8 with nonzero = foreground. Rows are compared 8 bytes
    at a time through a uint64 view, and only the few words that differ are
    looked at byte by byte, so the full-size work is one XOR and one nonzero
    over H*W/8 words.
    """
    h, w = mask.shape
    w8 = (w // 8) * 8
    parts = [np.zeros(0, np.int64)]
    if w8 and mask.strides[1] == 1:
        words = mask[:, :w8].view(np.uint64)  # (H, W/8)
        r, cw = np.nonzero(words[1:] != words[:-1])
        if r.size:
            cols = cw[:, None] * 8 + np.arange(8)  # (n, 8)
            a = mask[r[:, None], cols] != 0
            b = mask[r[:, None] + 1, cols] != 0
            rr, kk = np.nonzero(a != b)
            parts.append(cols[rr, kk].astype(np.int64) * h + r[rr] + 1)
        rest = w8
    else:
        rest = 0
    if rest < w:
        tail = mask[:, rest:] != 0
        r, c = np.nonzero(tail[1:] != tail[:-1])
        parts.append((c.astype(np.int64) + rest) * h + r + 1)
    return np.concatenate(parts)


def runs_to_string(starts: np.ndarray, lengths: np.ndarray) -> str:
    """Format 1-indexed ``starts`` / ``lengths`` as the Kaggle string."""
    pairs = np.empty(2 * len(starts), np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def encode(mask: np.ndarray) -> str:
    """Encode a (H, W) mask (nonzero = foreground) as a Kaggle RLE string."""
    return runs_to_string(*encode_runs(mask))


def parse_runs(rle: str, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and strictly validate a Kaggle RLE string.

    Returns ``(starts, lengths)`` int64 with 1-indexed starts. Raises
    ``ValueError`` naming the problem for: non-string input, non-integer
    tokens, an odd token count, starts < 1, lengths < 1, runs not sorted
    ascending or overlapping/touching, and (when ``shape=(H, W)`` is given)
    runs that end past H*W, and a ``shape`` that is not two integers >= 0.
    An empty string is a valid empty mask.
    """
    if not isinstance(rle, str):
        raise ValueError(f"RLE must be a string, got {type(rle).__name__}")
    if _VALID.fullmatch(rle) is None or _TOO_LONG.search(rle):
        for t in rle.split():  # find the offending token for the message
            if not t.isdigit() or not t.isascii():
                raise ValueError(f"RLE token {t[:30]!r} is not a non-negative integer")
            if len(t) > 15:
                raise ValueError(f"RLE token {t[:30]!r} is too large")
        raise ValueError("RLE contains characters other than digits and whitespace")
    vals = np.fromstring(rle, dtype=np.int64, sep=" ") if rle.strip() else np.zeros(0, np.int64)
    if len(vals) % 2:
        raise ValueError(f"RLE has an odd number of tokens ({len(vals)}): starts and lengths must pair up")
    if not len(vals):
        if shape is not None:
            _check_shape(shape)
        return vals, vals
    starts, lengths = vals[0::2], vals[1::2]
    bad = np.flatnonzero(starts < 1)
    if bad.size:
        raise ValueError(f"RLE start {starts[bad[0]]} (pair {bad[0]}) is not positive: starts are 1-indexed")
    bad = np.flatnonzero(lengths < 1)
    if bad.size:
        raise ValueError(f"RLE length {lengths[bad[0]]} (pair {bad[0]}) is not positive")
    ends = starts + lengths  # exclusive, 1-indexed
    if len(starts) > 1:
        bad = np.flatnonzero(starts[1:] <= starts[:-1])
        if bad.size:
            i = bad[0] + 1
            raise ValueError(f"RLE runs are not sorted: start {starts[i]} (pair {i}) follows start {starts[i - 1]}")
        bad = np.flatnonzero(starts[1:] <= ends[:-1])
        if bad.size:
            i = bad[0] + 1
            raise ValueError(
                f"RLE runs overlap or touch: pair {i} starts at {starts[i]} but pair {i - 1} runs to {ends[i - 1] - 1}"
            )
    if shape is not None:
        h, w = _check_shape(shape)
        n = h * w
        if ends[-1] - 1 > n:
            raise ValueError(
                f"RLE run ends at pixel {ends[-1] - 1}, past the {shape[0]}x{shape[1]} mask ({n} pixels)"
            )
    return starts, lengths


def _check_shape(shape) -> tuple[int, int]:
    """``(H, W)`` as two ints >= 0; ``ValueError`` for anything else (negative, fractional, not a pair)."""
    try:
        h, w = shape
        hw = int(h), int(w)
        ok = hw[0] == h and hw[1] == w and hw[0] >= 0 and hw[1] >= 0
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ValueError(f"mask shape must be two integers >= 0 (H, W), got {shape!r:.60}")
    return hw


def decode_runs(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Rasterise validated runs into a (H, W) uint8 mask (Fortran-ordered view).

    Vectorised: the runs become alternating background/foreground counts and
    ``np.repeat`` writes the column-major pixel sequence in one C loop, into a
    (W, H) C-ordered buffer whose transpose is the (H, W) mask.
    """
    h, w = _check_shape(shape)
    values = np.zeros(2 * len(starts) + 1, np.uint8)
    values[1::2] = 1
    return np.repeat(values, _alternating_counts(starts, lengths, h * w)).reshape(w, h).T


def _alternating_counts(starts: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """pycocotools-style counts (background, foreground, background, ...) of runs over ``n`` pixels."""
    s = starts - 1
    bounds = np.empty(2 * len(s) + 2, np.int64)
    bounds[0], bounds[-1] = 0, n
    bounds[1:-1:2] = s
    bounds[2:-1:2] = s + lengths
    return np.diff(bounds)


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a Kaggle RLE string into a (H, W) uint8 0/1 mask (strictly validated)."""
    return decode_runs(*parse_runs(rle, shape), shape)


def runs_bbox(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """Bounding window ``(r0, r1, c0, c1)`` (half-open rows and columns) of validated runs over a (H, W)
    mask, computed from the runs alone; ``None`` for an empty mask. A run that crosses a column boundary
    covers the bottom of one column and the top of the next, so its window spans every row."""
    h, _ = _check_shape(shape)
    if not len(starts):
        return None
    s = starts - 1
    e = s + lengths - 1  # last pixel, inclusive
    cs, ce = s // h, e // h
    if (ce > cs).any():
        r0, r1 = 0, h
    else:
        r0, r1 = int((s % h).min()), int((e % h).max()) + 1
    return r0, r1, int(cs[0]), int(ce[-1]) + 1


def decode_window(starts: np.ndarray, lengths: np.ndarray, shape: tuple[int, int],
                  window: tuple[int, int, int, int]) -> np.ndarray:
    """Rasterise validated runs of a (H, W) mask into just the ``window`` = ``(r0, r1, c0, c1)`` (half-open),
    i.e. ``decode_runs(...)[r0:r1, c0:c1]`` without the full-size mask: a uint8 (r1 - r0, c1 - c0)
    Fortran-ordered view. Foreground outside the window is dropped.

    Each run is cut into its per-column segments (a run spans several columns only where a column's
    foreground reaches the bottom edge), the segments are clipped to the window and rasterised with
    :func:`decode_runs` in the window's own column-major order.
    """
    h, w = _check_shape(shape)
    r0, r1, c0, c1 = (int(v) for v in window)
    if not (0 <= r0 <= r1 <= h and 0 <= c0 <= c1 <= w):
        raise ValueError(f"window {window!r} is not inside the {h}x{w} mask")
    hw, ww = r1 - r0, c1 - c0
    s = starts - 1
    e = s + lengths  # exclusive
    keep = (e > c0 * h) & (s < c1 * h)
    s, e = s[keep], e[keep]
    cs, ce = s // h, (e - 1) // h
    n = ce - cs + 1
    run = np.repeat(np.arange(len(s)), n)
    col = cs[run] + (np.arange(len(run)) - np.repeat(np.cumsum(n) - n, n))
    top = np.maximum(s[run] - col * h, r0)
    bottom = np.minimum(e[run] - col * h, r1)
    ok = (col >= c0) & (col < c1) & (bottom > top)
    col, top, bottom = col[ok], top[ok], bottom[ok]
    return decode_runs((col - c0) * hw + (top - r0) + 1, bottom - top, (hw, ww))


def area(rle: str) -> int:
    """Number of foreground pixels of a (validated) Kaggle RLE string."""
    return int(parse_runs(rle)[1].sum())


def to_coco(rle: str, shape: tuple[int, int]) -> dict:
    """Kaggle RLE string -> pycocotools compressed RLE dict ``{"size": [H, W], "counts": bytes}``."""
    from pycocotools import mask as mask_util

    starts, lengths = parse_runs(rle, shape)
    h, w = int(shape[0]), int(shape[1])
    counts = _alternating_counts(starts, lengths, h * w)
    return mask_util.frPyObjects({"size": [h, w], "counts": counts.tolist()}, h, w)


def from_coco(coco_rle: dict) -> tuple[str, tuple[int, int]]:
    """pycocotools RLE (compressed or uncompressed) -> ``(kaggle_string, (H, W))``."""
    h, w = (int(v) for v in coco_rle["size"])
    counts = coco_rle["counts"]
    if not isinstance(counts, list):
        # Compressed: let pycocotools decompress via its area-preserving path.
        counts = _coco_counts(coco_rle)
    counts = np.asarray(counts, np.int64)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    starts = bounds[1:-1:2]
    ends = bounds[2::2]
    keep = ends > starts
    return runs_to_string(starts[keep] + 1, (ends - starts)[keep]), (h, w)


def _coco_counts(coco_rle: dict) -> list[int]:
    """Uncompressed counts of a compressed pycocotools RLE (LEB128-like decoding, as in maskApi.c)."""
    s = coco_rle["counts"]
    if isinstance(s, str):
        s = s.encode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts
