"""06's passes: prediction tables and ground truth read image by image, the work spread over processes.

A pass (:func:`map_images`) runs a function on every image of a list, in ``processes`` worker processes, and
yields the results in the list's order. Nothing holds a whole table: the parent reads only each table's
``image_id`` column (:class:`TableIndex`: which rows hold each image) and the ground truth's rows of the images
it hands out; a worker reads the rows of a chunk of consecutive images itself, from the parquet row groups that
hold them (05 writes row groups of whole images, in image order, so a chunk reads one or two groups per file),
decodes their masks once (:class:`lib.prediction_table.StoredMask`) and calls the function on each image. Memory
stays flat in the number of images: a chunk's rows per worker, plus the per-image results the caller keeps.

A *source* (:class:`Source`) is one model's rows in one ``predictions.parquet`` (a file of a 05 run with
several checkpoints holds several).
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import prediction_table as lpred
from .workers import WorkerDiedError, process_map, run_alone

__all__ = ["Source", "TableIndex", "ImageTask", "read_sources", "map_images", "CHUNK_ROWS"]

# Rows (over all files) a chunk of images holds at most, unless one image has more; and images per chunk. Small
# chunks keep every worker busy and its memory low; a chunk reads the row groups that hold its rows (05 writes
# groups of lib.shards.ROW_GROUP_ROWS, as many rows), so a group is read once or twice: milliseconds of I/O
# against seconds of work per chunk.
CHUNK_ROWS = 1024
CHUNK_IMAGES = 16


@dataclass(frozen=True)
class Source:
    """One model's predictions: the rows of ``path`` whose ``model`` column is ``model``, called ``name``."""

    name: str
    path: Path
    model: str


class TableIndex:
    """Which rows of a ``predictions.parquet`` hold each image, from its ``image_id`` column alone.

    ``rows[image_id]``: (n,) int64 row numbers, ascending; ``group_starts``: the first row of each row group and
    the row count at the end; ``models``: the ``model`` values in order of first appearance.
    """

    def __init__(self, path: str | Path):
        import pyarrow.parquet as pq

        self.path = Path(path)
        f = pq.ParquetFile(self.path)
        missing = [c for c in lpred.COLUMNS if c not in f.schema_arrow.names]
        if missing:
            raise ValueError(f"{self.path}: not a prediction table (missing columns {missing})")
        md = f.metadata
        self.group_starts = np.concatenate([[0], np.cumsum([md.row_group(g).num_rows for g in range(md.num_row_groups)])]
                                           ).astype(np.int64)
        cols = f.read(columns=["image_id", "model"])
        ids = cols.column("image_id").combine_chunks().dictionary_encode()
        codes = ids.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        names = ids.dictionary.to_pylist()
        order = np.argsort(codes, kind="stable")
        bounds = np.concatenate([[0], np.cumsum(np.bincount(codes, minlength=len(names)))])
        self.rows = {name: order[bounds[k]:bounds[k + 1]] for k, name in enumerate(names)}
        self.models = list(dict.fromkeys(cols.column("model").unique().to_pylist()))


@dataclass
class ImageTask:
    """One image of a pass: its output ``size`` (h, w), original size and, when scored, its ground-truth rows
    (:class:`lib.kaggle_data.Row`; ``gt`` None = not scored)."""

    image_id: str
    size: tuple[int, int]
    orig_hw: tuple[int, int]
    gt: list | None = None
    rows: dict = field(default_factory=dict)  # file index -> (n,) row numbers (filled by the chunker)


def read_sources(paths, models=None) -> tuple[list[Source], dict[Path, TableIndex], set[str]]:
    """The sources of 05 runs: ``(sources, {file: its TableIndex}, predicted image ids)``.

    ``paths``: ``predictions.parquet`` files or 05 output directories. A model is named as in its table (a
    name seen twice gets ``@<file>``); ``meta.json`` lists a model that predicted nothing above its score
    floor too. ``models``: keep only these names. The predicted ids are those of ``images.parquet`` (an
    image predicted without instances is predicted). Raises ``FileNotFoundError`` for a missing table and
    ``ValueError`` for an unfinished 05 run, unknown ``models`` or nothing to use.
    """
    sources, indexes, predicted = [], {}, set()
    for f in map(lpred.table_file, paths):
        if not f.is_file():
            raise FileNotFoundError(f"prediction table not found: {f}")
        meta = f.parent / "meta.json"
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        if info.get("status") not in (None, "done"):
            raise ValueError(f"{f.parent}: 05_predict.py did not finish there (status {info.get('status')!r}); rerun "
                             f"the same 05 command to complete it before making a submission")
        index = indexes[f] = TableIndex(f)
        images = f.parent / "images.parquet"
        predicted.update(pd.read_parquet(images, columns=["image_id"])["image_id"] if images.is_file()
                         else index.rows)
        listed = [m["name"] for m in info.get("models", []) if m.get("name")]
        names = listed + [n for n in index.models if n not in listed]
        for m in names if models is None else [m for m in names if m in models]:
            name = m if all(m != s.name for s in sources) else f"{m}@{f}"
            sources.append(Source(name, f, m))
    if models is not None:
        missing = set(models) - {s.name.split("@")[0] for s in sources}
        if missing:
            raise ValueError(f"--models {sorted(missing)} not in the tables")
    if not sources:
        raise ValueError("no predictions to use (empty tables, or --models matched nothing)")
    return sources, indexes, predicted


