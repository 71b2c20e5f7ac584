"""lib/postprocess.py: parameters, post-processing of one image (thresholds, NMS, overlaps, attributes, resizing)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from lib import postprocess as lpost
from lib import prediction_table as lpred
from lib import rle as lrle

S = 32  # mask side of most tests


def rect(y0, x0, y1, x1, value=1.0, hw=(S, S)):
    m = np.zeros(hw, np.float32)
    m[y0:y1, x0:x1] = value
    return m


def pred_rows(image_id, masks, cats, scores, orig=(64, 48), attrs=None, model="m"):
    rows = []
    for i, m in enumerate(masks):
        x0, y0, png = lpred.encode_prob(m)
        rows.append({"image_id": image_id, "model": model, "category": int(cats[i]), "score": float(scores[i]),
                     "x1": 0, "y1": 0, "x2": 1, "y2": 1, "orig_height": orig[0], "orig_width": orig[1],
                     "mask_height": m.shape[0], "mask_width": m.shape[1], "mask_x0": x0, "mask_y0": y0,
                     "mask_png": png, "attr_scores": None if attrs is None else list(attrs[i])})
    return rows


def table(*parts):
    return lpred.make_table([r for p in parts for r in p])


def post(t, out_size=(S, S), **params):
    return lpost.postprocess_image(t, lpost.Params(**params), out_size)


def images_df(ids, h=64, w=48):
    return pd.DataFrame({"image_id": ids, "orig_height": h, "orig_width": w})


def write_gt(path, items):
    """items: [(image_id, mask (H, W), class_id)] -> train.csv-format file."""
    lines = ["ImageId,EncodedPixels,Height,Width,ClassId"]
    for image_id, m, cls in items:
        lines.append(f"{image_id},{lrle.encode(m)},{m.shape[0]},{m.shape[1]},{cls}")
    Path(path).write_text("\n".join(lines) + "\n")
    return path


# ------------------------------------------------------------------ parameters


def test_params_defaults_overrides_and_errors(tmp_path):
    p = lpost.Params()
    assert p.score_thresh == 0.5 and p.mask_thresh == 0.45 and p.nms_iou == 0.3
    assert p.overlap == "score" and p.min_area == 20 and p.keep_categories is None
    p = lpost.Params.from_dict({"score_thresh": 0.3}).replace(score_thresh=None, mask_thresh=0.6,
                                                              keep_categories="garments", drop_categories="1,2")
    assert p.score_thresh == 0.3 and p.mask_thresh == 0.6
    assert p.keep_categories == tuple(range(27)) and p.drop_categories == (1, 2)
    with pytest.raises(ValueError, match="unknown post-processing parameters"):
        lpost.Params.from_dict({"score": 0.3})
    with pytest.raises(ValueError, match="overlap"):
        lpost.Params(overlap="union")
    with pytest.raises(ValueError, match="score_thresh"):
        lpost.Params(score_thresh=1.5)
    with pytest.raises(ValueError, match="out of range"):
        lpost.Params(keep_categories=[46])
    lpost.save_params(tmp_path / "params.json", p, kaggle=0.5)
    assert lpost.load_params(tmp_path / "params.json") == p
    (tmp_path / "flat.json").write_text(json.dumps({"min_area": 7}))
    assert lpost.load_params(tmp_path / "flat.json").min_area == 7


KNOWN = sorted(lpost.Params.names())


@pytest.mark.parametrize("values, message", [
    ({"score_thresh": 1.5}, "score_thresh must be in [0, 1], got 1.5"),
    ({"mask_thresh": -0.1}, "mask_thresh must be in [0, 1], got -0.1"),
    ({"attr_thresh": 2}, "attr_thresh must be in [0, 1], got 2.0"),
    ({"nms_iou": -1}, "nms_iou must be >= 0, got -1.0"),
    ({"min_area": -3}, "min_area must be >= 0, got -3"),
    ({"overlap": "union"}, "overlap must be 'score' or 'none', got 'union'"),
    ({"attributes": "yes"}, "attributes must be 'off' or 'on', got 'yes'"),
    ({"keep_categories": [46]}, "keep_categories: categories [46] out of range 0-45"),
    ({"drop_categories": [None]}, "drop_categories: expected a category spec string or a list of ids, got [None]"),
    ({"keep_categories": "0-99"}, "category 46 in '0-99' is out of range 0-45"),
    ({"score": 0.3}, f"unknown post-processing parameters ['score']; known: {KNOWN}"),
])
def test_a_bad_value_is_the_same_error_however_the_record_is_made(tmp_path, values, message):
    """The parameter checks' messages, from the constructor, a dict, replace and a params.json (which names the file)."""
    makers = [lambda: lpost.Params.from_dict(values), lambda: lpost.Params().replace(**values)]
    if "score" not in values:
        makers.append(lambda: lpost.Params(**values))
    for make in makers:
        with pytest.raises(ValueError) as e:
            make()
        assert str(e.value) == message
    (tmp_path / "params.json").write_text(json.dumps({"params": values}))
    with pytest.raises(ValueError) as e:
        lpost.load_params(tmp_path / "params.json")
    assert str(e.value) == f"{tmp_path / 'params.json'}: {message}"


