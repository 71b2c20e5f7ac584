"""lib/coco_data.py and 01 --coco-json: COCO-format instance files (Fashionpedia) as a source, alone or with
Kaggle data; the real Fashionpedia sample; bad input to the problems report."""
import json

import numpy as np
import pandas as pd
import pytest
from pycocotools import mask as mask_utils

from conftest import REPO, run_stage
from lib import coco_data, kaggle_data, labels, prepared, rle
from lib.label_descriptions import label_descriptions


def _fashionpedia_sample(shared_data):
    d = shared_data / "real_samples" / "fashionpedia_sample"
    return d, coco_data.read_coco(d / "sample.json", d, labels.competition_labels())


def test_real_sample_maps_by_name_and_equals_its_kaggle_rows(shared_data):
    d, src = _fashionpedia_sample(shared_data)
    assert src.images == {"000000009813.jpg": (1000, 618), "000000010223.jpg": (1478, 1000)}
    # the sample's 48-category pre-release list: two names are not among the final 46
    assert src.unmapped_categories == {14: "earmuffs", 33: "garment belt"}
    assert src.category_map[24] == 23 and src.category_map[32] == 31  # shoe, sleeve: other ids, same names
    groups, _ = kaggle_data.index_csv(d / "sample_as_kaggle_rows_derived.csv")
    for name in src.images:
        rows, problems = coco_data.annotation_rows(src, name, 92)
        ref, _ = kaggle_data.read_rows(d / "sample_as_kaggle_rows_derived.csv", groups[name])
        assert problems == [] and sorted((r.category, r.rle) for r in rows) == sorted((r.category, r.rle) for r in ref)
    dress = next(r for r in coco_data.annotation_rows(src, "000000009813.jpg", 92)[0] if r.category == 10)
    assert dress.class_id == "10_5_20_22_24_85"  # attributes mapped by name onto the 92 (others dropped)


def test_rasterize_polygons_and_both_rle_forms():
    h, w = 12, 10
    poly = [[2.0, 3.0, 7.0, 3.0, 7.0, 9.0, 2.0, 9.0]]
    m = coco_data.rasterize(poly, h, w)
    assert m.shape == (h, w) and m[5, 4] == 1 and m[0, 0] == 0
    compressed = mask_utils.encode(np.asfortranarray(m))
    assert np.array_equal(coco_data.rasterize({"size": [h, w], "counts": compressed["counts"].decode()}, h, w), m)
    runs, prev, count = [], 0, 0  # uncompressed COCO RLE: column-major run lengths starting with background
    for v in m.flatten(order="F"):
        if v != prev:
            runs.append(count)
            prev, count = v, 0
        count += 1
    runs.append(count)
    assert np.array_equal(coco_data.rasterize({"size": [h, w], "counts": runs}, h, w), m)
    with pytest.raises(ValueError, match="fewer than 3 points"):
        coco_data.rasterize([[1, 1, 5, 5]], h, w)
    with pytest.raises(ValueError, match="differs from the image"):
        coco_data.rasterize({"size": [h + 1, w], "counts": runs}, h, w)


def _bad_coco(tmp_path):
    obj = {"images": [{"id": 1, "file_name": "a.jpg", "height": 20, "width": 16}],
           "categories": [{"id": 7, "name": "dress"}, {"id": 9, "name": "spacesuit"}],
           "attributes": [{"id": 0, "name": "mini (length)"}],
           "annotations": [
               {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 10, 1, 10, 15, 1, 15]],
                "attribute_ids": [0]},
               {"id": 2, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 4, 4]]},  # 2 points
               {"id": 3, "image_id": 1, "category_id": 9, "segmentation": [[1, 1, 9, 1, 9, 9]]},  # unknown category
               {"id": 4, "image_id": 5, "category_id": 7, "segmentation": [[1, 1, 9, 1, 9, 9]]},  # missing image
               {"id": 5, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 9, 1, 9, 9]],
                "attribute_ids": [3]}]}  # attribute outside the vocabulary
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    return tmp_path / "bad.json"


