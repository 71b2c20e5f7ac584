"""Files every stage writes and reads: atomic writes (a temporary file renamed over the target), JSON and JSONL,
an output folder's lock, temporary files a killed run left, folder sizes.

Every artifact is written to a temporary file in the same directory and then
renamed over the target (``os.replace`` is atomic on POSIX), so a crash or a
full disk never leaves a half-written file under the final name.
"""
from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from pathlib import Path

import numpy as np


TEMP_PREFIX = ".tmp."  # temporary files of atomic_path: ``.tmp.<stem>.<random><suffix>`` beside the target


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it to ``path`` only if the block succeeds.

    ``suffix`` (default: the target's suffix) lets libraries that look at the
    extension (cv2.imwrite, pandas.to_parquet) pick the right format.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{path.stem}.", suffix=path.suffix if suffix is None else suffix,
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


def lock_dir(directory: str | Path, what: str = "run"):
    """Take the exclusive lock of an output directory (``<directory>/.lock``, ``flock``) for this process.

    Returns the open lock file: the lock lasts while it is referenced (close it, or let the process end;
    a killed process releases it too). Raises ``RuntimeError`` if another process holds it, so two runs
    (e.g. a rerun while orphaned workers of a killed one still write) never interleave their files.
    """
    import fcntl

    path = Path(directory) / ".lock"
    f = open(path, "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RuntimeError(f"{directory} is in use by another {what} (it holds {path}); wait for it to end, "
                           f"stop it, or use another output directory") from None
    return f


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Delete the temporary files :func:`atomic_path` left in ``directory`` (not recursive) when a process
    was killed mid-write; return them. Call it only where no other process is writing."""
    d = Path(directory)
    gone = []
    if d.is_dir():
        for p in d.iterdir():
            if p.name.startswith(TEMP_PREFIX) and p.is_file():
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    gone.append(p)
    return gone


def dir_size(path: str | Path) -> int:
    """Bytes of the files under ``path`` (recursive; a file: its size; missing: 0), as ``du --apparent-size
    --bytes``: the files' lengths, symbolic links not followed, files that vanish while walking skipped."""
    total, todo = 0, [Path(path)]
    while todo:
        p = todo.pop()
        try:
            st = os.lstat(p)
            if stat.S_ISDIR(st.st_mode):
                todo += list(p.iterdir())
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
        except FileNotFoundError:
            continue
    return total


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one JSON line as a single write.

    If the file ends in a torn line (a process killed mid-append), a newline is written first, so the new
    record starts its own line instead of being glued to the fragment (and lost with it).
    """
    data = (to_json(record, indent=None) + "\n").encode("utf-8")
    with open(path, "ab+") as f:
        if f.tell() > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)


def read_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL log, skipping torn (incomplete) lines left by a killed writer."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def json_safe(v):
    """``v`` with Paths, numpy scalars, tuples and other objects made JSON types (dict keys as strings)."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating,)):
        return float(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def claim_dir(out_dir: str | Path, what: str, held: contextlib.ExitStack) -> Path:
    """Create ``out_dir``, fail at once (OSError naming it) when it cannot take new files, hold its lock
    (:func:`lock_dir`) in ``held`` and delete the temporary files a killed run left there."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as e:
        raise OSError(e.errno, f"--out-dir {out_dir} is not writable: {e.strerror or e}") from e
    held.enter_context(lock_dir(out_dir, what))
    remove_temp_files(out_dir)  # half-written files of a killed run (never read)
    return out_dir