def test_a_record_is_checked_once_and_passed_down_as_it_is(monkeypatch):
    made = []
    check = lpost.Params.__post_init__
    monkeypatch.setattr(lpost.Params, "__post_init__", lambda self: (made.append(self), check(self))[1])
    params = lpost.Params(score_thresh=0.3, nms_iou=0.5, min_area=0, keep_categories="0-9")
    assert len(made) == 1 and params.keep_categories == tuple(range(10))
    t = table(pred_rows("a", [rect(4, 4, 20, 20), rect(12, 4, 28, 20)], [3, 3], [0.7, 0.9]))
    assert [c for c, _, _ in lpost.postprocess_image(t, params, (S, S))] == ["3", "3"]
    assert lpost.finalize(lpost.decode_windows(t, (S, S)), params, (S, S))
    assert len(made) == 1  # post-processing reads the record, it does not make or check another
    assert lpost.Params.of(params) is params and params.replace() is params
    assert params.replace(score_thresh=None, keep_categories=None) is params  # None = not given
    assert params.replace(min_area=5).min_area == 5 and len(made) == 2 and params.min_area == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.score_thresh = 0.9


def test_none_overrides_are_ignored_but_a_dict_sets_none():
    kept = lpost.Params(keep_categories=[2, 1], min_area=5)
    assert kept.replace(keep_categories=None, min_area=None, overlap="none") == lpost.Params(
        keep_categories=(1, 2), min_area=5, overlap="none")
    assert lpost.Params.from_dict({"keep_categories": None}).keep_categories is None  # given: all categories
    assert lpost.Params.of(None) == lpost.Params() == lpost.Params.from_dict({})
    with pytest.raises(ValueError, match="unknown post-processing parameters"):
        kept.replace(score=None)  # an unknown name is an error even when not given


def test_params_json_round_trip_is_byte_for_byte_the_format_of_before(tmp_path):
    p = lpost.Params(score_thresh=0.3, drop_categories="7,1", keep_categories=None, attributes="on")
    want = {"score_thresh": 0.3, "mask_thresh": 0.45, "nms_iou": 0.3, "overlap": "score", "min_area": 20,
            "keep_categories": None, "drop_categories": [1, 7], "attributes": "on", "attr_thresh": 0.5}
    assert p.to_json() == want and list(p.to_json()) == list(want)  # keys in the order params.json writes them
    lpost.save_params(tmp_path / "params.json", p, kaggle=0.5, grid={"score_thresh": [0.3, 0.5]})
    assert (tmp_path / "params.json").read_text() == json.dumps(
        {"params": want, "kaggle": 0.5, "grid": {"score_thresh": [0.3, 0.5]}}, indent=2) + "\n"
    assert lpost.load_params(tmp_path / "params.json") == p == lpost.Params.from_dict(p.to_json())
    q = lpost.Params(keep_categories="garments")
    assert lpost.Params.from_dict(json.loads(json.dumps(q.to_json()))) == q


