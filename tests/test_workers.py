"""lib/workers.py: the worker-process map that never hangs on a dying worker."""
import os

import pytest

from lib import workers as lworkers


def _square_or_fail(x):
    if x == 5:
        raise ValueError("task 5 is bad")
    return x * x, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_process_map_ordered_and_unordered(workers):
    with lworkers.process_map(_square_or_fail, range(5), workers, chunksize=2) as it:
        got = list(it)
    assert [v for v, _ in got] == [0, 1, 4, 9, 16]  # ordered: the tasks' order
    assert ({pid for _, pid in got} == {os.getpid()}) == (workers == 1)  # in-process only with one worker
    with lworkers.process_map(_square_or_fail, range(5), workers, ordered=False) as it:
        assert sorted(v for v, _ in it) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("workers", [1, 2])
def test_process_map_passes_a_worker_error_on(workers):
    with pytest.raises(ValueError, match="task 5 is bad"):
        with lworkers.process_map(_square_or_fail, range(8), workers) as it:
            list(it)


def _die_on_3(task):
    x, sig = task
    if x == 3:
        os.kill(os.getpid(), sig)
    return x * x


@pytest.fixture
def no_hang():
    """Fail (SIGALRM) instead of hanging forever."""
    import signal

    def alarm(*_):
        raise TimeoutError("process_map hung")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(120)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSEGV"])
def test_process_map_never_hangs_on_a_dying_worker(sig, ordered, no_hang):
    """A worker killed (SIGKILL: the OOM killer) or crashing (SIGSEGV) on task 3: the map names that task, gives
    it on_crash's result, and every other task its own result; without on_crash it raises, naming it."""
    import signal

    tasks = [(x, getattr(signal, sig)) for x in range(10)]
    with lworkers.process_map(_die_on_3, tasks, 2, ordered=ordered,
                              on_crash=lambda task, reason: f"task {task[0]}: {reason}") as it:
        got = list(it)
    crashed = [g for g in got if isinstance(g, str)]
    assert len(crashed) == 1 and crashed[0].startswith(f"task 3: killed by {sig} (")
    numbers = [g for g in got if not isinstance(g, str)]
    assert (numbers if ordered else sorted(numbers)) == [x * x for x in range(10) if x != 3]
    assert not ordered or got.index(crashed[0]) == 3
    with pytest.raises(lworkers.WorkerDiedError, match=rf"a worker process died on task three: killed by {sig}"):
        with lworkers.process_map(_die_on_3, tasks, 2, ordered=ordered,
                                  name=lambda t: "task three" if t[0] == 3 else str(t)) as it:
            list(it)


def test_run_alone_after_a_parallel_torch_op_in_the_parent(no_hang):
    """A forked child's torch ops after the parent used its OpenMP pool: one thread there, no deadlock."""
    import torch

    torch.set_num_threads(2)
    torch.ones(3_000_000).add_(1)  # the parent's thread pool is up
    got = lworkers.run_alone(lambda n: float(torch.ones(768, n, 3).permute(2, 0, 1).contiguous().sum()), 1024)
    assert got == 768 * 1024 * 3


def test_process_map_reads_tasks_lazily():
    """Only a window of tasks is in flight: an endless task stream is fine (memory flat in the task count)."""
    import itertools

    with lworkers.process_map(_square_or_fail, (x for x in itertools.count() if x != 5), 2, chunksize=2) as it:
        first = [v for v, _ in itertools.islice(it, 12)]
    assert first == [x * x for x in range(13) if x != 5]
