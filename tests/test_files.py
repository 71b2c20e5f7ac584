"""lib/files.py: atomic writes, JSON and JSONL helpers, output-folder locks, folder sizes."""
import contextlib
import os
import stat

import numpy as np
import pytest

from lib import files as lfiles


def test_atomic_write_replaces_only_on_success(tmp_path):
    p = tmp_path / "a.json"
    lfiles.atomic_write_json(p, {"x": np.int64(3), "y": np.float32(0.5), "z": np.arange(2)})
    assert lfiles.read_json(p) == {"x": 3, "y": 0.5, "z": [0, 1]}
    with pytest.raises(RuntimeError):
        with lfiles.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert lfiles.read_json(p)["x"] == 3
    assert [q.name for q in tmp_path.iterdir()] == ["a.json"]  # no temporary left behind


def test_atomic_files_get_normal_permissions(tmp_path):
    p = tmp_path / "b.txt"
    lfiles.atomic_write_text(p, "hi")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~umask


def test_jsonl_skips_torn_last_line(tmp_path):
    p = tmp_path / "m.jsonl"
    lfiles.append_jsonl(p, {"a": 1})
    lfiles.append_jsonl(p, {"a": 2})
    with open(p, "a") as f:
        f.write('{"a": 3')
    assert lfiles.read_jsonl(p) == [{"a": 1}, {"a": 2}]
    assert lfiles.read_jsonl(tmp_path / "missing.jsonl") == []
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        lfiles.read_json(tmp_path / "bad.json")


# ------------------------------------------------------------------ reliability (docs/RELIABILITY.md)
def test_append_after_a_torn_line_keeps_the_new_record(tmp_path):
    p = tmp_path / "m.jsonl"
    lfiles.append_jsonl(p, {"a": 1})
    with open(p, "ab") as f:
        f.write(b'{"a": 2, "b": "\xc3')  # killed mid-write, even inside a multi-byte character
    lfiles.append_jsonl(p, {"a": 3})
    lfiles.append_jsonl(p, {"a": 4})
    assert lfiles.read_jsonl(p) == [{"a": 1}, {"a": 3}, {"a": 4}]


def test_remove_temp_files_takes_only_atomic_temporaries(tmp_path):
    (tmp_path / ".tmp.ann.x1.json").write_text("{")
    (tmp_path / ".tmp.checkpoint.y.pth").write_bytes(b"\0")
    (tmp_path / "a.json").write_text("{}")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / ".tmp.dir").mkdir()
    gone = lfiles.remove_temp_files(tmp_path)
    assert sorted(p.name for p in gone) == [".tmp.ann.x1.json", ".tmp.checkpoint.y.pth"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".tmp.dir", "a.json"]
    assert lfiles.remove_temp_files(tmp_path / "missing") == []


def test_atomic_write_on_a_full_disk_raises_and_keeps_the_old_file(tmp_path):
    import subprocess
    import sys

    from conftest import REPO, file_size_limit

    p = tmp_path / "a.bin"
    p.write_bytes(b"old")
    code = f"from lib import files as lfiles; lfiles.atomic_write_bytes({str(p)!r}, b'x' * 100000)"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       preexec_fn=file_size_limit(10000))
    assert r.returncode != 0 and "OSError: [Errno 27] File too large" in r.stderr
    assert p.read_bytes() == b"old" and [q.name for q in tmp_path.iterdir()] == ["a.bin"]


def test_atomic_write_when_fsync_reports_no_space(tmp_path, monkeypatch):
    import errno

    p = tmp_path / "a.json"
    lfiles.atomic_write_json(p, {"v": 1})

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(lfiles.os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        lfiles.atomic_write_json(p, {"v": 2})
    assert lfiles.read_json(p) == {"v": 1} and [q.name for q in tmp_path.iterdir()] == ["a.json"]


def test_lock_dir_is_exclusive_and_released_by_close(tmp_path):
    first = lfiles.lock_dir(tmp_path, "test run")
    with pytest.raises(RuntimeError, match=r"in use by another test run .*\.lock"):
        lfiles.lock_dir(tmp_path, "test run")
    first.close()
    lfiles.lock_dir(tmp_path).close()


def test_claim_dir_locks_and_cleans(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    half = out / f"{lfiles.TEMP_PREFIX}checkpoint.pth"
    half.write_bytes(b"x")
    with contextlib.ExitStack() as held:
        assert lfiles.claim_dir(out, "training run", held) == out
        assert not half.exists()
        with contextlib.ExitStack() as other, pytest.raises(RuntimeError, match="in use by another training run"):
            lfiles.claim_dir(out, "training run", other)


def test_dir_size_counts_file_bytes_recursively(tmp_path):
    assert lfiles.dir_size(tmp_path / "missing") == 0
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").mkdir()
    (tmp_path / "x.bin").write_bytes(b"x" * 10)
    (tmp_path / "a" / "y.bin").write_bytes(b"y" * 100)
    (tmp_path / "a" / "b" / "z.bin").write_bytes(b"z" * 1000)
    os.symlink(tmp_path / "a", tmp_path / "link")  # not followed: counted once
    assert lfiles.dir_size(tmp_path) == 1110
    assert lfiles.dir_size(tmp_path / "a") == 1100 and lfiles.dir_size(str(tmp_path / "x.bin")) == 10
