"""From a prediction table (:mod:`lib.prediction_table`) to a checked Kaggle ``submission.csv``.

:func:`build_submission` post-processes every test image (:mod:`lib.postprocess`) and encodes its masks;
:func:`validate_submission` checks a file or frame against the test images (header, every ImageId once,
RLE syntax and bounds, same-class overlaps); :func:`write_submission` writes only what passes, atomically;
:func:`list_test_images` lists the test images of a Kaggle-layout directory.

Every test image gets at least one row: an image without any instance gets
the placeholder ``EncodedPixels="1 1", ClassId="0"`` (one pixel of class 0),
because Kaggle rejects a submission with missing ImageIds and the
competition's ``sample_submission.csv`` uses this same one-run shape. It costs
that image a false class in the metric, so :func:`lib.scoring.score_table` (which scores
the post-processed instances, not the file) does not count it.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import kaggle_data as lkaggle
from . import labels as llabels
from . import rle as lrle
from .io import atomic_path, process_map
from .postprocess import decode_windows, finalize, image_groups, resolve_params
from .prediction_table import check_images

__all__ = ["PLACEHOLDER", "SubmissionError", "build_submission", "validate_submission", "write_submission",
           "submission_edition", "to_edition_2020", "count_placeholders", "list_test_images"]


# (EncodedPixels, ClassId) of the row written for an image without any instance.
PLACEHOLDER = ("1 1", "0")


class SubmissionError(ValueError):
    """A submission that fails :func:`validate_submission`; ``problems`` lists every problem."""

    def __init__(self, problems: list[str], what: str = "submission"):
        self.problems = list(problems)
        shown = self.problems[:200]
        more = f"\n... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        super().__init__(f"{what} is invalid ({len(self.problems)} problems):\n" + "\n".join(shown) + more)


def _submission_rows(task) -> list[tuple[str, str, str]]:
    """The submission rows of one image: ``task`` = (image_id, (h, w), its prediction rows or None, params)."""
    image_id, size, rows, params = task
    insts = [] if rows is None else finalize(decode_windows(rows, size, params["score_thresh"]), params, size)
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
    images = check_images(images)
    groups = image_groups(pred_table)

    def tasks():
        for r in images.itertuples(index=False):
            size = (int(mask_size), int(mask_size)) if mask_size else (int(r.orig_height), int(r.orig_width))
            idx = groups.get(r.image_id)
            yield r.image_id, size, None if idx is None else pred_table.iloc[idx], params

    n_workers = min(workers or os.cpu_count() or 1, max(1, len(images)))
    out: list[tuple[str, str, str]] = []
    with process_map(_submission_rows, tasks(), n_workers, chunksize=8,  # in image order; a dead worker
                     name=lambda task: f"test image {task[0]}") as per_image:  # stops 06 naming its image
        for rows in tqdm(per_image, total=len(images), desc="submission", unit="img", disable=not progress):
            out += rows
    return pd.DataFrame(out, columns=list(lkaggle.SUBMISSION_COLUMNS))


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
            problems.append(f"{path}: file is empty (expected the header {','.join(lkaggle.SUBMISSION_COLUMNS)})")
            return
        want = _expected_columns(header)
        pos = _header_positions(header, problems, want)
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
            yield line, fields[pos[0]], fields[pos[1]].strip(), fields[pos[2]], \
                fields[pos[3]] if len(pos) > 3 else None
    except csv.Error as e:
        problems.append(f"line {reader.line_num}: not parseable as CSV ({e}); the rows after it are not checked")
    finally:
        csv.field_size_limit(old_limit)


def _expected_columns(columns) -> tuple[str, ...]:
    """The 2020 edition's submission columns when the header names AttributesIds, else the 2019 edition's."""
    names = [str(c).strip() for c in columns]
    return lkaggle.SUBMISSION_COLUMNS_2020 if "AttributesIds" in names else lkaggle.SUBMISSION_COLUMNS


def _header_positions(columns: list[str], problems: list[str], want=lkaggle.SUBMISSION_COLUMNS) -> list[int] | None:
    """Positions of the ``want`` columns (ImageId, EncodedPixels, ClassId[, AttributesIds]). Anything but the
    exact header is a problem (a padded name may not be found by Kaggle's reader); the rows are still checked
    when the names can be found."""
    want = list(want)
    if columns == want:
        return list(range(len(want)))
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
    want = _expected_columns(df.columns)
    pos = _header_positions([str(c) for c in df.columns], problems, want)
    if pos is None:
        return
    cols = [df.iloc[:, i].tolist() for i in pos]  # by position: column names may repeat
    for k, values in enumerate(zip(*cols)):
        image_id, enc, cls = values[:3]
        yield (k + 2, _cell(image_id, strip=False), _cell(enc), _cell(cls, strip=False),
               _cell(values[3], strip=False) if len(values) > 3 else None)


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


def _class_id_2020(cls: str, attrs: str, known: set[int] | None) -> tuple[str, str | None]:
    """A 2020 row's ClassId and AttributesIds as one "cat_a_b" key, and what is wrong with them (or None)."""
    items = [a.strip() for a in attrs.split(",")] if attrs.strip() else []
    if attrs != attrs.strip():
        return cls, f"AttributesIds {attrs!r} has leading/trailing whitespace"
    if not cls.isdigit():
        return cls, f"ClassId {cls[:20]!r} is not a category id (the 2020 layout keeps attributes in AttributesIds)"
    if not all(a.isascii() and a.isdigit() and len(a) <= 6 for a in items):
        return cls, f"AttributesIds {attrs[:40]!r} is not a comma-separated list of ids"
    ids = [int(a) for a in items]
    unknown = sorted(set(ids) - known) if known is not None else []
    if unknown:
        return cls, f"AttributesIds: unknown attribute ids {unknown[:10]}"
    if len(set(ids)) != len(ids):
        return cls, "AttributesIds: repeated attribute id"
    return "_".join([cls, *map(str, ids)]), None


def validate_submission(sub, expected_image_ids: Iterable[str], mask_size: int | None = 512,
                        image_sizes: dict[str, tuple[int, int]] | None = None,
                        attribute_ids: Iterable[int] | None = None) -> list[str]:
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
    ImageId. The 2020 edition's files (header ``ImageId,EncodedPixels,ClassId,AttributesIds``) have the
    category alone in ClassId and its attribute ids, comma-separated, in AttributesIds; ``attribute_ids`` are
    the ids that may appear there (default: any).
    """
    problems: list[str] = []
    expected = list(dict.fromkeys(str(i) for i in expected_image_ids))
    known_attributes = None if attribute_ids is None else {int(a) for a in attribute_ids}
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
    for line, raw_id, enc, raw_cls, raw_attrs in rows:
        image_id, cls = raw_id.strip(), raw_cls.strip()
        where = f"line {line} ({image_id})"
        problem = None
        if raw_attrs is not None:  # the 2020 edition: check the attributes, then go on with "cat_a_b"
            cls, problem = _class_id_2020(cls, raw_attrs, known_attributes)
            if problem:
                problems.append(f"{where}: {problem}")
        if not image_id:
            problems.append(f"line {line}: empty ImageId")
            continue
        problems += [f"{where}: {name} {raw!r} has leading/trailing whitespace"
                     for name, raw in (("ImageId", raw_id), ("ClassId", raw_cls)) if raw != raw.strip()]
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
            if problem is None:  # (a 2020 row's attribute ids were checked against their own vocabulary)
                cat, _ = llabels.parse_class_id(cls, num_attributes=10**6 if raw_attrs is not None
                                                else llabels.N_ATTRIBUTES)
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
    return problems + _overlap_problems(runs) + [
        f"ImageId {image_id}: missing (every test image needs at least one row)"
        for image_id in expected if image_id not in present]


def _overlap_problems(runs: dict[tuple[str, int], list]) -> list[str]:
    """Same-category overlaps of each image's masks (``runs``: (image id, category) -> [(line, starts, lengths)])."""
    out = []
    for (image_id, cat), group in runs.items():
        if len(group) > 1:
            out += [f"line {la} and line {lb} ({image_id}): masks of category {cat} overlap by {n} pixels"
                    for (la, lb), n in sorted(_overlaps(group).items())]
    return out


def submission_edition(data_dir: str | Path | None) -> str:
    """``"2020"`` when ``data_dir``'s ``sample_submission.csv`` has the 2020 edition's header (with
    AttributesIds), else ``"2019"`` (also without the file)."""
    sample = Path(data_dir) / "sample_submission.csv" if data_dir else None
    if sample is None or not sample.is_file():
        return "2019"
    with open(sample, encoding="utf-8-sig", errors="replace") as f:
        header = [c.strip() for c in f.readline().strip().split(",")]
    return "2020" if header == list(lkaggle.SUBMISSION_COLUMNS_2020) else "2019"


def to_edition_2020(sub: pd.DataFrame, attribute_ids: dict[int, int]) -> pd.DataFrame:
    """A submission frame of :func:`build_submission` in the 2020 edition's columns: ClassId the category,
    AttributesIds the attributes as the 2020 label file numbers them (``attribute_ids``: ours -> theirs, by
    name; an attribute without one is dropped), comma-separated; empty without attributes."""
    cats, attrs = [], []
    for cls in sub["ClassId"]:
        cat, ours = llabels.parse_class_id(cls)
        cats.append(str(cat))
        attrs.append(",".join(str(i) for i in sorted(attribute_ids[a] for a in ours if a in attribute_ids)))
    return pd.DataFrame({"ImageId": sub["ImageId"].to_numpy(), "EncodedPixels": sub["EncodedPixels"].to_numpy(),
                         "ClassId": cats, "AttributesIds": attrs})


def write_submission(df: pd.DataFrame, path: str | Path, expected_image_ids: Iterable[str],
                     mask_size: int | None = 512, image_sizes: dict[str, tuple[int, int]] | None = None,
                     attribute_ids: Iterable[int] | None = None) -> Path:
    """Validate ``df`` and write it as CSV atomically; raise :class:`SubmissionError` (a ValueError) if invalid.

    The CSV is written to a temporary file next to ``path`` and validated again as written; it gets its
    final name only if that passes, so nothing is written when the submission is invalid, and a failed
    write (full disk, read-only directory) leaves an earlier ``path`` untouched.
    """
    expected_image_ids = list(expected_image_ids)
    problems = validate_submission(df, expected_image_ids, mask_size, image_sizes, attribute_ids)
    if problems:
        raise SubmissionError(problems)
    path = Path(path)
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, columns=list(_expected_columns(df.columns)))
        # The bytes on disk are what Kaggle reads: validate them too before the file gets its final name.
        problems = validate_submission(tmp, expected_image_ids, mask_size, image_sizes, attribute_ids)
        if problems:
            raise SubmissionError(problems, what=f"{path} as written")
    return path


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
        ids = lkaggle.list_images(test_dir)
    missing = [i for i in ids if not (test_dir / i).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} test images listed in {sample} are missing from {test_dir}: "
                                f"{missing[:10]}{' ...' if len(missing) > 10 else ''}")
    sizes = [lkaggle.image_size(test_dir / i) for i in tqdm(ids, desc="test images", unit="img", disable=not progress)]
    return pd.DataFrame({"image_id": ids, "orig_height": [s[0] for s in sizes],
                         "orig_width": [s[1] for s in sizes]}).astype({"orig_height": "int32", "orig_width": "int32"})



def count_placeholders(sub: pd.DataFrame) -> int:
    """How many rows of a submission frame are :data:`PLACEHOLDER` rows (images without any instance)."""
    return int(((sub["EncodedPixels"] == PLACEHOLDER[0]) & (sub["ClassId"] == PLACEHOLDER[1])).sum())