# ------------------------------------------------------------------ post-processing


def test_overlap_suppression_keeps_the_higher_score_pixels():
    hi, lo = rect(4, 4, 20, 20), rect(12, 4, 28, 20)  # same category, IoU 128/384 = 0.33 (NMS at 0.5 keeps both)
    other = rect(4, 4, 20, 20)  # another category on the same pixels: untouched
    t = table(pred_rows("a", [lo, hi, other], [3, 3, 8], [0.7, 0.9, 0.8]))
    out = post(t, nms_iou=0.5)
    assert [(c, s) for c, _, s in out] == [("3", pytest.approx(0.9)), ("8", pytest.approx(0.8)),
                                           ("3", pytest.approx(0.7))]
    np.testing.assert_array_equal(out[0][1], hi)  # the higher score keeps every pixel
    np.testing.assert_array_equal(out[1][1], other)
    np.testing.assert_array_equal(out[2][1], rect(20, 4, 28, 20))  # the lower one loses the shared rows
    assert not (out[0][1] & out[2][1]).any()
    out = post(t, nms_iou=0.5, overlap="none")
    np.testing.assert_array_equal(out[2][1], lo)


def test_nms_drops_a_duplicate_per_category():
    a, b = rect(4, 4, 20, 20), rect(5, 4, 21, 20)  # IoU 15/17 = 0.88
    t = table(pred_rows("a", [a, b, b], [1, 1, 2], [0.9, 0.8, 0.6]))
    assert [c for c, _, _ in post(t, min_area=0)] == ["1", "2"]  # the duplicate of category 1 is gone
    assert [c for c, _, _ in post(t, min_area=0, nms_iou=0.85)] == ["1", "2"]
    out = post(t, min_area=0, nms_iou=0.9)  # IoU 0.88 is not > 0.9: kept, reduced to its one-row sliver
    assert [c for c, _, _ in out] == ["1", "1", "2"]
    np.testing.assert_array_equal(out[1][1], rect(20, 4, 21, 20))
    assert [c for c, _, _ in post(t, nms_iou=1.0, overlap="none")] == ["1", "1", "2"]  # NMS off
    assert [c for c, _, _ in post(t, nms_iou=1.0)] == ["1", "2"]  # the sliver (16 px) is under min_area 20
    tie = table(pred_rows("a", [rect(0, 0, 10, 20), rect(0, 0, 10, 10)], [1, 1], [0.9, 0.8]))  # IoU exactly 0.5
    assert len(post(tie, nms_iou=0.5, overlap="none", min_area=0)) == 2  # suppressed only when IoU > nms_iou
    assert len(post(tie, nms_iou=0.49, overlap="none", min_area=0)) == 1


def test_min_area_score_and_mask_thresholds_and_categories():
    small = rect(0, 0, 4, 5)  # 20 px
    t = table(pred_rows("a", [small, rect(10, 10, 20, 20), rect(22, 22, 30, 30, 0.5)], [0, 1, 2], [0.9, 0.5, 0.9]))
    assert [c for c, _, _ in post(t)] == ["0", "2", "1"]  # by score, ties in table order
    assert [c for c, _, _ in post(t, min_area=21)] == ["2", "1"]
    assert [c for c, _, _ in post(t, score_thresh=0.51)] == ["0", "2"]  # 0.5 >= 0.5 kept, below dropped
    assert [c for c, _, _ in post(t, mask_thresh=0.6)] == ["0", "1"]  # the 0.5-probability mask vanishes
    assert [c for c, _, _ in post(t, keep_categories=[1, 2], drop_categories=[2])] == ["1"]
    assert post(t.iloc[:0]) == []


