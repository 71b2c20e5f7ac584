"""lib/table_stream.py: sources named as 06 names them, and images read chunk by chunk from any row-group layout."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lib import prediction_table as lpred
from lib import table_stream as lstream
from test_prediction_table import _out_dir, _row


def test_read_sources_names_models_and_refuses_unfinished_runs(tmp_path):
    p = np.ones((6, 5), np.float32)
    one = _out_dir(tmp_path / "one", [_row("a.jpg", "x", p), _row("b.jpg", "y", p)], ["a.jpg", "b.jpg", "c.jpg"],
                   {"status": "done", "models": [{"name": "x"}, {"name": "y"}, {"name": "quiet"}]})
    two = _out_dir(tmp_path / "two", [_row("a.jpg", "x", p)], ["a.jpg"])
    sources, indexes, predicted = lstream.read_sources([one, two / "predictions.parquet"])
    names = [s.name for s in sources]
    assert names == ["x", "y", "quiet", f"x@{two / 'predictions.parquet'}"]  # a model listed by 05 with no rows too
    assert [s.model for s in sources] == ["x", "y", "quiet", "x"] and predicted == {"a.jpg", "b.jpg", "c.jpg"}
    assert sorted(indexes[one / "predictions.parquet"].rows) == ["a.jpg", "b.jpg"]
    assert [s.name for s in lstream.read_sources([one], models=["y"])[0]] == ["y"]
    with pytest.raises(ValueError, match=r"--models \['z'\] not in the tables"):
        lstream.read_sources([one], models=["z"])
    with pytest.raises(FileNotFoundError, match="prediction table not found"):
        lstream.read_sources([tmp_path / "none"])
    (one / "meta.json").write_text(json.dumps({"status": "partial"}))
    with pytest.raises(ValueError, match="did not finish"):
        lstream.read_sources([one])
    pd.DataFrame({"image_id": ["a.jpg"]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="other.parquet: not a prediction table"):
        lstream.read_sources([tmp_path / "other.parquet"])


def _masks_of(task, masks):
    """A map_images function: what the worker got, comparable across processes."""
    return task.image_id, {n: [(m.category, m.score, m.x0, m.y0, m.q.tobytes()) for m in ms] for n, ms in masks.items()}


@pytest.mark.parametrize("processes", [1, 2])
def test_map_images_reads_each_images_rows_from_any_row_groups(tmp_path, monkeypatch, processes):
    """Rows of an image spread over several row groups, files in different image orders, an image without rows,
    chunks smaller than the files: every image gets exactly its rows per model, in table order, above the floor."""
    monkeypatch.setattr(lstream, "CHUNK_ROWS", 5)  # chunks of a few images; set before the workers fork
    rng = np.random.default_rng(0)
    ids = [f"{i}.jpg" for i in range(9)]
    rows = []
    for k in rng.permutation(40):  # shuffled: images and models interleave over the file
        p = (rng.random((6, 5)) > 0.5).astype(np.float32)
        rows.append(_row(ids[k % 8], "xy"[k % 2], p, score=float(rng.uniform(0.05, 1))))
    table = lpred.make_table(rows)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp_path / "a.parquet", row_group_size=7)
    other = lpred.make_table([_row(i, "z", np.ones((6, 5), np.float32), 0.5) for i in reversed(ids[:5])])
    other.to_parquet(tmp_path / "b.parquet")
    sources, indexes, _ = lstream.read_sources([tmp_path / "a.parquet", tmp_path / "b.parquet"])
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 6
    tasks = [lstream.ImageTask(i, (6, 5), (6, 5)) for i in ids]
    got = dict(lstream.map_images(_masks_of, iter(tasks), len(tasks), sources, indexes, processes, floor=0.3,
                                  progress=False))
    assert list(got) == ids
    for i in ids:
        for name, t in (("x", table), ("y", table), ("z", other)):
            want = t[(t["image_id"] == i) & (t["model"] == name) & (t["score"].to_numpy() >= 0.3)]
            assert got[i][name] == [(m.category, m.score, m.x0, m.y0, m.q.tobytes()) for m in lpred.stored_masks(want)]
    assert got["8.jpg"] == {"x": [], "y": [], "z": []}
