"""lib/scoring.py: the Kaggle metric and COCO mask AP of a prediction table after post-processing."""
from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from lib import prediction_table as lpred
from lib import scoring as lscoring
from lib.kaggle_data import resize_mask
from lib.kaggle_metric import mask_window
from lib.label_descriptions import label_descriptions
from test_postprocess import images_df, pred_rows, rect, write_gt




def gt_items():
    """Two images of ground truth at 40x30 (original size) with non-overlapping same-category masks."""
    a1, a2, a3 = (rect(*r, hw=(40, 30)).astype(np.uint8) for r in [(0, 0, 20, 15), (20, 0, 40, 15), (5, 15, 35, 30)])
    b1 = rect(10, 5, 30, 25, hw=(40, 30)).astype(np.uint8)
    return [("a.jpg", a1, "1"), ("a.jpg", a2, "1"), ("a.jpg", a3, "10_3_7"), ("b.jpg", b1, "5")]


def test_score_table_ground_truth_as_predictions_is_perfect(tmp_path):
    gt = write_gt(tmp_path / "gt.csv", gt_items())
    from lib.labels import parse_class_id

    def as_table(size):  # ground-truth masks stored as 05 would, at `size`
        return lpred.make_table([
            r for image_id, m, cls in gt_items()
            for r in pred_rows(image_id, [resize_mask(m, size or m.shape).astype(np.float32)],
                               [parse_class_id(cls)[0]], [0.99], orig=(40, 30))])

    for mask_size in (None, 16, 64):
        t = as_table(mask_size and (mask_size, mask_size))
        s = lscoring.score_table(t, gt, mask_size=mask_size, progress=False)
        assert s["kaggle"] == 1.0 and s["AP"] == pytest.approx(1.0) and s["num_images"] == 2
        assert s["per_class"] == {1: 1.0, 5: 1.0, 10: 1.0}
    # An extra test image without ground truth nor prediction scores 1; the missing b.jpg predictions score 0.
    s = lscoring.score_table(t[t["image_id"] == "a.jpg"], gt, images=images_df(["a.jpg", "b.jpg", "c.jpg"], 40, 30),
                         progress=False, coco=False)
    assert s["num_images"] == 3 and s["kaggle"] == pytest.approx(2 / 3) and np.isnan(s["AP"])
    # Full ClassIds: category 10 needs its attributes.
    attrs = np.zeros((4, 92), np.float32)
    attrs[2, [3, 7]] = 0.9
    t = as_table(None)
    t2 = lpred.make_table([dict(r, attr_scores=list(attrs[i])) for i, r in enumerate(t.to_dict("records"))])
    s = lscoring.score_table(t2, gt, {"attributes": "on"}, class_keys="class_id", progress=False)
    assert s["kaggle"] == 1.0 and "10_3_7" in s["per_class"]
    s = lscoring.score_table(t2, gt, class_keys="class_id", progress=False)  # attributes off: "10" != "10_3_7"
    assert s["kaggle"] < 1.0


def fashionpedia_sample(shared_data):
    """The real Fashionpedia sample: its folder, its JSON, its category names by id, our category ids by name,
    and ``{image id: (file_name, height, width)}``."""
    d = shared_data / "real_samples" / "fashionpedia_sample"
    gt = json.loads((d / "sample.json").read_text())
    names = {c["id"]: c["name"] for c in gt["categories"]}
    ours = {c["name"]: c["id"] for c in label_descriptions()["categories"]}
    files = {im["id"]: (im["file_name"], im["height"], im["width"]) for im in gt["images"]}
    return d, gt, names, ours, files


