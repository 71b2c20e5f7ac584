"""The resumable shards of a 05 output directory, and the configuration hash that keeps runs apart.

Output directory (``out_dir``) of ``05_predict.py``::

    predictions.parquet     all rows (lib.prediction_table format), ordered by image (the image list's order),
                            model, score (desc); row groups of whole images (an image's rows are never split
                            between two row groups; :data:`ROW_GROUP_ROWS`), read by image with
                            :func:`lib.table_stream.map_images` (05's export, 06)
    images.parquet          image_id, orig_height, orig_width, error of every predicted image (even with no
                            rows; ``error``: why an unreadable image was skipped, else "")
    meta.json               checkpoints, model configs, args, config hash, timing (images/s)
    gt.csv                  (prepared-set input only) ground truth of the predicted images, train.csv format
    shards/config.json      config hash of the shards below
    shards/part-<rank>-<n>.parquet    prediction rows of one shard
    shards/images-<rank>-<n>.parquet  the images of that shard: written after its part, it marks them done

Resume: a rerun with the same configuration (:func:`prediction_config`, :func:`config_hash`) skips the images
listed in ``shards/images-*`` and predicts the rest; when every image is done the shards are merged
(:meth:`ShardStore.merge`, atomically, streaming: memory flat in the number of images) into
``predictions.parquet`` / ``images.parquet`` and removed (``keep_shards`` keeps them). Shards of another
configuration (other checkpoint files, TTA, mask size, input size, score floor, precision or image list) are
never mixed: the run stops with an error unless ``restart`` is set, which deletes them.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from . import files as lfiles
from . import prediction_table as lpred

__all__ = ["PREDICT_FORMAT", "IMAGE_COLUMNS", "ROW_GROUP_ROWS", "prediction_config", "config_hash", "ShardStore"]

PREDICT_FORMAT = "imat-predictions/2"
# The images table of a shard and of images.parquet; ``error``: why the image could not be read ("" if it was).
IMAGE_COLUMNS = ["image_id", "orig_height", "orig_width", "error"]
# A row group of predictions.parquet is closed at the first image boundary once it holds this many rows (an image
# with more rows is one group): a reader holds one row group (about 1024 x 7 KB of mask PNGs) at a time; 06 reads
# chunks of about as many rows (lib/table_stream.py).
ROW_GROUP_ROWS = 1024
_SHARD_RE = re.compile(r"^(part|images)-(\d+)-(\d+)\.parquet$")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prediction_config(checkpoints: Sequence[Path], names: Sequence[str], images: pd.DataFrame, source: dict,
                      input_long_side: int, views: Sequence[tuple[float, bool]], tta_iou: float, mask_size: int,
                      score_floor: float, amp: str) -> dict:
    """Everything that changes the stored predictions (what the shards' config hash covers)."""
    ids_hash = hashlib.sha256("\n".join(images["image_id"]).encode()).hexdigest()
    return {
        "format": PREDICT_FORMAT,
        "models": [{"name": n, "checkpoint": str(Path(p).resolve()), "sha256": _file_sha256(Path(p))}
                   for n, p in zip(names, checkpoints)],
        "source": source, "num_images": len(images), "image_ids_sha256": ids_hash,
        "input_long_side": int(input_long_side), "tta_views": [[s, bool(f)] for s, f in views],
        "tta_iou": float(tta_iou), "mask_size": int(mask_size), "score_floor": float(score_floor), "amp": amp,
    }


def config_hash(config: dict) -> str:
    return hashlib.sha256(lfiles.to_json(config, indent=None).encode()).hexdigest()[:16]


class ShardStore:
    """The ``shards/`` folder of a 05 output directory (see the module docstring)."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir) / "shards"

    def _files(self) -> dict[tuple[str, int, int], Path]:
        out = {}
        if self.dir.is_dir():
            for f in self.dir.iterdir():
                m = _SHARD_RE.match(f.name)
                if m:
                    out[(m[1], int(m[2]), int(m[3]))] = f
        return out

    def check_config(self, chash: str, config: dict, restart: bool = False) -> str:
        """Adopt or verify the shards' configuration. Returns "fresh" or "resume".

        Raises ``ValueError`` when shards of another configuration exist (unless ``restart``: deleted).
        """
        cfg_path = self.dir / "config.json"
        if self.dir.exists() and restart:
            shutil.rmtree(self.dir)
        if cfg_path.is_file():
            old = lfiles.read_json(cfg_path)
            if old.get("config_hash") != chash:
                diff = sorted(k for k in set(old.get("config", {})) | set(config)
                              if old.get("config", {}).get(k) != config.get(k))
                raise ValueError(
                    f"{self.dir} holds shards of another prediction configuration (hash {old.get('config_hash')}, "
                    f"this run {chash}; differing: {', '.join(diff) or '?'}). Rerun with --restart to delete them, "
                    f"or use another --out-dir")
            return "resume" if self._files() else "fresh"
        if self._files():
            raise ValueError(f"{self.dir} holds shards without config.json; rerun with --restart to delete them")
        lfiles.atomic_write_json(cfg_path, {"config_hash": chash, "config": config})
        return "fresh"

    def remove_orphans(self) -> int:
        """Delete prediction parts whose images file is missing (a run stopped between the two writes)."""
        files = self._files()
        n = 0
        for (kind, r, k), f in files.items():
            if kind == "part" and ("images", r, k) not in files:
                f.unlink(missing_ok=True)
                n += 1
        return n

    def done(self) -> pd.DataFrame:
        """``image_id, orig_height, orig_width, rank, shard`` of every image a finished shard holds."""
        frames = []
        for (kind, r, k), f in sorted(self._files().items()):
            if kind == "images":
                frames.append(pd.read_parquet(f).assign(rank=r, shard=k))
        if not frames:
            return pd.DataFrame({"image_id": pd.Series([], dtype=str), "orig_height": pd.Series([], dtype="int32"),
                                 "orig_width": pd.Series([], dtype="int32"), "error": pd.Series([], dtype=str),
                                 "rank": [], "shard": []})
        return pd.concat(frames, ignore_index=True).drop_duplicates("image_id", keep="first")

    def next_index(self, rank: int) -> int:
        ks = [k for (_, r, k) in self._files() if r == rank]
        return max(ks) + 1 if ks else 0

    def write(self, rank: int, index: int, rows: list[dict], images: pd.DataFrame) -> None:
        """Write one shard: its rows, then (the done marker) its images, each atomically."""
        with lfiles.atomic_path(self.dir / f"part-{rank}-{index:05d}.parquet", suffix=".parquet") as tmp:
            lpred.make_table(rows).to_parquet(tmp, index=False)
        with lfiles.atomic_path(self.dir / f"images-{rank}-{index:05d}.parquet", suffix=".parquet") as tmp:
            images = images.assign(error=images["error"] if "error" in images else "")
            images[IMAGE_COLUMNS].reset_index(drop=True).to_parquet(tmp, index=False)

    def merge(self, path: str | Path, image_ids: Sequence[str], model_order: Sequence[str],
              row_group_rows: int = ROW_GROUP_ROWS) -> tuple[pd.DataFrame, dict[str, int]]:
        """Write the prediction rows of ``image_ids`` from the shards to ``path`` (atomically): in the order of
        ``image_ids``, then of ``model_order`` (other models after), then by score descending, ties in their
        shard's order; only the rows of the shard that owns an image (the first in (rank, shard) order listing
        it). Returns the images table (``IMAGE_COLUMNS``, in the order of ``image_ids``) and the number of rows
        of each model.

        A streaming k-way merge (:class:`_Part`): a shard's part is opened when its first image comes up, read
        in batches as its images pass and dropped after its last, so memory holds a batch or two of each part
        whose image range is open (about one per rank: a rank's shard holds a run of every ``world``-th image)
        and one row group, whatever the number of images. Row groups hold whole images, each closed at an image
        boundary once it has ``row_group_rows`` rows.
        The file equals ``make_table(all rows)`` sorted so and written by ``to_parquet(index=False)``
        (same columns, dtypes and pandas metadata). ``ValueError`` for images not predicted yet, or a part
        that is not a prediction table.
        """
        done = self.done().set_index("image_id")
        missing = [i for i in image_ids if i not in done.index]
        if missing:
            raise ValueError(f"{self.dir}: {len(missing)} images not predicted yet (e.g. {missing[:3]})")
        owner = {i: (int(done.at[i, "rank"]), int(done.at[i, "shard"])) for i in image_ids}
        files = self._files()
        parts = {(r, k): f for (kind, r, k), f in files.items() if kind == "part" and ("images", r, k) in files}
        last = {owner[i]: n for n, i in enumerate(image_ids)}  # owning shard -> position of its last image
        schema = _table_schema(any([_part_has_attrs(parts[o]) for o in last if o in parts]))
        counts: Counter = Counter()
        with lfiles.atomic_path(path, suffix=".parquet") as tmp:
            _write_whole_images(tmp, schema, _merged_images(parts, owner, last, list(image_ids), model_order,
                                                            schema, counts), row_group_rows)
        images = done.loc[list(image_ids), ["orig_height", "orig_width", "error"]].reset_index()
        images = images.astype({"orig_height": "int32", "orig_width": "int32"})
        return images, dict(counts)

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _part_has_attrs(path: Path) -> bool:
    """Whether a shard's part stores attribute scores (its ``attr_scores`` is not all null); ``ValueError``
    naming the file when it is not a prediction table."""
    schema = pq.read_schema(path)
    missing = [c for c in lpred.COLUMNS if c not in schema.names]
    if missing:
        raise ValueError(f"{path}: not a prediction table (missing columns {missing})")
    return schema.field("attr_scores").type != pa.null()


def _table_schema(attrs: bool) -> pa.Schema:
    """The Arrow schema (pandas metadata included) ``to_parquet(index=False)`` gives a non-empty
    :func:`lib.prediction_table.make_table`: ``attr_scores`` list<double>, or null when no row has them."""
    row = {c: 0 for c in lpred.COLUMNS} | {"image_id": "", "model": "", "mask_png": b"",
                                           "attr_scores": [0.0] if attrs else None}
    return pa.Schema.from_pandas(lpred.make_table([row]), preserve_index=False)


class _Part:
    """One shard part during the merge: the order of the rows of the images its shard owns (sorted by image
    position, model order, score descending; stable), found from its ``image_id, model, score`` columns; its
    rows are read in batches of ``batch_rows`` as its images come up, and a batch is dropped once no image
    still to come has a row in it (all of them are kept for a part not written in image order)."""

    def __init__(self, path: Path | None, key: tuple[int, int], owner: dict, pos: dict, mpos: dict,
                 batch_rows: int = 1024):
        keys = pq.read_table(path, columns=["image_id", "model", "score"]) if path is not None else None
        ids = keys.column("image_id").to_pylist() if keys is not None else []
        rows = np.flatnonzero(np.array([owner.get(i) == key for i in ids], bool))
        models = keys.column("model").to_pylist() if len(rows) else []
        at = np.array([pos[ids[j]] for j in rows], np.int64)
        model_at = np.array([mpos.get(models[j], len(mpos)) for j in rows], np.int64)
        score = keys.column("score").to_numpy().astype(np.float64)[rows] if len(rows) else np.zeros(0)
        order = np.lexsort((-score, model_at, at))
        self.rows, self.at = rows[order], at[order]  # file row numbers in merged order, their image positions
        self.need = np.minimum.accumulate(self.rows[::-1])[::-1]  # the lowest row needed from each on
        self.counts = Counter(models[j] for j in rows)
        self.batches = pq.ParquetFile(path, buffer_size=1 << 20, pre_buffer=False).iter_batches(
            batch_rows, columns=lpred.COLUMNS) if len(rows) else iter(())
        self.held: list[tuple[int, pa.RecordBatch]] = []  # (first row, batch)
        self.end = 0  # rows read so far

    def image(self, n: int, schema: pa.Schema) -> pa.Table:
        """The rows of the image at position ``n`` in merged order, cast to ``schema`` (a copy)."""
        a, b = np.searchsorted(self.at, [n, n + 1])
        if a == b:
            return schema.empty_table()
        rows = self.rows[a:b]
        lo, hi = int(rows.min()), int(rows.max()) + 1
        while self.end < hi:
            batch = next(self.batches)
            self.held.append((self.end, batch))
            self.end += batch.num_rows
        pieces = [batch.slice(max(lo - s, 0), min(hi, s + batch.num_rows) - max(lo, s))
                  for s, batch in self.held if s < hi and s + batch.num_rows > lo]
        table = pa.Table.from_batches(pieces).select(lpred.COLUMNS).take(rows - lo).cast(schema)
        keep = self.need[b] if b < len(self.rows) else self.end
        self.held = [(s, batch) for s, batch in self.held if s + batch.num_rows > keep]
        return table


def _merged_images(parts: dict, owner: dict, last: dict, image_ids: list[str], model_order: Sequence[str],
                   schema: pa.Schema, counts: Counter) -> Iterator[pa.Table]:
    """The sorted rows of each of ``image_ids`` in turn (an empty table for an image without rows), each part
    opened when its first image comes up and dropped after its last (``last``: owning shard -> position of its
    last image); ``counts`` gets the rows of each model."""
    pos = {iid: n for n, iid in enumerate(image_ids)}
    mpos = {m: n for n, m in enumerate(model_order)}
    held: dict[tuple[int, int], _Part] = {}
    for n, iid in enumerate(image_ids):
        key = owner[iid]
        if key not in held:
            held[key] = _Part(parts.get(key), key, owner, pos, mpos)
            counts.update(held[key].counts)
        yield held[key].image(n, schema)
        if last[key] == n:
            del held[key]


def _write_whole_images(path: Path, schema: pa.Schema, per_image: Iterable[pa.Table], group_rows: int) -> None:
    """Write the tables of ``per_image`` (one image's rows each, in order) to ``path`` with ``schema``: row
    groups of whole images, each closed once it has ``group_rows`` rows. No row at all: the empty
    :func:`lib.prediction_table.make_table` as ``to_parquet`` writes it."""
    writer, pending, n = None, [], 0

    def flush():
        nonlocal writer, pending, n
        writer = writer or pq.ParquetWriter(path, schema)
        writer.write_table(pa.concat_tables(pending), row_group_size=n)
        pending, n = [], 0

    try:
        for t in per_image:
            if t.num_rows:
                pending.append(t)
                n += t.num_rows
            if n >= group_rows:
                flush()
        if n:
            flush()
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        lpred.make_table([]).to_parquet(path, index=False)
