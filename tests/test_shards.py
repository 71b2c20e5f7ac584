"""lib/shards.py: the configuration hash, adopting / refusing shards, orphans, and the merge order."""
import numpy as np
import pandas as pd
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
    table, images = store.merge(["a.jpg", "b.jpg"], ["x", "y"])
    got = [(i, m, round(float(s), 2)) for i, m, s in zip(table["image_id"], table["model"], table["score"])]
    assert got == [("a.jpg", "x", 0.6), ("a.jpg", "x", 0.4), ("a.jpg", "y", 0.3), ("b.jpg", "x", 0.99)]
    assert list(images["image_id"]) == ["a.jpg", "b.jpg"] and list(table.columns) == lpred.COLUMNS
    with pytest.raises(ValueError, match="not predicted yet"):
        store.merge(["a.jpg", "c.jpg"], ["x"])