def test_attributes_on_only_for_attribute_categories():
    attrs = np.zeros((3, 92), np.float32)
    attrs[:, [3, 40, 7]] = [0.9, 0.5, 0.2]
    t = table(pred_rows("a", [rect(0, 0, 10, 10), rect(12, 12, 22, 22), rect(0, 20, 10, 30)], [10, 20, 6],
                        [0.9, 0.8, 0.7], attrs=attrs))
    assert [c for c, _, _ in post(t)] == ["10", "20", "6"]
    assert [c for c, _, _ in post(t, attributes="on")] == ["10_3_40", "20", "6_3_40"]
    assert [c for c, _, _ in post(t, attributes="on", attr_thresh=0.1)] == ["10_3_7_40", "20", "6_3_7_40"]


@pytest.mark.parametrize("out_size", [(32, 32), (77, 50), (13, 20), (9, 64)])
def test_resizing_matches_a_full_bilinear_resize_then_threshold(out_size):
    rng = np.random.default_rng(sum(out_size))
    masks = []
    for y0, x0, y1, x1 in [(0, 0, 9, 12), (5, 7, 30, 20), (20, 20, 32, 32), (3, 25, 11, 32)]:
        masks.append(rect(y0, x0, y1, x1, 1.0) * rng.uniform(0.2, 1, (S, S)).astype(np.float32))
    t = table(pred_rows("a", masks, [0, 1, 2, 3], [0.9, 0.8, 0.7, 0.6]))
    out = post(t, out_size, min_area=0, nms_iou=1.0)
    for (cls, got, _), m in zip(out, masks):
        q = np.rint(m * 255).astype(np.float32) / 255  # the table's 1/255 quantisation
        full = cv2.resize(q, (out_size[1], out_size[0]), interpolation=cv2.INTER_LINEAR)
        assert got.shape == out_size and got.dtype == np.uint8
        np.testing.assert_array_equal(got, (full >= 0.45).astype(np.uint8), err_msg=cls)


# ------------------------------------------------------------------ build / validate / write


def test_window_rle_equals_encoding_the_full_canvas():
    rng = np.random.default_rng(3)
    for _ in range(300):
        H, W = rng.integers(1, 12, 2)
        y0, x0 = rng.integers(0, H), rng.integers(0, W)
        h, w = rng.integers(1, H - y0 + 1), rng.integers(1, W - x0 + 1)
        if rng.random() < 0.3:
            y0, h = 0, H  # full-height windows: runs continue across columns
        m = rng.random((h, w)) < rng.choice([0.3, 0.9, 1.0])
        inst = lpost.Instance(0, 1.0, "0", int(y0), int(x0), m, int(m.sum()))
        assert inst.rle((H, W)) == lrle.encode(inst.full((H, W)))


def test_per_attribute_thresholds_decide_the_class_id_and_round_trip(tmp_path):
    attrs = np.zeros(92, np.float32)
    attrs[[3, 7]] = 0.4
    t = table(pred_rows("a", [rect(4, 4, 20, 20)], [1], [0.9], attrs=[attrs]))
    shared = lpost.Params(attributes="on")
    assert [c for c, _, _ in lpost.postprocess_image(t, shared, (S, S))] == ["1"]  # 0.4 < 0.5
    thr = np.full(92, 0.5)
    thr[7] = 0.3
    tuned = lpost.Params(attributes="on", attr_thresholds=thr)
    assert [c for c, _, _ in lpost.postprocess_image(t, tuned, (S, S))] == ["1_7"]
    assert tuned.attr_thresholds == tuple(thr) and all(type(v) is float for v in tuned.attr_thresholds)
    lpost.save_params(tmp_path / "p.json", tuned)
    assert lpost.load_params(tmp_path / "p.json") == tuned
    assert "attr_thresholds" not in shared.to_json()  # untuned files keep their format
    with pytest.raises(ValueError, match="attr_thresholds"):
        lpost.Params(attr_thresholds=[0.5, 1.5])
    with pytest.raises(ValueError, match="attr_thresholds has 3 values"):
        lpost.postprocess_image(t, lpost.Params(attributes="on", attr_thresholds=[0.5] * 3), (S, S))
