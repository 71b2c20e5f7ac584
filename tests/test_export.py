"""lib/export.py: overlays and COCO results of post-processed predictions, one model or several fused."""
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from lib import export
from lib import prediction_table as lpred
from lib.postprocess import Params, save_params
from lib.fusion import Combination
from test_postprocess import pred_rows, rect


def _images(tmp_path, sizes):
    paths = {}
    for image_id, (h, w) in sizes.items():
        f = tmp_path / "imgs" / image_id
        f.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(f), np.full((h, w, 3), 128, np.uint8))
        paths[image_id] = str(f)
    frame = pd.DataFrame({"image_id": list(sizes), "orig_height": [h for h, _ in sizes.values()],
                          "orig_width": [w for _, w in sizes.values()], "error": ""})
    return frame, paths


def _file(tmp_path, table):
    """``table`` as a prediction-table file (what export_predictions reads)."""
    table.to_parquet(tmp_path / "predictions.parquet", index=False)
    return tmp_path / "predictions.parquet"


def test_overlays_and_coco_results_follow_the_post_processed_masks(tmp_path):
    frame, paths = _images(tmp_path, {"a.jpg": (40, 30), "sub/b.png": (20, 24)})
    a = rect(5, 4, 25, 20, 0.9, hw=(40, 30))
    table = lpred.make_table(pred_rows("a.jpg", [a, rect(0, 0, 3, 3, 0.9, hw=(40, 30))], [6, 31], [0.8, 0.2],
                                       orig=(40, 30)))
    got = export.export_predictions(tmp_path / "out", _file(tmp_path, table), frame, paths,
                                    [f"c{i}" for i in range(46)], progress=False)
    assert got["num_instances"] == 1  # the 0.2-score sleeve is below the recipe's threshold
    recs = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert len(recs) == 1
    r = recs[0]
    assert r["image_id"] == 1 and r["file_name"] == "a.jpg" and r["category_id"] == 6 and r["score"] == 0.8
    assert r["bbox"] == [4, 5, 16, 20]  # x, y, width, height
    m = mask_utils.decode({"size": r["segmentation"]["size"], "counts": r["segmentation"]["counts"].encode()})
    np.testing.assert_array_equal(m, (a >= 0.45).astype(np.uint8))
    over = cv2.imread(str(tmp_path / "out" / "overlays" / "a.png"))
    assert over.shape == (40, 30, 3) and (over[10, 10] != 128).any() and (over[38, 2] == 128).all()
    assert (tmp_path / "out" / "overlays" / "sub__b.png").is_file()  # an image without instances too


def test_unreadable_images_are_not_exported_and_exports_can_be_off(tmp_path):
    frame, paths = _images(tmp_path, {"a.jpg": (10, 10)})
    frame = pd.concat([frame, pd.DataFrame({"image_id": ["bad.jpg"], "orig_height": [10], "orig_width": [10],
                                            "error": ["truncated JPEG"]})], ignore_index=True)
    got = export.export_predictions(tmp_path / "out", _file(tmp_path, lpred.make_table([])), frame, paths, None,
                                    overlays=False, progress=False)
    assert got["overlays"] is None and json.loads((tmp_path / "out" / "coco_results.json").read_text()) == []
    assert not (tmp_path / "out" / "overlays").exists()


def test_several_models_are_fused_with_the_saved_combination(tmp_path):
    box = rect(2, 2, 12, 12, 0.9, hw=(16, 16))
    table = lpred.make_table(pred_rows("a.jpg", [box], [3], [0.9], orig=(16, 16), model="x")
                             + pred_rows("a.jpg", [box], [3], [0.6], orig=(16, 16), model="y")
                             + pred_rows("a.jpg", [rect(0, 0, 4, 4, 0.9, hw=(16, 16))], [5], [0.9], orig=(16, 16),
                                         model="z"))
    fused, params, what = export.export_table(table)
    assert what == "ensemble of x+y+z" and sorted(fused["category"]) == [3, 5]  # x and y fused into one
    save_params(tmp_path / "params.json", Params(score_thresh=0.3),
                ensemble={"models": ["x", "y"], "weights": [1.0, 1.0], "iou": 0.5, "min_votes": 2})
    fused, params, what = export.export_table(table, tmp_path / "params.json")
    assert what == "ensemble of x+y" and list(fused["category"]) == [3] and params.score_thresh == 0.3
    one, _, what = export.export_table(table[table["model"] == "x"])
    assert what == "x" and len(one) == 1


