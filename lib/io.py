"""Atomic file writes and small I/O helpers shared by every stage.

Every artifact is written to a temporary file in the same directory and then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash or a
full disk never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    ``suffix`` (default: the target's suffix) lets libraries that look at the
    extension (cv2.imwrite, pandas.to_parquet) pick the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp.{path.stem}.", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; artifacts get the usual permissions
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json(obj, indent: int | None = 2) -> str:
    """JSON text for ``obj``; numpy scalars/arrays and Paths are converted."""
    return json.dumps(obj, indent=indent, default=_json_default)


def atomic_write_json(path: str | Path, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, to_json(obj, indent) + "\n")


def read_json(path: str | Path):
    """Read a JSON file, raising ``ValueError`` naming the file if it is not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line (a complete line per write; readers skip a torn last line)."""
    with open(path, "a") as f:
        f.write(to_json(record, indent=None) + "\n")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL log, ignoring a torn (incomplete) final line."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
