"""lib/shards.py: the configuration hash, adopting / refusing shards, orphans, the merge order, and the streaming
merge (equal to the in-memory sort, whole images per row group, a few parts in memory)."""
import weakref

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from lib import prediction_table as lpred
from lib import shards as lshards


def _rows(image_id, model, scores):
    x0, y0, png = lpred.encode_prob(np.full((4, 4), 0.5, np.float32))
    return [{"image_id": image_id, "model": model, "category": 1, "score": s, "x1": 0, "y1": 0, "x2": 4, "y2": 4,
             "orig_height": 4, "orig_width": 4, "mask_height": 4, "mask_width": 4, "mask_x0": x0, "mask_y0": y0,
             "mask_png": png, "attr_scores": None} for s in scores]


def _images(ids):
    return pd.DataFrame({"image_id": ids, "orig_height": 4, "orig_width": 4}).astype(
        {"orig_height": "int32", "orig_width": "int32"})


def test_config_hash_follows_the_config():
    a = {"format": lshards.PREDICT_FORMAT, "mask_size": 512, "tta_views": [[1.0, False]]}
    assert lshards.config_hash(a) == lshards.config_hash(dict(a))
    assert lshards.config_hash(a) != lshards.config_hash(dict(a, mask_size=0))
    assert len(lshards.config_hash(a)) == 16


def test_check_config_adopts_resumes_and_refuses_another(tmp_path):
    store = lshards.ShardStore(tmp_path)
    cfg = {"mask_size": 512, "score_floor": 0.05}
    h = lshards.config_hash(cfg)
    assert store.check_config(h, cfg) == "fresh"
    assert store.check_config(h, cfg) == "fresh"  # config.json alone: nothing to resume yet
    store.write(0, 0, _rows("a.jpg", "m", [0.9]), _images(["a.jpg"]))
    assert store.check_config(h, cfg) == "resume"
    other = dict(cfg, mask_size=0)
    with pytest.raises(ValueError, match="differing: mask_size"):
        store.check_config(lshards.config_hash(other), other)
    assert store.check_config(lshards.config_hash(other), other, restart=True) == "fresh"  # deleted, adopted
    assert store.done().empty


def test_orphan_parts_are_removed_and_not_counted_done(tmp_path):
    store = lshards.ShardStore(tmp_path)
    store.check_config("h", {})
    store.write(0, 0, _rows("a.jpg", "m", [0.9]), _images(["a.jpg"]))
    store.write(0, 1, _rows("b.jpg", "m", [0.8]), _images(["b.jpg"]))
    (store.dir / "images-0-00001.parquet").unlink()  # killed between the part and its images file
    assert list(store.done()["image_id"]) == ["a.jpg"]
    assert store.remove_orphans() == 1 and not (store.dir / "part-0-00001.parquet").exists()
    assert store.next_index(0) == 1 and store.next_index(1) == 0


def test_merge_orders_by_image_then_model_then_score_and_keeps_one_owner(tmp_path):
    store = lshards.ShardStore(tmp_path)
    store.check_config("h", {})
    # b is in a shard of rank 1 and (again) in rank 0's second: the first in (rank, shard) order owns it, and
    # only the owner's rows of it are kept
    store.write(1, 0, _rows("b.jpg", "y", [0.2, 0.7]) + _rows("b.jpg", "x", [0.1]), _images(["b.jpg"]))
    store.write(0, 0, _rows("a.jpg", "y", [0.3]) + _rows("a.jpg", "x", [0.4, 0.6]), _images(["a.jpg"]))
    store.write(0, 1, _rows("b.jpg", "x", [0.99]), _images(["b.jpg"]))
    images, counts = store.merge(tmp_path / "p.parquet", ["a.jpg", "b.jpg"], ["x", "y"])
    table = pd.read_parquet(tmp_path / "p.parquet")
    got = [(i, m, round(float(s), 2)) for i, m, s in zip(table["image_id"], table["model"], table["score"])]
    assert got == [("a.jpg", "x", 0.6), ("a.jpg", "x", 0.4), ("a.jpg", "y", 0.3), ("b.jpg", "x", 0.99)]
    assert list(images["image_id"]) == ["a.jpg", "b.jpg"] and list(table.columns) == lpred.COLUMNS
    assert counts == {"x": 3, "y": 1}
    with pytest.raises(ValueError, match="not predicted yet"):
        store.merge(tmp_path / "q.parquet", ["a.jpg", "c.jpg"], ["x"])
    assert not (tmp_path / "q.parquet").exists()


