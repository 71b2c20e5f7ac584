"""The resumable shards of a 05 output directory, and the configuration hash that keeps runs apart.

Output directory (``out_dir``) of ``05_predict.py``::

    predictions.parquet     all rows (lib.prediction_table format), ordered by image, model, score (desc)
    images.parquet          image_id, orig_height, orig_width, error of every predicted image (even with no
                            rows; ``error``: why an unreadable image was skipped, else "")
    meta.json               checkpoints, model configs, args, config hash, timing (images/s)
    gt.csv                  (prepared-set input only) ground truth of the predicted images, train.csv format
    shards/config.json      config hash of the shards below
    shards/part-<rank>-<n>.parquet    prediction rows of one shard
    shards/images-<rank>-<n>.parquet  the images of that shard: written after its part, it marks them done

Resume: a rerun with the same configuration (:func:`prediction_config`, :func:`config_hash`) skips the images
listed in ``shards/images-*`` and predicts the rest; when every image is done the shards are merged
(:meth:`ShardStore.merge`, atomically) into ``predictions.parquet`` / ``images.parquet`` and removed
(``keep_shards`` keeps them). Shards of another configuration (other checkpoint files, TTA, mask size, input
size, score floor, precision or image list) are never mixed: the run stops with an error unless ``restart``
is set, which deletes them.
"""
from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import io as lio
from . import prediction_table as lpred

__all__ = ["PREDICT_FORMAT", "IMAGE_COLUMNS", "prediction_config", "config_hash", "ShardStore"]

PREDICT_FORMAT = "imat-predictions/2"
# The images table of a shard and of images.parquet; ``error``: why the image could not be read ("" if it was).
IMAGE_COLUMNS = ["image_id", "orig_height", "orig_width", "error"]
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
    return hashlib.sha256(lio.to_json(config, indent=None).encode()).hexdigest()[:16]


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
            old = lio.read_json(cfg_path)
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
        lio.atomic_write_json(cfg_path, {"config_hash": chash, "config": config})
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
        with lio.atomic_path(self.dir / f"part-{rank}-{index:05d}.parquet", suffix=".parquet") as tmp:
            lpred.make_table(rows).to_parquet(tmp, index=False)
        with lio.atomic_path(self.dir / f"images-{rank}-{index:05d}.parquet", suffix=".parquet") as tmp:
            images = images.assign(error=images["error"] if "error" in images else "")
            images[IMAGE_COLUMNS].reset_index(drop=True).to_parquet(tmp, index=False)

    def merge(self, image_ids: Sequence[str], model_order: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(predictions, images) of ``image_ids`` from the shards, in image order, model order, score desc."""
        done = self.done().set_index("image_id")
        missing = [i for i in image_ids if i not in done.index]
        if missing:
            raise ValueError(f"{self.dir}: {len(missing)} images not predicted yet (e.g. {missing[:3]})")
        owner = {i: (int(done.at[i, "rank"]), int(done.at[i, "shard"])) for i in image_ids}
        parts = []
        files = self._files()
        for (kind, r, k), f in sorted(files.items()):
            if kind == "part" and ("images", r, k) in files:
                t = pd.read_parquet(f)
                if len(t):
                    t = t[[owner.get(i) == (r, k) for i in t["image_id"]]]
                    parts.append(t)
        pos = {iid: n for n, iid in enumerate(image_ids)}
        mpos = {m: n for n, m in enumerate(model_order)}
        table = pd.concat(parts, ignore_index=True) if parts else lpred.make_table([])
        if len(table):
            table = table.assign(_i=table["image_id"].map(pos), _m=table["model"].map(mpos).fillna(len(mpos)),
                                 _s=-table["score"].astype(np.float64))
            table = table.sort_values(["_i", "_m", "_s"], kind="stable").drop(columns=["_i", "_m", "_s"])
        table = table[lpred.COLUMNS].astype(lpred.DTYPES) if len(table) else lpred.make_table([])
        images = done.loc[list(image_ids), ["orig_height", "orig_width", "error"]].reset_index()
        images = images.astype({"orig_height": "int32", "orig_width": "int32"})
        return table.reset_index(drop=True), images

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
