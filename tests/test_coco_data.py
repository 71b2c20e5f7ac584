"""lib/coco_data.py and 01 --coco-json: COCO-format instance files (Fashionpedia) as a source, alone or with
Kaggle data; the real Fashionpedia sample; bad input to the problems report, hostile files (NaN / huge
polygons, malformed RLE, garbage entries) fuzzed."""
import json
import resource

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pycocotools import mask as mask_utils

from conftest import REPO, fuzz_sizes, run_stage
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


def _pycocotools_mask(polys, h, w):
    """pycocotools' own mask of polygons given as they are (the reference)."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([list(p) for p in polys], h, w)))


def test_in_image_polygons_rasterise_exactly_as_pycocotools():
    """Polygons within the image, or within one image side of it (clipping leaves them as they are): the mask
    is pycocotools' of the same polygons, pixel for pixel."""
    rng = np.random.default_rng(0)
    for i in range(300):
        h, w = (int(v) for v in rng.integers(1, 80, 2))
        lo, hi = (0.0, 1.0) if i % 3 else (-1.0, 2.0)  # a third reach up to one side beyond the image
        polys = [np.round(np.c_[rng.uniform(lo, hi, k) * w, rng.uniform(lo, hi, k) * h], int(rng.integers(0, 4)))
                 .ravel().tolist() for k in rng.integers(3, 12, int(rng.integers(1, 4)))]
        if i % 5 == 0:
            polys[0] = [int(v) for v in polys[0]]  # integer coordinates too
        assert np.array_equal(coco_data.rasterize(polys, h, w), _pycocotools_mask(polys, h, w)), (h, w, polys)


def test_real_sample_polygons_rasterise_exactly_as_pycocotools(shared_data):
    d = shared_data / "real_samples" / "fashionpedia_sample"
    obj = json.loads((d / "sample.json").read_text())
    sizes = {im["id"]: (im["height"], im["width"]) for im in obj["images"]}
    polys = [(a["segmentation"], sizes[a["image_id"]]) for a in obj["annotations"]
             if isinstance(a["segmentation"], list)]
    assert len(polys) == 12
    for seg, (h, w) in polys:
        m = coco_data.rasterize(seg, h, w)
        assert m.any() and np.array_equal(m, _pycocotools_mask(seg, h, w))


def test_far_polygons_are_clipped_to_within_a_pixel_of_pycocotools():
    """Polygons reaching far beyond the image are clipped to one image side around it: the clipped polygon
    stays in that box, keeps the polygon's part inside it (pycocotools' mask of the unclipped polygon, where
    that is affordable, differs only along the clipped edges), and costs what an in-image one does."""
    rng = np.random.default_rng(1)
    differ = total = 0
    for _ in range(300):
        h, w = (int(v) for v in rng.integers(5, 60, 2))
        k = int(rng.integers(3, 10))
        xy = np.c_[rng.uniform(-4 * w, 5 * w, k), rng.uniform(-4 * h, 5 * h, k)]
        pad = max(h, w)
        c = coco_data._clip_polygon(xy, -pad, -pad, w + pad, h + pad)
        assert np.isfinite(c).all() and len(c) <= 2 * k + 4
        if len(c):
            assert (c.min(0) >= (-pad, -pad)).all() and (c.max(0) <= (w + pad, h + pad)).all()
        ref = _pycocotools_mask([xy.ravel().tolist()], h, w)
        got = coco_data.rasterize([xy.ravel().tolist()], h, w)
        diff = ref != got
        differ += int(diff.sum())
        total += int(ref.sum())
        assert diff.sum() <= (h + w) // 2  # edge pixels only, never a region
    assert differ <= 0.01 * total
    inside = np.array([[1.0, 1.0], [5.0, 1.0], [3.0, 4.0]])
    assert coco_data._clip_polygon(inside, 0, 0, 10, 10) is inside  # nothing to clip: the same array
    square = coco_data._clip_polygon(np.array([[-1e308, -1e308], [1.7e308, -1e308], [1e308, 1.7e308],
                                               [-1.7e308, 1e308]]), 0, 0, 8, 6)
    assert sorted(map(tuple, square.tolist())) == [(0, 0), (0, 6), (8, 0), (8, 6)]