def test_bad_annotations_become_problems(tmp_path):
    src = coco_data.read_coco(_bad_coco(tmp_path), tmp_path, labels.competition_labels())
    rows, problems = coco_data.annotation_rows(src, "a.jpg", 92)
    assert [r.row for r in rows] == [1] and rows[0].class_id == "10_" + str(
        [a["name"] for a in label_descriptions()["attributes"]].index("mini (length)"))
    reasons = {p.row: p.reason for p in src.problems + problems}
    assert "spacesuit" in reasons[0] and "does not list" in reasons[4]
    assert "fewer than 3 points" in reasons[2] and "not in the file's attributes" in reasons[5]
    with pytest.raises(ValueError, match="not a COCO instance file"):
        (tmp_path / "x.json").write_text("[]")
        coco_data.read_coco(tmp_path / "x.json", tmp_path, labels.competition_labels())


def test_01_prepares_kaggle_and_coco_into_one_set(shared_data, synthetic_data_dir, tmp_path):
    d, _ = _fashionpedia_sample(shared_data)
    out = tmp_path / "both"
    r = run_stage(["python", str(REPO / "01_prepare_data.py"), "--data-dir", str(synthetic_data_dir),
                   "--coco-json", str(d / "sample.json"), "--coco-images", str(d), "--out-dir", str(out),
                   "--long-side", "256", "--processes", "1", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    meta = json.loads((out / "meta.json").read_text())
    n_kaggle = len(kaggle_data.index_csv(synthetic_data_dir / "train.csv")[0])
    assert meta["num_images"] == n_kaggle + 2 and [s["kind"] for s in meta["sources"]] == ["kaggle", "coco"]
    assert meta["sources"][1]["unmapped_categories"] == {"14": "earmuffs", "33": "garment belt"}
    index = prepared.load_index(out)
    assert {"000000009813.jpg", "000000010223.jpg"} <= set(index["image_id"])
    rec = prepared.read_ann(out, "000000009813.jpg")
    assert (rec["orig_height"], rec["orig_width"]) == (1000, 618) and max(rec["height"], rec["width"]) == 256
    assert sorted(i["category"] for i in rec["instances"]) == [10, 23, 23, 31, 31, 33]
    masks, cats, _ = prepared.decode_instances(rec)
    assert masks.shape[1:] == (256, 158) and all(m.any() for m in masks)
    problems = pd.read_csv(out / "problems.csv")
    assert problems["reason"].str.contains("earmuffs").any()
    # The same COCO file again: its images are in an earlier source, prepared once and reported.
    out2 = tmp_path / "twice"
    r = run_stage(["python", str(REPO / "01_prepare_data.py"), "--coco-json", str(d / "sample.json"),
                   str(d / "sample.json"), "--coco-images", str(d), str(d), "--out-dir", str(out2),
                   "--long-side", "128", "--processes", "1", "--no-progress"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((out2 / "meta.json").read_text())["num_images"] == 2
    assert pd.read_csv(out2 / "problems.csv")["reason"].str.contains("prepared once").sum() == 2
    rle.decode(rec["instances"][0]["rle"], (rec["height"], rec["width"]))  # the records hold Kaggle RLE


def test_synthetic_set_in_coco_layout_prepares_like_its_csv(tmp_path):
    """The generator's COCO layout through 01 gives the same prepared records as its train.csv (rows aside):
    both RLE forms, categories and attributes by name, end to end."""
    from lib import synthetic

    data = tmp_path / "data"
    synthetic.generate_dataset(data, n_train=6, n_test=1, seed=3, min_side=96, max_side=160, progress=False,
                               coco=True)
    a = prepared.prepare_dataset(data, tmp_path / "csv", long_side=128, workers=1, progress=False)
    b = prepared.prepare_dataset(None, tmp_path / "coco", long_side=128, workers=1, progress=False,
                                 coco=[(data / "instances_train.json", data / "train")])
    assert a["num_images"] == b["num_images"] == 6 and b["num_problems"] == 0
    assert b["sources"][0]["unmapped_categories"] == {} and b["sources"][0]["attribute_vocabulary"]["mapped"] == 92
    for image_id in prepared.load_index(tmp_path / "csv")["image_id"]:
        ra, rb = prepared.read_ann(tmp_path / "csv", image_id), prepared.read_ann(tmp_path / "coco", image_id)
        strip = lambda rec: [{k: v for k, v in i.items() if k != "row"} for i in rec["instances"]]  # noqa: E731
        assert strip(ra) == strip(rb) and (ra["height"], ra["width"]) == (rb["height"], rb["width"])