def test_coco_json_ground_truth_scores_like_pycocotools(shared_data, tmp_path):
    """Fashionpedia's sample as ground truth and its fake results as predictions (categories by name): the COCO
    mask AP equals pycocotools' own evaluation of the same masks, the Kaggle metric is in (0, 1)."""
    d, gt, names, ours, files = fashionpedia_sample(shared_data)
    rows = []
    for r in json.loads((d / "fake_results.json").read_text()):
        if names[r["category_id"]] not in ours:
            continue
        name, h, w = files[r["image_id"]]
        m = mask_utils.decode(r["segmentation"]).astype(np.float32)
        rows += pred_rows(name, [m], [ours[names[r["category_id"]]]], [r["score"]], orig=(h, w))
    table = lpred.make_table(rows)
    exact = {"score_thresh": 0.0, "mask_thresh": 0.5, "nms_iou": 1.0, "overlap": "none", "min_area": 0}
    s = lscoring.score_table(table, d / "sample.json", exact, mask_size=None, progress=False)
    # pycocotools on the same data: our category ids for both sides, the unmapped categories left out
    keep = [a for a in gt["annotations"] if names[a["category_id"]] in ours]
    ref_gt = {"images": gt["images"], "categories": [{"id": i, "name": n} for n, i in ours.items()],
              "annotations": [dict(a, category_id=ours[names[a["category_id"]]]) for a in keep]}
    dets = [dict(r, category_id=ours[names[r["category_id"]]]) for r in json.loads((d / "fake_results.json").read_text())
            if names[r["category_id"]] in ours]
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = ref_gt
        cg.createIndex()
        for a in cg.dataset["annotations"]:
            a.setdefault("area", float(mask_utils.area(cg.annToRLE(a))))
        cd = cg.loadRes(dets)
        ev = COCOeval(cg, cd, iouType="segm")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert s["AP"] == pytest.approx(ev.stats[0], abs=1e-6) and s["AP50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert s["num_images"] == 2 and 0.0 < s["kaggle"] < 1.0


def test_hostile_coco_ground_truth_is_a_value_error_listing_its_entries(tmp_path, capsys):
    """06 --gt file.json reads through lib.coco_data: NaN / Infinity polygons, malformed RLE, a bbox-only
    annotation, an unknown category id and a bad image entry are listed in one ValueError (no segfault, no
    memory blow-up); a huge polygon is clipped and scored; an unmapped category alone only warns."""
    ok = [[1, 1, 12, 1, 12, 9, 1, 9]]
    anns = [ok, [[1, 1, float("nan"), 1, 12, 9]], [[1, 1, 12, 1, float("inf"), 9]],
            {"size": [10, 14], "counts": [-3, 143]}, {"size": [10, 14], "counts": "1g"}, None,
            [[-1e7, -1e7, 1e7, -1e7, 1e7, 1e7, -1e7, 1e7]]]
    obj = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 14},
                      {"id": 2, "file_name": "b.jpg", "height": 10, "width": float("nan")}],
           "categories": [{"id": 1, "name": "dress"}, {"id": 2, "name": "earmuffs"}],
           "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "segmentation": s}
                           for i, s in enumerate(anns)]
           + [{"id": 20, "image_id": 1, "category_id": 5, "segmentation": ok},
              {"id": 21, "image_id": 1, "category_id": 2, "segmentation": ok}]}
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps(obj))
    with pytest.raises(ValueError) as e:
        lscoring.load_ground_truth(gt, mask_size=None, progress=False)
    msg = str(e.value)
    assert msg.startswith(f"{gt}: 7 bad ground-truth rows")
    for line in ["row 2 (a.jpg): polygon with non-finite", "row 3 (a.jpg): polygon with non-finite",
                 "row 4 (a.jpg): RLE counts out of range", "row 5 (a.jpg): compressed RLE counts end inside",
                 "row 6 (a.jpg): no segmentation", "row 20 (a.jpg): category id 5 is not in the file's categories",
                 "row 0 (b.jpg): image entry: height/width 10xnan"]:
        assert line in msg, msg
    keep = [a for a in obj["annotations"] if a["id"] in (1, 7, 21)]
    gt.write_text(json.dumps(dict(obj, images=obj["images"][:1], annotations=keep)))
    out = lscoring.load_ground_truth(gt, mask_size=None, progress=False)
    masks, keys = out["a.jpg"]
    assert keys == [10, 10] and masks[1].all() and masks[0].sum() == 11 * 8
    assert "earmuffs" in capsys.readouterr().out


def test_image_scorer_scores_any_subset_like_image_score():
    """Tuning scores many subsets of one post-processing (score thresholds, areas) from one set of IoUs: each equals
    lib.kaggle_metric.image_score of the subset's full masks."""
    from lib.kaggle_metric import image_score
    from lib.postprocess import Instance

    rng = np.random.default_rng(5)
    size = (24, 24)
    gt_masks = np.zeros((3, *size), np.uint8)
    gt_masks[0, 2:10, 2:10] = gt_masks[1, 12:20, 3:9] = gt_masks[2, 5:15, 14:22] = 1
    gt = lscoring.GroundTruth([1, 1, 2], [mask_window(m) for m in gt_masks], size)
    insts = []
    for k in range(6):
        m = np.roll(gt_masks[k % 3], rng.integers(-2, 3, 2), (0, 1))
        y, x, w = mask_window(m)
        insts.append(Instance([1, 1, 2, 1, 2, 1][k], float(1 - 0.1 * k), "c", y, x, w, int(w.sum()), k))
    scorer = lscoring.ImageScorer(gt, insts)
    for keep in ([1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0], [0, 1, 0, 1, 1, 1]):
        keep = np.array(keep, bool)
        kept = [i for i, on in zip(insts, keep) if on]
        pred = np.stack([i.full(size) for i in kept]) if kept else np.zeros((0, *size), np.uint8)
        want = image_score(gt_masks, [1, 1, 2], pred, [i.category for i in kept], [i.score for i in kept],
                           return_per_class=True)
        assert scorer.score(keep) == want


def test_image_scorer_with_the_2020_attribute_condition():
    """class_keys="attributes": classes are categories, and a hit also needs the F1 of the ClassId's attributes
    with the ground truth's above the F1 threshold (none for ground truth without attributes)."""
    from lib.postprocess import Instance

    size = (20, 20)
    m = np.zeros(size, np.uint8)
    m[2:12, 3:15] = 1
    gt = lscoring.GroundTruth([1, 5], [mask_window(m), mask_window(m)], size, [(3, 7), ()])
    y, x, w = mask_window(m)

    def score(class_ids):
        insts = [Instance(int(c.split("_")[0]), 0.9, c, y, x, w.copy(), int(w.sum()), k)
                 for k, c in enumerate(class_ids)]
        return lscoring.ImageScorer(gt, insts, "attributes").score()

    assert score(["1_3_7", "5"]) == (1.0, {1: 1.0, 5: 1.0})
    assert score(["1_3", "5_2"]) == (pytest.approx(0.7), {1: pytest.approx(0.4), 5: 1.0})  # F1 2/3: 4 of 10
    assert score(["1", "5"])[1] == {1: 0.0, 5: 1.0}  # no attributes predicted: F1 0
    full = lscoring.ImageScorer(gt, [Instance(1, 0.9, "1_3", y, x, w.copy(), int(w.sum()), 0)], "category").score()
    assert full == (0.5, {1: 1.0, 5: 0.0})  # by category alone the attributes do not count
    assert lscoring.class_keys_of(True, "2020") == lscoring.class_keys_of(False, "2020") == "attributes"
    assert lscoring.class_keys_of(True) == "class_id" and lscoring.class_keys_of(False) == "category"
    with pytest.raises(ValueError, match="class_keys"):
        lscoring.ImageScorer(gt, [], "full")