HOSTILE = {  # segmentation at 20x16 -> start of the ValueError
    "NaN": ([[1, 1, float("nan"), 1, 9, 9]], "polygon with non-finite"),
    "Infinity": ([[1, 1, 9, 1, float("inf"), 9]], "polygon with non-finite"),
    "-Infinity": ([[float("-inf"), 1, 9, 1, 9, 9]], "polygon with non-finite"),
    "int beyond float64": ([[10 ** 400, 1, 9, 1, 9, 9]], "polygon with non-finite"),
    "zigzag outline": ([[v for i in range(4000) for v in ((-16, i % 20) if i % 2 else (32, i % 20))]],
                       "polygon outline too long"),
    "odd count": ([[1, 1, 9, 1, 9]], "polygon with fewer than 3 points"),
    "2 points": ([[1, 1, 9, 1]], "polygon with fewer than 3 points"),
    "string entry": ([[1, 1, "9", 1, 9, 9]], "polygon is not a list of numbers"),
    "bool entry": ([[1, 1, True, 1, 9, 9]], "polygon is not a list of numbers"),
    "null entry": ([[1, 1, None, 1, 9, 9]], "polygon is not a list of numbers"),
    "nested pairs": ([[[1, 1], [9, 1], [9, 9]]], "polygon is not a list of numbers"),
    "flat list": ([1, 1, 9, 1, 9, 9], "polygon is not a list of numbers"),
    "deep garbage": ([[[[[[[[["x"]]]]]]]]], "polygon is not a list of numbers"),
    "polygon a dict": ([{"x": 1}], "polygon is not a list of numbers"),
    "None (bbox only)": (None, "no segmentation"),
    "[]": ([], "no segmentation"),
    "a string": ("polygon", "segmentation is neither polygons nor RLE"),
    "dict without counts": ({"size": [20, 16]}, "segmentation is neither polygons nor RLE"),
    "RLE sum short": ({"size": [20, 16], "counts": [5, 6]}, "RLE counts sum to 11, not 20x16 = 320"),
    "RLE sum long": ({"size": [20, 16], "counts": [300, 300]}, "RLE counts sum to 600"),
    "RLE negative": ({"size": [20, 16], "counts": [-5, 325]}, "RLE counts out of range"),
    "RLE count 2^64": ({"size": [20, 16], "counts": [2 ** 64, 5]}, "RLE count out of range"),
    "RLE float count": ({"size": [20, 16], "counts": [5.0, 315]}, "RLE counts are not all integers"),
    "RLE size mismatch": ({"size": [21, 16], "counts": [336]}, "RLE size [21, 16] differs"),
    "RLE size swapped": ({"size": [16, 20], "counts": [320]}, "RLE size [16, 20] differs"),
    "RLE size garbage": ({"size": ["20", 16], "counts": [320]}, "RLE size ['20', 16] is not"),
    "RLE size 3 numbers": ({"size": [20, 16, 1], "counts": [320]}, "RLE size [20, 16, 1] is not"),
    "RLE counts a dict": ({"size": [20, 16], "counts": {"a": 1}}, "RLE counts are neither"),
    "compressed truncated": ({"size": [20, 16], "counts": "5g"}, "compressed RLE counts end inside a number"),
    "compressed bad chars": ({"size": [20, 16], "counts": "5\x01"}, "compressed RLE counts hold characters"),
    "compressed non-ASCII": ({"size": [20, 16], "counts": "5\u00e9"}, "compressed RLE counts are not ASCII"),
    "compressed negative": ({"size": [20, 16], "counts": "@"}, "RLE counts out of range"),
    "compressed too long": ({"size": [20, 16], "counts": "ooooooo0"}, "compressed RLE count out of range"),
    "compressed sum": ({"size": [20, 16], "counts": "5"}, "RLE counts sum to 5,"),
    "compressed empty": ({"size": [20, 16], "counts": ""}, "RLE counts sum to 0,"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_segmentations_are_value_errors_before_pycocotools(name, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("reached pycocotools")

    for fn in ("frPyObjects", "merge", "decode"):
        monkeypatch.setattr(mask_utils, fn, refuse)
    seg, message = HOSTILE[name]
    with pytest.raises(ValueError) as e:
        coco_data.rasterize(seg, 20, 16)
    assert str(e.value).startswith(message) and len(str(e.value)) < 200


def test_huge_finite_coordinates_cost_nothing():
    """1e7 (about 0.8 GB inside pycocotools unclipped) and float64's limit: clipped, a few ms, no memory."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rect = coco_data.rasterize([[10, 10, 1e7, 10, 1e7, 500, 10, 500]], 1000, 800)
    assert np.array_equal(rect, _pycocotools_mask([[10, 10, 800, 10, 800, 500, 10, 500]], 1000, 800))
    m = coco_data.rasterize([[1.7976931348623157e308, -1.7976931348623157e308, -1.7976931348623157e308,
                              1.7976931348623157e308, 500, 500]], 1000, 800)
    assert m.any() and not m.all()
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100_000  # KiB


def test_compressed_rle_decoder_equals_pycocotools():
    """Our reading of compressed counts equals pycocotools' on its own encodings (random masks, empty, full,
    one pixel) and on those encodings with characters changed, where the result is still well formed."""
    rng = np.random.default_rng(2)
    masks = [np.zeros((7, 5), np.uint8), np.ones((7, 5), np.uint8), np.eye(1, 1, dtype=np.uint8),
             np.ones((2000, 3000), np.uint8)]
    masks += [(rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)))) < rng.random()).astype(np.uint8)
              for _ in range(200)]
    for m in masks:
        enc = mask_utils.encode(np.asfortranarray(m))
        h, w = m.shape
        assert np.array_equal(coco_data.rasterize({"size": [h, w], "counts": enc["counts"].decode()}, h, w), m)
        assert np.array_equal(coco_data.rasterize({"size": [h, w], "counts": enc["counts"]}, h, w), m)  # bytes
    accepted = 0
    for _ in range(3000):
        m = (rng.random((int(rng.integers(1, 12)), int(rng.integers(1, 12)))) < 0.5).astype(np.uint8)
        s = bytearray(mask_utils.encode(np.asfortranarray(m))["counts"])
        for i in rng.integers(0, len(s), int(rng.integers(1, 3))):
            s[i] = 48 + int(rng.integers(0, 64))
        h, w = m.shape
        try:
            got = coco_data.rasterize({"size": [h, w], "counts": s.decode()}, h, w)
        except ValueError:
            continue
        accepted += 1
        assert np.array_equal(got, mask_utils.decode({"size": [h, w], "counts": bytes(s)})), s
    assert accepted >= 20
    for _ in range(300):  # pycocotools' compression of arbitrary counts (zero runs, long runs) read back
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        cuts = np.sort(rng.integers(0, h * w + 1, int(rng.integers(0, 12))))
        counts = np.diff(np.r_[0, cuts, h * w]).tolist()
        comp = mask_utils.frPyObjects({"size": [h, w], "counts": counts}, h, w)["counts"].decode()
        m = coco_data.rasterize({"size": [h, w], "counts": comp}, h, w)
        assert np.array_equal(m, coco_data.rasterize({"size": [h, w], "counts": counts}, h, w))
        assert np.array_equal(m, mask_utils.decode({"size": [h, w], "counts": comp.encode()}))


@pytest.mark.parametrize("text, message", [
    ("[]", "not a COCO instance file"),
    ('{"images": [], "annotations": []}', "not a COCO instance file"),
    ("{", "cannot read COCO JSON"),
    ("[" * 100_000 + "]" * 100_000, "cannot read COCO JSON"),
    (b"\xff\xfe", "cannot read COCO JSON"),
    ('{"images": [], "annotations": [], "categories": [{"id": "7", "name": "dress"}]}', "categories[0] is not"),
    ('{"images": [], "annotations": [], "categories": [{"id": 7}]}', "categories[0] is not"),
    ('{"images": [], "annotations": [], "categories": [7]}', "categories[0] is not"),
    ('{"images": [], "annotations": [], "categories": [{"id": 7, "name": "dress"}, {"id": 7, "name": "shoe"}]}',
     "categories id 7 is listed twice"),
    ('{"images": [], "annotations": [], "categories": [], "attributes": {"id": 1}}', "'attributes' is not a list"),
    ('{"images": [], "annotations": [], "categories": [], "attributes": [{"id": 1, "name": null}]}',
     "attributes[0] is not"),
])
def test_unusable_files_and_vocabularies_are_value_errors_naming_the_file(text, message, tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=r"x\.json: .*") as e:
        coco_data.read_coco(p, tmp_path, labels.competition_labels())
    assert message in str(e.value)


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
                "attribute_ids": [3]},  # attribute outside the vocabulary
               {"id": 6, "image_id": 1, "category_id": 8, "segmentation": [[1, 1, 9, 1, 9, 9]]},  # not in categories
               {"id": 7, "image_id": 1, "category_id": 7, "bbox": [1, 1, 5, 5]},  # bbox only
               {"id": 8, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, float("nan"), 1, 9, 9]]},
               {"id": 9, "image_id": 1, "category_id": 7, "segmentation": {"size": [20, 16], "counts": [5, -5, 320]}},
               {"id": 10, "image_id": 2, "category_id": 7, "segmentation": [[1, 1, 9, 1, 9, 9]]},  # on a bad image
               {"id": "x", "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 9, 1, 9, 9]]},  # no integer id
               {"id": 11, "image_id": 1, "category_id": 7, "segmentation": [[-1e7, 1e7, 1e7, 1e7, 0, -1e300]]},
               {"id": 1, "image_id": 1, "category_id": 7, "segmentation": [[1, 1, 10, 1, 10, 15]]}]}  # id again
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    return tmp_path / "bad.json"


def test_bad_annotations_become_problems(tmp_path):
    obj = json.loads(_bad_coco(tmp_path).read_text())
    obj["images"] += [{"id": 2, "file_name": "b.jpg", "height": 0, "width": 16}, "junk"]
    (tmp_path / "bad.json").write_text(json.dumps(obj))
    src = coco_data.read_coco(tmp_path / "bad.json", tmp_path, labels.competition_labels())
    assert src.images == {"a.jpg": (20, 16)}
    rows, problems = coco_data.annotation_rows(src, "a.jpg", 92)
    assert [r.row for r in rows] == [1, 11] and rows[0].class_id == "10_" + str(
        [a["name"] for a in label_descriptions()["attributes"]].index("mini (length)"))
    assert rle.decode(rows[1].rle, (20, 16)).all()  # a triangle far beyond the image covers all of it
    reasons = {(p.row, p.image_id): p.reason for p in src.problems + problems}
    assert "spacesuit" in reasons[0, ""] and "does not list" in reasons[4, "5"]
    assert "fewer than 3 points" in reasons[2, "a.jpg"] and "not in the file's attributes" in reasons[5, "a.jpg"]
    assert "category id 8 is not in the file's categories" in reasons[6, "a.jpg"]
    assert reasons[7, "a.jpg"].startswith("no segmentation")
    assert "non-finite" in reasons[8, "a.jpg"] and "out of range" in reasons[9, "a.jpg"]
    assert "height/width 0x16" in reasons[0, "b.jpg"] and "is not an object" in reasons[0, "images[2]"]
    assert "whose entry is skipped" in reasons[10, "2"] and "no integer id" in reasons[0, "annotations[10]"]
    assert 3 not in {p.row for p in src.problems + problems}  # an unmapped category: the per-category note
    assert "id listed twice" in reasons[1, "annotations[12]"]
    assert {(q.row, q.image_id) for q in src.entry_problems()} == {(4, "5"), (0, "b.jpg"), (0, "images[2]"),
                                                                   (10, "2"), (0, "annotations[10]"),
                                                                   (1, "annotations[12]")}
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
    assert not problems["reason"].str.contains("earmuffs").any()  # in the file's categories, used by no annotation
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
    a = prepared.run(prepared.PrepareSettings(
        data_dir=data, out_dir=tmp_path / "csv", long_side=128, processes=1, progress=False))
    b = prepared.run(prepared.PrepareSettings(
        data_dir=None, out_dir=tmp_path / "coco", long_side=128, processes=1, progress=False,
        coco_json=[data / "instances_train.json"], coco_images=[data / "train"]))
    assert a["num_images"] == b["num_images"] == 6 and b["num_problems"] == 0
    assert b["sources"][0]["unmapped_categories"] == {} and b["sources"][0]["attribute_vocabulary"]["mapped"] == 92
    for image_id in prepared.load_index(tmp_path / "csv")["image_id"]:
        ra, rb = prepared.read_ann(tmp_path / "csv", image_id), prepared.read_ann(tmp_path / "coco", image_id)
        strip = lambda rec: [{k: v for k, v in i.items() if k != "row"} for i in rec["instances"]]  # noqa: E731
        assert strip(ra) == strip(rb) and (ra["height"], ra["width"]) == (rb["height"], rb["width"])


# ------------------------------------------------------------------ fuzzing (docs/RELIABILITY.md)
FUZZ_CATEGORIES = [{"id": 7, "name": "dress"}, {"id": 3, "name": "shoe"}, {"id": 9, "name": "spacesuit"}]
FUZZ_ATTRIBUTES = [{"id": 0, "name": "mini (length)"}, {"id": 5, "name": "no such attribute"}]
GARBAGE = [None, "", "7", 7.0, True, [7], {"id": 7}, -1, 2 ** 70, float("nan")]
NON_FINITE = [float("nan"), float("inf"), float("-inf"), 10 ** 400]
HUGE = [1e7, -1e7, 1e300, -1e300, 1.7976931348623157e308, -1.7976931348623157e308, 2 ** 62]


def _uncompressed(m):
    """Uncompressed COCO counts of a mask (column-major runs, background first)."""
    flat = np.r_[0, m.flatten(order="F"), 1 - m.flatten(order="F")[-1:] if m.size else 0]
    edges = np.flatnonzero(np.diff(flat)) if m.size else np.zeros(0, int)
    return np.diff(np.r_[0, edges, m.size]).tolist() if m.size else [0]


@st.composite
def coco_files(draw):
    """(COCO object, {annotation id: expected}, the labels of bad image entries, the ``annotations[k]`` labels
    of id-less annotations, repeated annotation ids, whether the file is unusable). ``expected``:
    ``(file_name, category, mask, attributes)``, ``None`` (a problem), ``"maybe"`` (a row or a problem) or
    ``"unmapped"`` (neither: the category note)."""
    rng = np.random.default_rng(draw(st.integers(0, 2 ** 32 - 1)))
    images, good_ids, skipped_ids, bad_images = [], {}, set(), []
    for k in range(draw(st.integers(1, 3)) if draw(st.integers(0, 9)) else 0):
        iid, name = k + 1, f"im{k}.jpg"
        h, w = draw(st.integers(1, 14)), draw(st.integers(1, 14))
        entry = {"id": iid, "file_name": name, "height": h, "width": w}
        if k and draw(st.integers(0, 12)) == 0:  # a bad entry (the first is good: others may repeat it)
            bad = draw(st.integers(0, 6))
            if bad == 0:
                entry[draw(st.sampled_from(["height", "width"]))] = draw(st.sampled_from(
                    [0, -3, 20001, 10 ** 9, 1.5, "12", None, True]))
            elif bad == 1:
                del entry[draw(st.sampled_from(["height", "width"]))]
            elif bad == 2:
                entry["file_name"] = draw(st.sampled_from(["", 5, None, ["a.jpg"]]))
            elif bad == 3:
                entry["id"] = draw(st.sampled_from([None, 1.5, [1], {"a": 1}]))
            elif bad == 4:
                entry["file_name"] = images[0]["file_name"]
            elif bad == 5:
                entry["id"] = images[0]["id"]  # its annotations go with the first entry
            else:
                entry = draw(st.sampled_from(["junk", 5, None, [1, 2]]))
            bad_images.append(entry["file_name"] if bad in (0, 1, 3, 4, 5) else f"images[{k}]")
            if bad in (0, 1, 4):
                skipped_ids.add(iid)
            images.append(entry)
            continue
        images.append(entry)
        good_ids[entry["id"]] = (entry["file_name"], h, w)
    ref_ids = list(good_ids) + sorted(skipped_ids) + [999, "nope", None, [1]]
    annotations, expect, idless, dups = [], {}, [], []
    for j in range(draw(st.integers(1, 8))):
        aid = 100 + j
        if expect and draw(st.integers(0, 15)) == 0:  # an earlier annotation's id again: a problem
            dups.append(draw(st.sampled_from(sorted(expect))))
            annotations.append({"id": dups[-1], "image_id": 1, "category_id": 7, "segmentation": [[0, 0, 1, 0, 1, 1]]})
            continue
        iid = draw(st.sampled_from(list(good_ids) or ref_ids)) if draw(st.integers(0, 5)) else draw(
            st.sampled_from(sorted(skipped_ids) + ref_ids[-4:]))
        cid = draw(st.sampled_from([7, 3, 7, 3, 9])) if draw(st.integers(0, 7)) else draw(
            st.sampled_from([42] + GARBAGE))
        a = {"id": aid, "image_id": iid, "category_id": cid}
        if draw(st.integers(0, 2)):
            a["attribute_ids"] = draw(st.sampled_from([[], [0], [5], [0, 5]])) if draw(st.integers(0, 7)) else \
                draw(st.sampled_from([[77], "x", [None], 5, {"0": 1}, [0.0]]))
        good_target = iid in good_ids if (type(iid) is int or isinstance(iid, str)) else False
        name, h, w = good_ids[iid] if good_target else ("", 8, 8)
        want = "maybe"
        kind = draw(st.sampled_from([0, 0, 1, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9]))
        if kind <= 2:  # polygons within the image or within a side of it: pycocotools' mask exactly
            lo, hi = (0.0, 1.0) if kind < 2 else (-1.0, 2.0)
            polys = []
            for k in range(draw(st.integers(1, 3))):
                n = draw(st.integers(3, 7))
                xy = np.c_[rng.uniform(lo, hi, n) * w, rng.uniform(lo, hi, n) * h].round(int(rng.integers(0, 3)))
                polys.append([int(v) for v in xy.ravel()] if draw(st.booleans()) else xy.ravel().tolist())
            a["segmentation"] = polys
            m = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polys, h, w)))
            want = (m,) if m.any() else None
        elif kind <= 4:  # RLE of a random mask, compressed or not
            m = (rng.random((h, w)) < rng.random()).astype(np.uint8)
            if draw(st.booleans()):
                counts = mask_utils.encode(np.asfortranarray(m))["counts"].decode()
            else:
                counts = _uncompressed(m)
            a["segmentation"] = {"size": [h, w], "counts": counts}
            want = (m,) if m.any() else None
        elif kind == 5:  # hostile coordinates: non-finite (a problem) or huge (clipped: a row or empty)
            poly = np.c_[rng.uniform(0, w, 4), rng.uniform(0, h, 4)].ravel().tolist()
            non_finite = draw(st.booleans())
            for i in rng.integers(0, 8, int(rng.integers(1, 4))):
                poly[i] = draw(st.sampled_from(NON_FINITE if non_finite else HUGE))
            a["segmentation"] = [poly]
            want = None if non_finite else "maybe"
        elif kind == 6:  # malformed polygons
            a["segmentation"] = draw(st.sampled_from([
                [[1, 1, 5, 5]], [[1, 1, 5, 5, 9]], [], [[]], [[1, 1, "5", 5, 9, 9]], [[1, None, 5, 5, 9, 9]],
                [[[1, 1], [5, 5], [9, 9]]], [1, 1, 5, 5, 9, 9], [[1, 1, 5, 5, 9, 9], "x"], [[True, 1, 5, 5, 9, 9]],
                [[[[[[["deep"]]]]]]], [{"x": [1]}],
                [[v for i in range(3000) for v in ((-14, i % 14) if i % 2 else (28, i % 14))]]]))
            want = None
        elif kind == 7:  # malformed RLE
            n = h * w
            a["segmentation"] = draw(st.sampled_from([
                {"size": [h, w], "counts": [n - 1]}, {"size": [h, w], "counts": [n, 1]},
                {"size": [h, w], "counts": [-1, n + 1]}, {"size": [h + 1, w], "counts": [n + w]},
                {"size": [h, w], "counts": [float(n)]}, {"size": [h, w], "counts": [2 ** 64]},
                {"size": [h, w], "counts": ["1"]}, {"size": [h, w], "counts": None}, {"size": [h, w]},
                {"counts": [n]}, {"size": [h, w, 1], "counts": [n]}, {"size": "x", "counts": [n]},
                {"size": [h, w], "counts": "1g"}, {"size": [h, w], "counts": "\x00\x01"},
                {"size": [h, w], "counts": "\u00e9"}, {"size": [h, w], "counts": "ooooooo0"},
                {"size": [h, w], "counts": ""}, {"size": [h, w], "counts": "@"}]))
            want = None
        elif kind == 8:  # no segmentation, or something else
            if draw(st.booleans()):
                a["bbox"] = [0, 0, 1, 1]
            else:
                a["segmentation"] = draw(st.sampled_from([None, "polygon", 5, {"a": 1}, True]))
            want = None
        else:  # random bytes as compressed counts: a row or a problem
            s = "".join(chr(int(c)) for c in rng.integers(40, 120, int(rng.integers(0, 8))))
            a["segmentation"] = {"size": [h, w], "counts": s}
        if draw(st.integers(0, 15)) == 0:  # not an object, or no integer id: a problem naming its index
            a = draw(st.sampled_from(["junk", None, [1]])) if draw(st.booleans()) else dict(
                a, id=draw(st.sampled_from([None, "100", 1.0, [1]])))
            idless.append(f"annotations[{len(annotations)}]")
            annotations.append(a)
            continue
        ids = a.get("attribute_ids")
        ids_ok = ids is None or (isinstance(ids, list) and all(type(i) is int and i in (0, 5) for i in ids))
        if not good_target or not (type(cid) is int and cid in (7, 3, 9)):
            want = None
        elif cid == 9:
            want = "unmapped"
        elif not ids_ok:
            want = None
        elif isinstance(want, tuple):
            attrs = (labels.competition_labels().attribute_names.index("mini (length)"),) if ids and 0 in ids else ()
            want = (name, {7: 10, 3: 23}[cid], want[0], attrs)
        annotations.append(a)
        expect[aid] = want
    obj = {"images": images, "annotations": annotations, "categories": FUZZ_CATEGORIES,
           "attributes": FUZZ_ATTRIBUTES}
    unusable = draw(st.integers(0, 19)) == 0
    if unusable:
        breakage = draw(st.integers(0, 4))
        if breakage == 0:
            obj = draw(st.sampled_from([[], None, {"images": []}, {"images": {}, "annotations": [], "categories": []}]))
        elif breakage == 1:
            obj["categories"] = FUZZ_CATEGORIES + [draw(st.sampled_from([{"id": 7, "name": "shoe"}, {"id": "1"},
                                                                         {"name": "x"}, 5, None]))]
        elif breakage == 2:
            obj["attributes"] = draw(st.sampled_from([{"id": 0}, 5, "x", [{"id": 0}], [{"id": 0, "name": 1}]]))
        elif breakage == 3:
            obj = "truncated"
        else:
            obj = "nested"
    return obj, expect, bad_images, idless, dups, unusable


@pytest.mark.parametrize("n", fuzz_sizes())
def test_fuzz_coco_reader_accounts_for_every_annotation(n, tmp_path_factory):
    """Generated COCO files (good polygons and both RLE forms, NaN / Infinity / huge coordinates, malformed
    polygons and RLE, bbox-only annotations, unknown images and categories, bad attribute ids, garbage image
    and annotation entries, broken vocabularies, truncated or over-nested JSON): an unusable file is a
    ValueError naming it; otherwise every good annotation is a row with exactly the expected mask, category and
    attributes, every bad one a problem (its id, or its index), every bad image entry a problem, an unmapped
    category one note; nothing else raises, and memory stays flat (pycocotools only sees checked polygons)."""
    d = tmp_path_factory.mktemp("cocofuzz")
    lab = labels.competition_labels()
    seen = {"files": 0, "unusable": 0, "rows": 0, "problems": 0, "maybe": 0}
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @settings(max_examples=n, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(coco_files())
    def check(case):
        obj, expect, bad_images, idless, dups, unusable = case
        p = d / "f.json"
        text = json.dumps(obj) if obj not in ("truncated", "nested") else (
            '{"images": [], "annotations": [' if obj == "truncated" else "[" * 50_000 + "]" * 50_000)
        p.write_text(text)
        seen["files"] += 1
        try:
            src = coco_data.read_coco(p, d, lab)
        except ValueError as e:
            assert unusable, f"usable file refused: {e}"
            assert str(e).startswith(f"{p}: ")
            seen["unusable"] += 1
            return
        assert not unusable
        rows, problems = [], list(src.problems)
        for name in src.images:
            got, probs = coco_data.annotation_rows(src, name, 92)
            assert all(r.image_id == name for r in got) and all(q.image_id == name for q in probs)
            rows += got
            problems += probs
        assert all(q.file == str(p) and q.reason for q in problems)
        notes = [q for q in problems if not q.row and not q.image_id]
        used = any(isinstance(v, str) and v == "unmapped" for v in expect.values())
        assert [q.reason.split("'")[1] for q in notes] == (["spacesuit"] if used else [])  # only when used
        assert sorted(q.image_id for q in problems if not q.row and q.image_id.startswith("annotations[")) == \
            sorted(idless)
        assert sorted(q.row for q in problems if "listed twice; the second" in q.reason) == sorted(dups)
        assert sorted(q.image_id for q in problems if not q.row and q.image_id and not
                      q.image_id.startswith("annotations[")) == sorted(bad_images)
        accounted = sorted([r.row for r in rows] + [q.row for q in problems if q.row])
        assert accounted == sorted([k for k, v in expect.items() if v != "unmapped"] + dups), (accounted, expect)
        by_row = {r.row: r for r in rows}
        assert len(by_row) == len(rows)
        for aid, want in expect.items():
            if want is None:
                assert aid not in by_row, f"bad annotation {aid} accepted"
            elif isinstance(want, tuple):
                r = by_row.get(aid)
                assert r is not None, f"good annotation {aid} refused: {[q for q in problems if q.row == aid]}"
                name, cat, m, attrs = want
                assert (r.image_id, r.category, r.attributes) == (name, cat, attrs)
                assert np.array_equal(rle.decode(r.rle, (r.height, r.width)), m)
            elif want == "maybe":
                seen["maybe"] += 1
                if aid in by_row:
                    assert rle.decode(by_row[aid].rle, (by_row[aid].height, by_row[aid].width)).any()
        seen["rows"] += len(rows)
        seen["problems"] += len(problems) - len(notes)

    check()
    growth_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) / 1024
    # hypothesis' own bookkeeping: ~17 MiB per 1,000 cases; one unclipped 1e7 polygon in pycocotools: ~800 MiB
    assert growth_mib < 500, f"peak RSS grew {growth_mib:.0f} MiB"
    assert seen["files"] >= n and seen["unusable"] > 0 and seen["rows"] > n // 2 and seen["problems"] > n
    print(f"COCO reader fuzz: {seen}, peak RSS growth {growth_mib:.0f} MiB")