def test_export_plan_is_06s_saved_combination(tmp_path):
    """What is exported: 06's params.json read through lib.tuning (its combination for several models, else all
    of them with equal weights), checked against the models."""
    assert export.export_plan([]) == (None, Params(), "no predictions")
    assert export.export_plan(["m"]) == (Combination.default(["m"]), Params(), "m")
    assert export.export_plan(["m", "v"]) == (Combination.default(["m", "v"]), Params(), "ensemble of m+v")
    p = tmp_path / "params.json"
    save_params(p, Params(score_thresh=0.3), ensemble={"models": ["v", "m"], "weights": [2.0, 1.0]})
    combination, params, what = export.export_plan(["m", "v"], p)
    assert combination.to_json() == {"models": ["v", "m"], "weights": [2.0, 1.0], "iou": 0.5, "min_votes": 1,
                                     "min_score": 0.0}
    assert what == "ensemble of v+m" and params == Params(score_thresh=0.3)
    assert export.export_plan(["m"], p) == (Combination.default(["m"]), params, "m")


def test_overlay_names_are_unique_and_stable_when_plain_names_collide(tmp_path):
    ids = ["x.jpg", "x.png", "a/b.jpg", "a__b.jpg", "Case.jpg", "case.png", "plain.jpg", "sub/deep/y.jpeg"]
    names = export.overlay_names(ids)
    assert len({n.casefold() for n in names.values()}) == len(ids)  # unique, also on case-insensitive disks
    assert names["plain.jpg"] == "plain.png" and names["sub/deep/y.jpeg"] == "sub__deep__y.png"  # no clash: as before
    assert names["x.jpg"].startswith("x-") and names["a/b.jpg"].startswith("a__b-")
    assert export.overlay_names(list(reversed(ids))) == names  # the same set of ids, the same names
    # a hashed name that meets a file really called so is hashed again, still unique
    tricky = ids + [names["x.jpg"][:-4] + ".jpg"]
    assert len({n.casefold() for n in export.overlay_names(tricky).values()}) == len(tricky)
    # export_predictions writes one overlay per image, none overwritten
    frame, paths = _images(tmp_path, {"x.jpg": (12, 10), "x.png": (14, 10), "a/b.jpg": (10, 16), "a__b.jpg": (8, 8)})
    got = export.export_predictions(tmp_path / "out", _file(tmp_path, lpred.make_table([])), frame, paths, None,
                                    coco=False, progress=False)
    written = {p.name: cv2.imread(str(p)).shape[:2] for p in (tmp_path / "out" / "overlays").glob("*.png")}
    want = export.overlay_names(frame["image_id"])
    assert written == {want[i]: (h, w) for i, h, w in frame[["image_id", "orig_height", "orig_width"]].itertuples(
        index=False)}
    assert got["renamed_overlays"] == {i: want[i] for i in ["x.jpg", "x.png", "a/b.jpg", "a__b.jpg"]}


def _coco_gt(path, images, categories):
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f, "height": h, "width": w}
                                           for i, f, h, w in images],
                                "annotations": [], "categories": [{"id": i, "name": n} for i, n in categories]}))
    return path