# --------------------------------------------------------------------------------------------- streaming merge
def _reference(store, image_ids, model_order):
    """The merge as one in-memory table: every part read, owned rows kept, concatenated, sorted (stable)."""
    done = store.done().set_index("image_id")
    owner = {i: (int(done.at[i, "rank"]), int(done.at[i, "shard"])) for i in image_ids}
    parts = []
    for f in sorted(store.dir.glob("part-*.parquet")):
        key = tuple(int(x) for x in f.stem.split("-")[1:])
        t = pd.read_parquet(f)
        parts.append(t[[owner.get(i) == key for i in t["image_id"]]])
    table = pd.concat(parts, ignore_index=True)
    pos, mpos = {i: n for n, i in enumerate(image_ids)}, {m: n for n, m in enumerate(model_order)}
    table = table.assign(_i=table["image_id"].map(pos), _m=table["model"].map(mpos).fillna(len(mpos)),
                         _s=-table["score"].astype(np.float64))
    table = table.sort_values(["_i", "_m", "_s"], kind="stable").drop(columns=["_i", "_m", "_s"])
    return table[lpred.COLUMNS].astype(lpred.DTYPES).reset_index(drop=True)


def _predicted_like_05(store, image_ids, rows_of, world, shard_size):
    """Shards as ``world`` ranks of 05 write them: rank r takes ``image_ids[r::world]``, ``shard_size`` a shard."""
    for r in range(world):
        mine = image_ids[r::world]
        for k in range(0, len(mine), shard_size):
            ids = mine[k:k + shard_size]
            store.write(r, k // shard_size, [row for i in ids for row in rows_of.get(i, [])], _images(ids))


def _row_groups(path):
    pf = pq.ParquetFile(path)
    return [pf.read_row_group(g, columns=["image_id"]).column("image_id").to_pylist()
            for g in range(pf.num_row_groups)]


def test_streaming_merge_equals_the_in_memory_sort_with_whole_images_per_row_group(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    ids = [f"{n:02d}.jpg" for n in range(23)]
    rows_of = {}
    for n, i in enumerate(ids):
        if n % 5 == 3:
            continue  # predicted, nothing found
        k = 12 if n == 7 else int(rng.integers(1, 5))  # 07: more rows than a row group holds
        rows = _rows(i, "z", rng.random(k).round(1))  # ties (rounded scores) keep their shard order
        rows += _rows(i, "y", [0.5, 0.5, 0.9]) + _rows(i, "x", rng.random(2))
        for j, row in enumerate(rows):
            row["category"] = j  # tells tied rows apart
            if n < 12 and row["model"] == "y":
                row["attr_scores"] = list(rng.random(3))  # some parts have attributes, others only nulls
        rows_of[i] = [rows[j] for j in rng.permutation(len(rows))]  # written in no particular order
    store = lshards.ShardStore(tmp_path)
    store.check_config("h", {})
    _predicted_like_05(store, ids, rows_of, world=2, shard_size=3)
    mixed = pd.read_parquet(store.dir / "part-1-00001.parquet")  # a part not in image order: merged all the same
    mixed.iloc[rng.permutation(len(mixed))].to_parquet(store.dir / "part-1-00001.parquet", index=False)
    store.write(2, 0, _rows("05.jpg", "x", [0.99]), _images(["05.jpg"]))  # not its owner: left out
    order = ["y", "x"]  # "z" is not in the model order: after the others

    refs = []

    class Watched(lshards._Part):
        def __init__(self, *a):
            super().__init__(*a, batch_rows=4)
            refs.append(weakref.ref(self))

    monkeypatch.setattr(lshards, "_Part", Watched)
    alive = []
    real_write = lshards._write_whole_images

    def write(path, schema, per_image, rows):
        def watched():
            for t in per_image:
                alive.append(sum(r() is not None for r in refs))
                yield t
        real_write(path, schema, watched(), rows)

    monkeypatch.setattr(lshards, "_write_whole_images", write)
    images, counts = store.merge(tmp_path / "merged.parquet", ids, order, row_group_rows=10)

    ref = _reference(store, ids, order)
    got = pd.read_parquet(tmp_path / "merged.parquet")
    pd.testing.assert_frame_equal(got, ref)
    ref.to_parquet(tmp_path / "ref.parquet", index=False)  # what the merge wrote before it streamed
    assert pq.read_schema(tmp_path / "merged.parquet").equals(pq.read_schema(tmp_path / "ref.parquet"),
                                                              check_metadata=True)
    assert got["attr_scores"].notna().sum() == 3 * 10  # the y rows of the 10 images of 00-11 that have rows
    assert counts == ref["model"].value_counts().to_dict() and list(images["image_id"]) == ids
    assert len(refs) == 2 * 4 and max(alive) == 2  # every part read once, one per rank held at a time

    groups = _row_groups(tmp_path / "merged.parquet")
    assert [i for g in groups for i in g] == list(got["image_id"])
    seen = [set(g) for g in groups]
    assert all(not (a & b) for n, a in enumerate(seen) for b in seen[n + 1:])  # an image in one group only
    for g in groups[:-1]:  # closed at the first image boundary at or past 10 rows
        assert len(g) >= 10 and len(g) - g.count(g[-1]) < 10
    assert ["07.jpg"] in [sorted(set(g)) for g in groups]  # 07's 17 rows: a group of its own


def test_streaming_merge_without_rows_and_of_a_bad_part(tmp_path):
    store = lshards.ShardStore(tmp_path)
    store.check_config("h", {})
    store.write(0, 0, [], _images(["a.jpg", "b.jpg"]))
    images, counts = store.merge(tmp_path / "p.parquet", ["b.jpg", "a.jpg"], ["x"])
    assert counts == {} and list(images["image_id"]) == ["b.jpg", "a.jpg"]
    lpred.make_table([]).to_parquet(tmp_path / "ref.parquet", index=False)  # as the in-memory merge wrote it
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), pd.read_parquet(tmp_path / "ref.parquet"))
    assert pq.read_schema(tmp_path / "p.parquet").equals(pq.read_schema(tmp_path / "ref.parquet"), check_metadata=True)

    store.write(0, 1, _rows("c.jpg", "x", [0.5]), _images(["c.jpg"]))
    pd.DataFrame({"image_id": ["c.jpg"], "score": [0.5]}).to_parquet(store.dir / "part-0-00001.parquet")
    with pytest.raises(ValueError, match=r"part-0-00001.parquet: not a prediction table \(missing columns"):
        store.merge(tmp_path / "q.parquet", ["a.jpg", "c.jpg"], ["x"])
    assert not (tmp_path / "q.parquet").exists() and not list(tmp_path.glob(".tmp.*"))


