"""Worker processes that never hang a stage: :func:`process_map` (01 and 06's passes over the images) reruns the
tasks of a worker that died, each alone (:func:`run_alone`), to find the one that kills its process; DataLoader
workers' deaths are reported where the loader is read (:func:`worker_deaths_seen_in_next`,
:func:`loader_worker_died`)."""
from __future__ import annotations

import contextlib


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