def test_coco_results_take_the_image_and_category_ids_of_a_ground_truth_file(tmp_path):
    from pycocotools.coco import COCO

    from lib.labels import competition_labels

    names = competition_labels().category_names
    frame, paths = _images(tmp_path, {"a.jpg": (40, 30), "shoot/b.png": (20, 24)})
    table = lpred.make_table(pred_rows("a.jpg", [rect(5, 4, 25, 20, 0.9, hw=(40, 30))], [6], [0.8], orig=(40, 30))
                             + pred_rows("shoot/b.png", [rect(2, 2, 15, 20, 0.9, hw=(20, 24)),
                                                         rect(0, 0, 8, 8, 0.9, hw=(20, 24))], [23, 31], [0.9, 0.7],
                                         orig=(20, 24)))
    # their ids differ from ours (a pre-release list), "sleeve" (31) is not in the file, b.png by its base name
    gt = _coco_gt(tmp_path / "gt.json", [(9813, "a.jpg", 40, 30), (77, "b.png", 20, 24)],
                  [(106, names[6]), (124, names[23])])
    got = export.export_predictions(tmp_path / "out", _file(tmp_path, table), frame, paths, None, overlays=False,
                                    progress=False, coco_gt=gt)
    recs = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert sorted((r["file_name"], r["image_id"], r["category_id"]) for r in recs) == [
        ("a.jpg", 9813, 106), ("shoot/b.png", 77, 124)]
    assert got["categories_not_in_gt"] == {names[31]: 1} and got["coco_gt"] == str(gt)
    coco = COCO(str(gt))
    assert len(coco.loadRes(recs).getAnnIds()) == 2  # pycocotools takes the ids
    # without the file: images numbered 1..N, our category ids
    export.export_predictions(tmp_path / "plain", _file(tmp_path, table), frame, paths, None, overlays=False,
                              progress=False)
    plain = json.loads((tmp_path / "plain" / "coco_results.json").read_text())
    assert sorted((r["image_id"], r["category_id"]) for r in plain) == [(1, 6), (2, 23), (2, 31)]
    # an image the file does not list is an error naming it
    gt2 = _coco_gt(tmp_path / "gt2.json", [(1, "a.jpg", 40, 30)], [(6, names[6])])
    with pytest.raises(ValueError, match=r"gt2.json: 1 of 2 images are not in that file.*shoot/b.png"):
        export.export_predictions(tmp_path / "o2", _file(tmp_path, table), frame, paths, None, overlays=False,
                                  progress=False, coco_gt=gt2)
    assert not (tmp_path / "o2" / "coco_results.json").exists()
    # a category id of Infinity (json's extension) is a clear error, not a traceback
    (tmp_path / "gt3.json").write_text('{"images": [], "annotations": [], "categories": [{"id": Infinity, "name": "x"}]}')
    with pytest.raises(ValueError, match=r"gt3.json: an image without file_name/id or a category.*OverflowError"):
        export.read_coco_gt(tmp_path / "gt3.json")