def test_a_part_is_read_in_batches_dropped_as_its_images_pass(tmp_path):
    """The merge's reader of one part: a batch is read when an image needs it and dropped when no image to come
    has a row in it; a part not in image order is read whole (and merged the same)."""
    ids = [f"{n:02d}.jpg" for n in range(20)]
    rows = [r for n, i in enumerate(ids) for r in _rows(i, "m", [0.1, 0.9, 0.5 + n / 100])]
    store = lshards.ShardStore(tmp_path)
    store.write(0, 0, rows, _images(ids))
    owner, pos = {i: (0, 0) for i in ids}, {i: n for n, i in enumerate(ids)}
    schema = lshards._table_schema(False)
    part = lshards._Part(store.dir / "part-0-00000.parquet", (0, 0), owner, pos, {"m": 0}, batch_rows=4)
    for n, i in enumerate(ids):
        t = part.image(n, schema)
        assert t.column("image_id").to_pylist() == [i] * 3 and t.column("score").to_pylist()[0] == pytest.approx(0.9)
        assert part.end <= 3 * (n + 1) + 3 and sum(b.num_rows for _, b in part.held) <= 2 * 4  # a window, not all
    assert part.end == 60 and part.counts == {"m": 60}
    store.write(0, 1, rows[::-1], _images(ids))  # in reverse: image 00's rows come last, the part is read whole
    part = lshards._Part(store.dir / "part-0-00001.parquet", (0, 1), {i: (0, 1) for i in ids}, pos, {"m": 0},
                         batch_rows=4)
    middle = [part.image(n, schema).column("score").to_pylist()[1] for n in range(20)]
    assert middle == pytest.approx([0.5 + n / 100 for n in range(20)]) and part.end == 60