"""Atomic file writes and small I/O helpers shared by every stage (and the stages' worker-process map).

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


def raised_by_project(error: BaseException) -> bool:
    """True when ``error`` was raised by this project's own code, whose messages name the file, row or flag at
    fault (a script prints them as one line); False when it comes from inside a library (numpy, pandas,
    torch, ...): a bug, to be shown with its traceback."""
    tb, last = error.__traceback__, None
    while tb is not None:
        last, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    if last is None:
        return False
    root = Path(__file__).resolve().parents[1]
    return Path(last).resolve().is_relative_to(root) and "site-packages" not in last


class WorkerDiedError(RuntimeError):
    """A worker process of :func:`process_map` died (killed by a signal, crashed, or exited) on a task."""


@contextlib.contextmanager
def process_map(fn, tasks, workers: int, ordered: bool = True, chunksize: int = 1, on_crash=None, name=repr):
    """Yield an iterator of ``fn(task)`` over ``tasks``: in this process when ``workers <= 1``, else in
    ``workers`` forked processes (``fn`` must be a module-level function), in task order or, when not
    ``ordered``, as they finish. Tasks are read lazily, at most ``workers * max(2, chunksize)`` in flight, so
    memory stays flat in the number of tasks (each task is its own submission; ``chunksize`` sets the window).
    An exception raised by ``fn`` reaches the caller as it is.

    A worker that dies (killed by a signal: an out-of-memory kill, a segfault in native code; or an exit)
    never hangs the map: every task that was in flight is run again alone, in a process of its own, which
    finds the one that kills its process. That task's result is ``on_crash(task, reason)`` (e.g. a problem
    row, and the map goes on), or without ``on_crash`` :class:`WorkerDiedError` naming it (``name(task)``)
    is raised. The other tasks' results are what they would have been. On an error (or an interrupt) inside
    the block the workers are stopped.
    """
    if workers <= 1:
        yield map(fn, tasks)
        return
    gen = _pool_results(fn, tasks, workers, ordered, workers * max(2, int(chunksize)), on_crash, name)
    try:
        yield gen
    finally:
        gen.close()  # runs _pool_results' cleanup: the pool is shut down


def _pool_results(fn, tasks, workers: int, ordered: bool, window: int, on_crash, name):
    """The iterator of :func:`process_map` with a pool: a window of futures, rebuilt after a worker died."""
    import collections
    import concurrent.futures as cf
    import multiprocessing as mp
    from concurrent.futures.process import BrokenProcessPool

    ctx = mp.get_context("fork")
    todo = iter(tasks)
    pending: collections.deque = collections.deque()  # (task, future), in task order
    pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
    try:
        while True:
            broken = False
            for task in todo:
                try:
                    fut = pool.submit(fn, task)
                except BrokenProcessPool:  # a worker died since the last look
                    fut, broken = None, True
                pending.append((task, fut))
                if broken or len(pending) >= window:
                    break
            if not pending:
                return
            if not broken:
                if not ordered:
                    cf.wait([f for _, f in pending], return_when=cf.FIRST_COMPLETED)
                k = 0 if ordered else next(i for i, (_, f) in enumerate(pending) if f.done())
                if not isinstance(pending[k][1].exception(), BrokenProcessPool):
                    fut = pending[k][1]
                    del pending[k]
                    yield fut.result()
                    continue
            pool.shutdown(wait=True, cancel_futures=True)
            for task, fut in list(pending):  # in order: what finished stays, the rest reruns alone
                pending.popleft()
                done = (fut is not None and fut.done() and not fut.cancelled()
                        and not isinstance(fut.exception(), BrokenProcessPool))
                yield fut.result() if done else run_alone(fn, task, on_crash, name, ctx)
            pool = cf.ProcessPoolExecutor(workers, mp_context=ctx)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _send_result(fn, task, conn) -> None:
    import sys

    if "torch" in sys.modules:  # as PyTorch's DataLoader workers: a forked child's OpenMP pool would deadlock
        sys.modules["torch"].set_num_threads(1)
    try:
        conn.send((True, fn(task)))
    except BaseException as e:  # noqa: BLE001 - the parent re-raises it
        conn.send((False, e))
    finally:
        conn.close()


@contextlib.contextmanager
def worker_deaths_seen_in_next():
    """Inside the block a dead DataLoader worker is reported by the loader's ``next()`` ("DataLoader worker (pid
    ...) exited unexpectedly", its status check every few seconds), not by PyTorch's SIGCHLD handler, which
    raises "... is killed by signal" wherever the main thread is, in the middle of the caller's work on a batch.
    Enter it after ``iter(loader)`` (which installs that handler); restored after; a no-op outside the main
    thread."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        yield
    finally:
        signal.signal(signal.SIGCHLD, old)


LOADER_PREFETCH = 2  # batches each DataLoader worker reads ahead (PyTorch's default prefetch_factor)


def loader_worker_died(error: BaseException) -> bool:
    """True for PyTorch's error when a DataLoader worker process died ("DataLoader worker (pid ...) exited
    unexpectedly", seen inside :func:`worker_deaths_seen_in_next`)."""
    return isinstance(error, RuntimeError) and "DataLoader worker (pid" in str(error)


def run_alone(fn, task, on_crash=None, name=repr, ctx=None):
    """``fn(task)`` in a forked process of its own (``fn`` may be any callable: nothing is pickled but the result);
    ``on_crash(task, reason)`` (or :class:`WorkerDiedError` naming ``name(task)``) when that process dies before
    it answers, e.g. ``reason`` = "killed by SIGSEGV (a crash in native code)"."""
    import multiprocessing as mp
    import signal

    ctx = ctx or mp.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_send_result, args=(fn, task, send), daemon=True)
    proc.start()
    send.close()
    try:
        answer = recv.recv()
    except EOFError:
        answer = None
    proc.join()
    if answer is not None:
        ok, value = answer
        if ok:
            return value
        raise value
    code = proc.exitcode
    if code is not None and code < 0:
        sig = signal.Signals(-code).name
        reason = f"killed by {sig}" + {"SIGKILL": " (e.g. the out-of-memory killer)",
                                      "SIGSEGV": " (a crash in native code)"}.get(sig, "")
    else:
        reason = f"exited with code {code}"
    if on_crash is not None:
        return on_crash(task, reason)
    raise WorkerDiedError(f"a worker process died on {name(task)}: {reason}")


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

