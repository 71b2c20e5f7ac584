"""lib/io.py: atomic writes, JSON and JSONL helpers."""
import contextlib
import os
import stat

import numpy as np
import pytest

from lib import io as lio


def test_atomic_write_replaces_only_on_success(tmp_path):
    p = tmp_path / "a.json"
    lio.atomic_write_json(p, {"x": np.int64(3), "y": np.float32(0.5), "z": np.arange(2)})
    assert lio.read_json(p) == {"x": 3, "y": 0.5, "z": [0, 1]}
    with pytest.raises(RuntimeError):
        with lio.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert lio.read_json(p)["x"] == 3
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_atomic_files_get_normal_permissions(tmp_path):
    p = tmp_path / "b.txt"
    lio.atomic_write_text(p, "hi")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_jsonl_skips_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    lio.append_jsonl(p, {"a": 1})
    lio.append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3')
    assert lio.read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert lio.read_jsonl(tmp_path / "missing.jsonl") == []
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        lio.read_json(tmp_path / "bad.json")


# ------------------------------------------------------------------ reliability (docs/RELIABILITY.md)
def test_append_after_a_torn_line_keeps_the_new_record(tmp_path):
    p = tmp_path / "m.jsonl"
    lio.append_jsonl(p, {"a": 1})
    with open(p, "ab") as f:
        f.write(b'{"a": 2, "b": "\xc3')  # killed mid-write, even inside a multi-byte character
    lio.append_jsonl(p, {"a": 3})
    lio.append_jsonl(p, {"a": 4})
    assert lio.read_jsonl(p) == [{"a": 1}, {"a": 3}, {"a": 4}]


def test_remove_temp_files_takes_only_atomic_temporaries(tmp_path):
    (tmp_path / ".tmp.ann.x1.json").write_text("{")
    (tmp_path / ".tmp.checkpoint.y.pth").write_bytes(b"\0")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / ".tmp.dir").mkdir()
    gone = lio.remove_temp_files(tmp_path)
    assert sorted(p.name for p in gone) == [".tmp.ann.x1.json", ".tmp.checkpoint.y.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".tmp.dir", "a.json"]
    assert lio.remove_temp_files(tmp_path / "missing") == []


def test_atomic_write_on_a_full_disk_raises_and_keeps_the_old_file(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, file_size_limit

    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    code = f"from lib import io as lio; lio.atomic_write_bytes({str(p)!r}, b'x' * 100000)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       preexec_fn=file_size_limit(10000))
    assert r.returncode != 0 and "OSError: [Errno 27] File too large" in r.stderr
    assert p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_when_fsync_reports_no_space(tmp_path, monkeypatch):
    import errno

    p = tmp_path / "a.json"
    lio.atomic_write_json(p, {"v": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lio.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        lio.atomic_write_json(p, {"v": 2})
    assert lio.read_json(p) == {"v": 1} and [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_lock_dir_is_exclusive_and_released_by_close(tmp_path):
    first = lio.lock_dir(tmp_path, "test run")
    with pytest.raises(RuntimeError, match=r"in use by another test run .*\.lock"):
        lio.lock_dir(tmp_path, "test run")
    first.close()
    lio.lock_dir(tmp_path).close()


def _square_or_fail(x):
    if x == 5:
        raise ValueError("task 5 is bad")
    return x * x, os.getpid()


@pytest.mark.parametrize("workers", [1, 2])
def test_process_map_ordered_and_unordered(workers):
    with lio.process_map(_square_or_fail, range(5), workers, chunksize=2) as it:
        got = list(it)
    assert [v for v, _ in got] == [0, 1, 4, 9, 16]  # ordered: the tasks' order
    assert ({pid for _, pid in got} == {os.getpid()}) == (workers == 1)  # in-process only with one worker
    with lio.process_map(_square_or_fail, range(5), workers, ordered=False) as it:
        assert sorted(v for v, _ in it) == [0, 1, 4, 9, 16]


@pytest.mark.parametrize("workers", [1, 2])
def test_process_map_passes_a_worker_error_on(workers):
    with pytest.raises(ValueError, match="task 5 is bad"):
        with lio.process_map(_square_or_fail, range(8), workers) as it:
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
    with lio.process_map(_die_on_3, tasks, 2, ordered=ordered,
                         on_crash=lambda task, reason: f"task {task[0]}: {reason}") as it:
        got = list(it)
    crashed = [g for g in got if isinstance(g, str)]
    assert len(crashed) == 1 and crashed[0].startswith(f"task 3: killed by {sig} (")
    numbers = [g for g in got if not isinstance(g, str)]
    assert (numbers if ordered else sorted(numbers)) == [x * x for x in range(10) if x != 3]
    assert not ordered or got.index(crashed[0]) == 3
    with pytest.raises(lio.WorkerDiedError, match=rf"a worker process died on task three: killed by {sig}"):
        with lio.process_map(_die_on_3, tasks, 2, ordered=ordered,
                             name=lambda t: "task three" if t[0] == 3 else str(t)) as it:
            list(it)


def test_run_alone_after_a_parallel_torch_op_in_the_parent(no_hang):
    """A forked child's torch ops after the parent used its OpenMP pool: one thread there, no deadlock."""
    import torch

    torch.set_num_threads(2)
    torch.ones(3_000_000).add_(1)  # the parent's thread pool is up
    got = lio.run_alone(lambda n: float(torch.ones(768, n, 3).permute(2, 0, 1).contiguous().sum()), 1024)
    assert got == 768 * 1024 * 3


def test_process_map_reads_tasks_lazily():
    """Only a window of tasks is in flight: an endless task stream is fine (memory flat in the task count)."""
    import itertools

    with lio.process_map(_square_or_fail, (x for x in itertools.count() if x != 5), 2, chunksize=2) as it:
        first = [v for v, _ in itertools.islice(it, 12)]
    assert first == [x * x for x in range(13) if x != 5]


def test_raised_by_project_tells_our_messages_from_library_errors(tmp_path):
    """05/06 print our own ValueErrors as one line; one raised inside a library keeps its traceback."""
    import pandas as pd

    import json

    from lib import rle

    with pytest.raises(ValueError, match="not sorted") as ours:
        rle.decode("5 3 1 2", (4, 4))
    assert lio.raised_by_project(ours.value)
    with pytest.raises(ValueError) as theirs:
        json.loads("{")
    assert not lio.raised_by_project(theirs.value)
    with pytest.raises(FileNotFoundError) as missing:
        pd.read_parquet(tmp_path / "missing.parquet")
    assert not lio.raised_by_project(missing.value)


def test_claim_dir_locks_and_cleans(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    half = out / f"{lio.TEMP_PREFIX}checkpoint.pth"
    half.write_bytes(b"x")
    with contextlib.ExitStack() as held:
        assert lio.claim_dir(out, "training run", held) == out
        assert not half.exists()
        with contextlib.ExitStack() as other, pytest.raises(RuntimeError, match="in use by another training run"):
            lio.claim_dir(out, "training run", other)


def test_dir_size_counts_file_bytes_recursively(tmp_path):
    assert lio.dir_size(tmp_path / "missing") == 0
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "x.bin").write_bytes(b"x" * 10)
    (tmp_path / "a" / "y.bin").write_bytes(b"y" * 100)
    (tmp_path / "a" / "b" / "z.bin").write_bytes(b"z" * 1000)
    os.symlink(tmp_path / "a", tmp_path / "link")  # not followed: counted once
    assert lio.dir_size(tmp_path) == 1110
    assert lio.dir_size(tmp_path / "a") == 1100 and lio.dir_size(str(tmp_path / "x.bin")) == 10