def test_coco_results_load_against_the_real_fashionpedia_sample(shared_data, tmp_path):
    """The sample's own images predicted (its ground truth as predictions) and exported with --coco-gt: the
    results load into pycocotools against the sample file and evaluate to AP 1 on what they cover."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from test_scoring import fashionpedia_sample

    d, gt, names, ours, files = fashionpedia_sample(shared_data)
    rows = []
    for a in gt["annotations"]:
        if names[a["category_id"]] in ours:
            name, h, w = files[a["image_id"]]
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], h, w)))
            rows += pred_rows(name, [m.astype(np.float32)], [ours[names[a["category_id"]]]], [0.9], orig=(h, w))
    frame = pd.DataFrame({"image_id": [f for f, _, _ in files.values()], "error": "",
                          "orig_height": [h for _, h, _ in files.values()],
                          "orig_width": [w for _, _, w in files.values()]})
    paths = {f: str(d / f) for f, _, _ in files.values()}
    params = tmp_path / "params.json"
    save_params(params, Params(nms_iou=1.0, overlap="none", min_area=0))
    export.export_predictions(tmp_path / "out", _file(tmp_path, lpred.make_table(rows)), frame, paths, None,
                              params_path=params, overlays=False, progress=False, coco_gt=d / "sample.json")
    recs = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    assert {r["image_id"] for r in recs} == set(files) and len(recs) == len(rows)
    assert {r["category_id"] for r in recs} <= {a["category_id"] for a in gt["annotations"]}  # their ids
    coco = COCO(str(d / "sample.json"))
    ev = COCOeval(coco, coco.loadRes(recs), "segm")
    ev.evaluate(), ev.accumulate(), ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="not in that file"):
        export.export_predictions(tmp_path / "o2", _file(tmp_path, lpred.make_table(rows)),
                                  frame.assign(image_id="other.jpg"),
                                  {"other.jpg": paths[frame["image_id"][0]]}, None, overlays=False, progress=False,
                                  coco_gt=d / "sample.json")


def _whole_table_json(table, frame, params_path=None) -> str:
    """coco_results.json as the export wrote it from one in-memory table: fused as a whole, grouped by image."""
    from lib import files as lfiles
    from lib.labels import parse_class_id
    from lib.postprocess import image_groups, postprocess_image

    fused, params, _ = export.export_table(table, params_path)
    groups = image_groups(fused)
    recs = []
    for n, r in enumerate(frame.itertuples(index=False), start=1):
        idx = groups.get(r.image_id)
        insts = postprocess_image(fused.iloc[idx], params, (r.orig_height, r.orig_width)) if idx is not None else []
        recs += [export.coco_record(n, r.image_id, parse_class_id(c)[0], m, s) for c, m, s in insts]
    return lfiles.to_json(recs, indent=None) + "\n"


def test_the_export_streams_by_chunks_of_images_and_writes_what_the_whole_table_gave(tmp_path, monkeypatch):
    """Several models fused image by image from a merged file of small row groups: coco_results.json has the
    bytes of the export of the whole table; the file is read through lib.table_stream: its image_id and model
    columns whole, its rows a chunk of images at a time from the row groups that hold them."""
    import pyarrow.parquet as pq

    from lib import shards as lshards
    from lib import table_stream as lstream

    sizes = {f"{k}.jpg": (32 + 4 * k, 28) for k in range(6)}
    frame, paths = _images(tmp_path, sizes)
    rows = []
    for k, (image_id, hw) in enumerate(sizes.items()):
        if k == 2:
            continue  # no rows
        for model, shift, score in (("x", 0, 0.9), ("y", 1, 0.7), ("z", 8, 0.6))[: 3 if k != 4 else 1]:
            rows += pred_rows(image_id, [rect(2 + shift, 3, 20 + shift, 20, 0.9, hw=hw), rect(0, 0, 6, 6, 0.8, hw=hw)],
                              [k + 1, 31], [score, score - 0.1], orig=hw, model=model)
    store = lshards.ShardStore(tmp_path / "run")
    store.check_config("h", {})
    ids = list(sizes)
    for r, mine in enumerate((ids[0::2], ids[1::2])):
        store.write(r, 0, [x for x in rows if x["image_id"] in mine], frame[frame["image_id"].isin(mine)])
    merged = tmp_path / "run" / "predictions.parquet"
    store.merge(merged, ids, ["x", "y", "z"], row_group_rows=5)
    assert pq.ParquetFile(merged).num_row_groups == 4  # 6 rows | 6 | 6 | 2 + 6 (image 2 has none)
    table = pd.read_parquet(merged)
    want = _whole_table_json(table, frame)

    reads = []
    real_groups, real_read = pq.ParquetFile.read_row_groups, pq.ParquetFile.read
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, groups, *a, **k: reads.append(list(groups))
                        or real_groups(self, groups, *a, **k))

    def read_ids_only(self, columns=None, **k):
        if columns is None or not set(columns) <= {"image_id", "model"}:
            pytest.fail("the whole file was read")
        return real_read(self, columns=columns, **k)

    monkeypatch.setattr(pq.ParquetFile, "read", read_ids_only)
    monkeypatch.setattr(pq, "read_table", lambda *a, **k: pytest.fail("the whole file was read"))
    monkeypatch.setattr(lstream, "CHUNK_ROWS", 6)  # chunks: image 0 | 1, 2 | 3 | 4 | 5
    got = export.export_predictions(tmp_path / "out", merged, frame, paths, None, progress=False)
    assert (tmp_path / "out" / "coco_results.json").read_text() == want
    assert got["exported"] == "ensemble of x+y+z" and got["num_instances"] == len(json.loads(want)) > 0
    assert reads == [[0], [1], [2], [3], [3]]  # each chunk: only the row groups that hold its rows
    assert len(list((tmp_path / "out" / "overlays").glob("*.png"))) == 6
    # a saved combination of two of the models, also image by image
    save_params(tmp_path / "params.json", Params(score_thresh=0.3),
                ensemble={"models": ["x", "z"], "weights": [1.0, 2.0], "iou": 0.5, "min_votes": 2})
    export.export_predictions(tmp_path / "o2", merged, frame, paths, None, tmp_path / "params.json", overlays=False,
                              progress=False)
    assert (tmp_path / "o2" / "coco_results.json").read_text() == _whole_table_json(table, frame,
                                                                                    tmp_path / "params.json")


def test_a_table_in_any_row_order_exports_the_same_bytes(tmp_path):
    """The rows of a file shuffled over small row groups (images and models interleaved, an image split between
    groups), also read in 2 worker processes: the same overlays and coco_results.json as from the file in image
    order, in the order of the images table; a combination that does not fit the models is an error before
    anything is written."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sizes = {"a.jpg": (30, 26), "b.jpg": (24, 32), "c.jpg": (20, 20), "d.jpg": (28, 22)}
    frame, paths = _images(tmp_path, sizes)
    rows = []
    for k, (image_id, hw) in enumerate(sizes.items()):
        for model, shift, score in (("x", 0, 0.9), ("y", 2, 0.8)):
            rows += pred_rows(image_id, [rect(1 + shift, 2 + k, 15 + shift, 18, 0.9, hw=hw),
                                         rect(0, 0, 5 + k, 6, 0.8, hw=hw)], [k + 1, 31], [score, score - 0.2],
                              orig=hw, model=model)
    ordered = lpred.make_table(rows)
    order = np.random.default_rng(3).permutation(len(ordered))
    first_x = next(n for n, i in enumerate(order) if ordered["model"][i] == "x")
    order[[0, first_x]] = order[[first_x, 0]]  # x stays the first model seen (the fusion's order)
    shuffled = ordered.iloc[order].reset_index(drop=True)
    assert list(dict.fromkeys(shuffled["image_id"])) != list(sizes)  # really out of image order
    (tmp_path / "in_order").mkdir()
    (tmp_path / "shuffled").mkdir()
    ordered.to_parquet(tmp_path / "in_order" / "predictions.parquet", index=False)
    pq.write_table(pa.Table.from_pandas(shuffled, preserve_index=False), tmp_path / "shuffled" / "predictions.parquet",
                   row_group_size=3)
    runs = {"in_order": ("in_order", 1), "shuffled": ("shuffled", 1), "in_workers": ("shuffled", 2)}
    got = {r: export.export_predictions(tmp_path / r / "out", tmp_path / d / "predictions.parquet", frame, paths,
                                        [f"c{i}" for i in range(46)], progress=False, processes=n)
           for r, (d, n) in runs.items()}
    assert got["in_order"]["exported"] == got["shuffled"]["exported"] == "ensemble of x+y"
    assert got["in_order"]["num_instances"] == got["shuffled"]["num_instances"] == got["in_workers"]["num_instances"] > 0
    files = {r: {f.relative_to(tmp_path / r / "out"): f.read_bytes() for f in (tmp_path / r / "out").rglob("*")
                 if f.is_file()} for r in runs}
    assert len(files["in_order"]) == 5 and files["shuffled"] == files["in_workers"] == files["in_order"]
    recs = json.loads(files["in_order"][Path("coco_results.json")])
    assert [r["file_name"] for r in recs] == sorted(r["file_name"] for r in recs)  # in the images' order
    assert files["in_order"][Path("coco_results.json")].decode() == _whole_table_json(ordered, frame)
    with pytest.raises(ValueError, match="combination needs models"):  # before anything is written
        save_params(tmp_path / "params.json", Params(), ensemble={"models": ["m", "w"], "weights": [1.0, 1.0]})
        export.export_plan(["m", "v"], tmp_path / "params.json")
    with pytest.raises(ValueError, match=r"combination needs models \['w'\]"):
        save_params(tmp_path / "params.json", Params(), ensemble={"models": ["x", "w"], "weights": [1.0, 1.0]})
        export.export_predictions(tmp_path / "o3", tmp_path / "shuffled" / "predictions.parquet", frame, paths, None,
                                  tmp_path / "params.json", progress=False)
    assert not (tmp_path / "o3").exists()
