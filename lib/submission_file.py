"""From a prediction table (:mod:`lib.prediction_table`) to a checked Kaggle ``submission.csv``.

:func:`build_submission` post-processes every test image (:mod:`lib.postprocess`) and encodes its masks;
:func:`validate_submission` checks a file or frame against the test images (header, every ImageId once,
RLE syntax and bounds, same-class overlaps); :func:`write_submission` writes only what passes, atomically.

Mask size: the frame a submission's masks are encoded in, in one of three forms (:func:`parse_mask_size`,
:func:`mask_shape`): ``N`` (``N x N``, the image resized without keeping its aspect), ``0`` (each image's own
Height x Width) or ``"long:N"`` (the image scaled so its long side is ``N``, aspect kept, the short side
floored). Each edition is evaluated in its own (:data:`EDITION_MASK_SIZES`, data/README.md): 2019 at
``512 x 512``, 2020 at ``long:1024``. A file is checked against the frame it was written in
(:func:`written_mask_size`: the size given, else 06's meta.json beside it, else its edition's).

Every test image gets at least one row: an image without any instance gets
the placeholder ``EncodedPixels="1 1", ClassId="0"`` (one pixel of class 0),
because Kaggle rejects a submission with missing ImageIds and the
competition's ``sample_submission.csv`` uses this same one-run shape. It costs
that image a false class in the metric, so :func:`lib.scoring.score_table` (which scores
the post-processed instances, not the file) does not count it.
"""
from __future__ import annotations

import csv
import functools
import io
import os
import re
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import kaggle_data as lkaggle
from . import labels as llabels
from . import rle as lrle
from .files import atomic_path, read_json
from .workers import process_map
from .fusion import Combination, combine_image
from .postprocess import Params, finalize, image_groups, rank_windows
from .prediction_table import check_images, stored_masks

__all__ = ["PLACEHOLDER", "EDITION_MASK_SIZES", "SubmissionError", "build_submission", "submission_of_sources",
           "image_rows", "validate_submission",
           "write_submission", "submission_edition", "to_edition_2020", "count_placeholders",
           "parse_mask_size", "mask_shape", "written_mask_size"]


# (EncodedPixels, ClassId) of the row written for an image without any instance.
PLACEHOLDER = ("1 1", "0")

# The mask size each edition's submissions are evaluated (and by default written) at, in
# :func:`parse_mask_size`'s forms: the 2019 edition's by convention 512 x 512 (its winning solution resized its
# masks so); the 2020 edition's the image scaled so its long side is 1024 px, aspect kept, short side floored
# (every public 2020 solution encodes so; data/README.md names them).
EDITION_MASK_SIZES = {"2019": 512, "2020": "long:1024"}
_LONG = re.compile(r"long:(\d{1,6})")


def parse_mask_size(value) -> int | str:
    """A mask size in its canonical form: ``N`` (an int > 0: ``N x N`` masks), ``0`` (each image's own Height x
    Width) or ``"long:N"`` (the image scaled so its long side is ``N``: :func:`mask_shape`). Takes those, their
    text (``"512"``, ``"0"``, ``"original"``, ``"long:1024"``) and None (= 0: meta.json writes an original size
    so); ``ValueError`` naming the value otherwise."""
    if value is None:
        return 0
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 0:
        return int(value)
    text = value.strip() if isinstance(value, str) else None
    if text == "original":
        return 0
    if text is not None and text.isascii() and text.isdigit() and len(text) <= 6:
        return int(text)
    m = _LONG.fullmatch(text or "")
    if m and int(m.group(1)) > 0:
        return f"long:{int(m.group(1))}"
    raise ValueError(f"mask size {value!r}: expected N (N x N masks), 0 (each image's own size) or long:N (the "
                     f"image scaled so its long side is N, aspect kept)")


