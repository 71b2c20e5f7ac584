"""lib/io.py: atomic writes, JSON and JSONL helpers."""
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