def _chunks(images, files: list[Path], indexes: dict[Path, TableIndex]):
    """Consecutive :class:`ImageTask` with their row numbers per file, up to :data:`CHUNK_ROWS` rows or
    :data:`CHUNK_IMAGES` images a chunk."""
    chunk, n_rows = [], 0
    for task in images:
        task.rows = {k: indexes[f].rows.get(task.image_id, np.zeros(0, np.int64)) for k, f in enumerate(files)}
        rows = sum(len(r) for r in task.rows.values())
        if chunk and (n_rows + rows > CHUNK_ROWS or len(chunk) >= CHUNK_IMAGES):
            yield chunk
            chunk, n_rows = [], 0
        chunk.append(task)
        n_rows += rows
    if chunk:
        yield chunk


def _read_rows(path: Path, group_starts: np.ndarray, rows: np.ndarray) -> pd.DataFrame:
    """Rows ``rows`` (ascending row numbers) of a parquet file, reading only the row groups that hold them."""
    import pyarrow.parquet as pq

    if not len(rows):
        return lpred.make_table([])
    groups = np.unique(np.searchsorted(group_starts, rows, side="right") - 1)
    table = pq.ParquetFile(path).read_row_groups(groups.tolist(), columns=lpred.COLUMNS).to_pandas()
    sizes = group_starts[groups + 1] - group_starts[groups]
    offset = np.concatenate([[0], np.cumsum(sizes)[:-1]])  # where each group starts in `table`
    g = np.searchsorted(groups, np.searchsorted(group_starts, rows, side="right") - 1)
    return table.iloc[rows - group_starts[groups[g]] + offset[g]].reset_index(drop=True)


def _run_chunk(fn, files, starts, sources, floor, chunk):
    """In a worker: read a chunk's rows, decode each image's masks per source, return ``fn``'s results."""
    tables = [_read_rows(f, starts[k], np.concatenate([t.rows[k] for t in chunk]))
              for k, f in enumerate(files)]
    at = [0] * len(files)
    out = []
    for task in chunk:
        masks = {}
        parts = []
        for k in range(len(files)):
            n = len(task.rows[k])
            parts.append(tables[k].iloc[at[k]:at[k] + n])
            at[k] += n
        for s in sources:
            rows = parts[files.index(s.path)]
            rows = rows[(rows["model"] == s.model).to_numpy() & (rows["score"].to_numpy() >= floor)]
            masks[s.name] = lpred.stored_masks(rows)
        out.append(fn(task, masks))
    return out


def _culprit(work, desc: str, chunk: list, reason: str):
    """A worker died on ``chunk``: run its images one by one, each in a process of its own, to name the one that
    kills its process (:class:`lib.workers.WorkerDiedError`)."""
    for task in chunk:
        run_alone(work, [task], name=lambda c: f"{desc} image {c[0].image_id}")
    raise WorkerDiedError(f"a worker process died on the {desc} images {chunk[0].image_id} .. {chunk[-1].image_id} "
                          f"({reason}), though none of them alone kills one (out of memory?)")


def map_images(fn: Callable, images: Iterable[ImageTask], total: int, sources: Sequence[Source],
               indexes: dict[Path, TableIndex], processes: int = 1, floor: float = 0.0, progress: bool = True,
               desc: str = "images"):
    """Yield ``fn(task, masks)`` for every :class:`ImageTask` of ``images`` (``total`` of them, read lazily), in
    order.

    ``masks`` maps each source's name to the image's :class:`lib.prediction_table.StoredMask` list in table order,
    rows scoring ``>= floor`` (float32, as the column) only. ``fn`` must be picklable (a module-level function or
    a ``functools.partial`` of one) when ``processes > 1``. A worker that dies stops the pass with
    :class:`lib.workers.WorkerDiedError` naming the image it died on.
    """
    files = list(dict.fromkeys(s.path for s in sources))
    starts = [indexes[f].group_starts for f in files]
    work = functools.partial(_run_chunk, fn, files, starts, list(sources), float(floor))
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress)
    with process_map(work, _chunks(images, files, indexes), processes, chunksize=2,
                     on_crash=functools.partial(_culprit, work, desc)) as results:
        for part in results:
            bar.update(len(part))
            yield from part
    bar.close()