def mask_shape(mask_size, height: int, width: int) -> tuple[int, int]:
    """(h, w) of the masks of a ``height x width`` image written at ``mask_size`` (a form of
    :func:`parse_mask_size`): ``(N, N)``, ``(height, width)``, or for ``"long:N"`` the long side ``N`` and the
    short one ``floor(short * N / long)`` (at least 1; small images grow), as the 2020 solutions resize."""
    size = parse_mask_size(mask_size)
    if isinstance(size, int):
        return (size, size) if size else (int(height), int(width))
    n, h, w = int(size[5:]), int(height), int(width)
    return (n, max(1, w * n // h)) if h >= w else (max(1, h * n // w), n)


class SubmissionError(ValueError):
    """A submission that fails :func:`validate_submission`; ``problems`` lists every problem."""

    def __init__(self, problems: list[str], what: str = "submission"):
        self.problems = list(problems)
        shown = self.problems[:200]
        more = f"\n... and {len(self.problems) - len(shown)} more" if len(self.problems) > len(shown) else ""
        super().__init__(f"{what} is invalid ({len(self.problems)} problems):\n" + "\n".join(shown) + more)


def image_rows(image_id: str, size: tuple[int, int], masks: list | None, params: Params) -> list[tuple[str, str, str]]:
    """The submission rows of one image: its :class:`lib.prediction_table.StoredMask` (None = not predicted)
    post-processed with ``params`` at ``size`` = (h, w), or the :data:`PLACEHOLDER` row."""
    insts = [] if masks is None else finalize(rank_windows(masks, size, params.score_thresh), params, size)
    if not insts:
        return [(image_id, *PLACEHOLDER)]
    return [(image_id, i.rle(size), i.class_id) for i in insts]


def _submission_rows(task) -> list[tuple[str, str, str]]:
    """The submission rows of one image: ``task`` = (image_id, (h, w), its prediction rows or None, params)."""
    image_id, size, rows, params = task
    masks = None if rows is None else stored_masks(rows[rows["score"].to_numpy() >= params.score_thresh])
    return image_rows(image_id, size, masks, params)


def _combined_rows(combination: Combination, params: Params, task, masks: dict) -> list[tuple[str, str, str]]:
    return image_rows(task.image_id, task.size, combine_image(masks, combination, task.orig_hw), params)


def submission_of_sources(sources: list, indexes: dict, combination: Combination, images: pd.DataFrame,
                          params: Params | None = None, mask_size: int | str | None = 512, processes: int = 1,
                          progress: bool = True) -> pd.DataFrame:
    """:func:`build_submission` of the ``combination`` (:func:`lib.fusion.combine_image`) of prediction
    tables on disk (``sources``, ``indexes``: :func:`lib.table_stream.read_sources`), image by image in
    ``processes`` worker processes (:func:`lib.table_stream.map_images`): memory flat in the number of images.
    ``params`` None: the recipe."""
    from .table_stream import ImageTask, map_images

    params = Params() if params is None else params
    images = check_images(images)
    mask_size = parse_mask_size(mask_size)
    tasks = (ImageTask(r.image_id, mask_shape(mask_size, r.orig_height, r.orig_width),
                       (int(r.orig_height), int(r.orig_width))) for r in images.itertuples(index=False))
    floor = min([params.score_thresh] + [combination.min_score or 0.0] * (len(combination.models) > 1))
    out: list[tuple[str, str, str]] = []
    for rows in map_images(functools.partial(_combined_rows, combination, params), tasks, len(images),
                           [s for s in sources if s.name in combination.models], indexes, processes, floor, progress,
                           desc="submission"):
        out += rows
    return pd.DataFrame(out, columns=list(lkaggle.SUBMISSION_COLUMNS))


def build_submission(pred_table: pd.DataFrame, images: pd.DataFrame, params: Params | dict | None = None,
                     mask_size: int | str | None = 512, progress: bool = True, workers: int = 1) -> pd.DataFrame:
    """Post-process every image and encode the Kaggle submission.

    Args:
        pred_table: prediction table (:mod:`lib.prediction_table`); rows of images
            not in ``images`` are ignored.
        images: DataFrame ``image_id, orig_height, orig_width`` listing EVERY
            test image (order kept in the output).
        params: post-processing parameters (:meth:`lib.postprocess.Params.of`: None = the recipe; a dict of some
            of them).
        mask_size: the masks' frame (:func:`parse_mask_size`: ``N`` for ``N x N``, 0 or None for each image's
            own size, ``"long:N"`` for its long side scaled to ``N``; :func:`mask_shape`).
        workers: processes that post-process images in parallel (1 = in this
            process; 0 = one per CPU). The output does not depend on it.

    Returns:
        DataFrame ``ImageId, EncodedPixels, ClassId`` (strings); an image
        without any instance gets the :data:`PLACEHOLDER` row.
    """
    params = Params.of(params)
    images = check_images(images)
    groups = image_groups(pred_table)
    mask_size = parse_mask_size(mask_size)

    def tasks():
        for r in images.itertuples(index=False):
            size = mask_shape(mask_size, r.orig_height, r.orig_width)
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


def validate_submission(sub, expected_image_ids: Iterable[str], mask_size: int | str | None = 512,
                        image_sizes: dict[str, tuple[int, int]] | None = None,
                        attribute_ids: Iterable[int] | None = None) -> list[str]:
    """Check a submission (DataFrame or CSV path) and return EVERY problem found (empty list = valid).

    Checks: the header ``ImageId,EncodedPixels,ClassId``; the field count of
    each line; ImageIds missing from the file or not among
    ``expected_image_ids`` (an id in the other form of one, with or without
    its ``.jpg``, is named: Kaggle matches the ids as sample_submission.csv
    writes them); duplicate identical rows; each EncodedPixels parses
    strictly (:func:`lib.rle.parse_runs`: integers, even count, sorted, not
    overlapping, inside the mask of the frame the file was written in,
    ``mask_size`` (:func:`mask_shape`: ``N x N``; for 0 / None and
    ``"long:N"`` from the image's ``image_sizes[id] = (h, w)``) and is
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
    mask_size = parse_mask_size(mask_size)
    square = isinstance(mask_size, int) and mask_size > 0
    if not square and image_sizes is None:
        raise ValueError(f"validate_submission: image_sizes is needed for masks at {mask_size or 'original size'}")
    other_form: dict[str, str] | None = None  # image_key -> expected id, built at the first unknown id
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
            if other_form is None:
                other_form = {lkaggle.image_key(i): i for i in expected}
            twin = other_form.get(lkaggle.image_key(image_id))
            problems.append(f"{where}: ImageId is not a test image" + (
                f"; {twin!r} is (write the ImageIds as the test image list does)" if twin else ""))
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
        if square:
            shape = (mask_size, mask_size)
        else:
            hw = image_sizes.get(image_id)
            shape = None if hw is None else mask_shape(mask_size, *hw)
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
                     mask_size: int | str | None = 512, image_sizes: dict[str, tuple[int, int]] | None = None,
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


def written_mask_size(path: str | Path, given=None, edition: str = "2019") -> tuple[int | str, str]:
    """The mask size the submission file ``path`` was written at (:func:`parse_mask_size`'s canonical form)
    and where that comes from: ``given`` (``--mask-size``) when not None; else the ``mask_size`` of 06's
    ``meta.json`` beside a file named ``submission.csv`` (06 writes the two together; another file or
    another stage's meta.json says nothing of it); else the edition's (:data:`EDITION_MASK_SIZES`).
    ``ValueError`` naming meta.json when it is not JSON or its size is not a mask size."""
    if given is not None:
        return parse_mask_size(given), "--mask-size"
    path = Path(path)
    meta_path = path.with_name("meta.json")
    if path.name == "submission.csv" and meta_path.is_file():
        meta = read_json(meta_path)
        if isinstance(meta, dict) and meta.get("stage") == "06_make_submission" and "mask_size" in meta:
            try:
                return parse_mask_size(meta["mask_size"]), str(meta_path)
            except ValueError as e:
                raise ValueError(f"{meta_path}: {e}") from None
    return EDITION_MASK_SIZES[edition], f"the {edition} edition's"


def count_placeholders(sub: pd.DataFrame) -> int:
    """How many rows of a submission frame are :data:`PLACEHOLDER` rows (images without any instance)."""
    return int(((sub["EncodedPixels"] == PLACEHOLDER[0]) & (sub["ClassId"] == PLACEHOLDER[1])).sum())
