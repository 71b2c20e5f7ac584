"""lib/prediction_table.py: mask crops round trip, typed tables, the images table, reading 05 outputs."""
import json

import numpy as np
import pandas as pd
import pytest

from lib import prediction_table as lpred


def _row(image_id, model, prob, score=0.9):
    x0, y0, png = lpred.encode_prob(prob)
    return {"image_id": image_id, "model": model, "category": 3, "score": score, "x1": 0, "y1": 0, "x2": 1, "y2": 1,
            "orig_height": prob.shape[0], "orig_width": prob.shape[1], "mask_height": prob.shape[0],
            "mask_width": prob.shape[1], "mask_x0": x0, "mask_y0": y0, "mask_png": png, "attr_scores": None}


def _out_dir(root, rows, images, meta=None):
    root.mkdir(parents=True)
    lpred.make_table(rows).to_parquet(root / "predictions.parquet")
    pd.DataFrame({"image_id": images, "orig_height": 6, "orig_width": 5}).to_parquet(root / "images.parquet")
    if meta is not None:
        (root / "meta.json").write_text(json.dumps(meta))
    return root


def test_prob_crop_round_trip_is_quantised_and_cropped():
    prob = np.zeros((6, 5), np.float32)
    prob[2:4, 1:3] = [[0.2, 0.5], [1.0, 0.004]]
    x0, y0, png = lpred.encode_prob(prob)
    assert (x0, y0) == (1, 2)
    back = lpred.decode_prob({"mask_height": 6, "mask_width": 5, "mask_x0": x0, "mask_y0": y0, "mask_png": png,
                              "image_id": "a"})
    assert np.abs(back - prob).max() <= 0.5 / 255 + 1e-7 and back[0].sum() == 0
    x0, y0, _ = lpred.encode_prob(np.zeros((4, 4), np.float32))  # empty: a 1x1 zero crop at the origin
    assert (x0, y0) == (0, 0)


def test_make_table_types_and_read_table_refuses_other_files(tmp_path):
    t = lpred.make_table([_row("a.jpg", "m", np.ones((6, 5), np.float32))])
    assert list(t.columns) == lpred.COLUMNS and t["category"].dtype == np.int16 and t["score"].dtype == np.float32
    assert len(lpred.make_table([])) == 0 and list(lpred.make_table([]).columns) == lpred.COLUMNS
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a prediction table"):
        lpred.read_table(tmp_path / "other.parquet")


def test_check_images():
    good = pd.DataFrame({"image_id": ["a", "b"], "orig_height": [4, 4], "orig_width": [5, 5]})
    assert lpred.check_images(good) is good
    with pytest.raises(ValueError, match="lacks columns"):
        lpred.check_images(good.drop(columns="orig_width"))
    with pytest.raises(ValueError, match="'a' more than once"):
        lpred.check_images(pd.concat([good, good.head(1)]))


def test_split_source_only_for_prepared_splits(tmp_path):
    p = np.ones((6, 5), np.float32)
    test = _out_dir(tmp_path / "test", [_row("a.jpg", "x", p)], ["a.jpg"], {"source": {"data_dir": "d"}})
    assert lpred.split_source([test]) is None
    val = _out_dir(tmp_path / "val", [_row("a.jpg", "x", p)], ["a.jpg"],
                   {"source": {"prepared_dir": str(tmp_path / "prep"), "split": "val"}})
    s = lpred.split_source([val / "predictions.parquet"])
    assert s["split"] == "val" and s["gt"] is None and s["image_dir"] == str(tmp_path / "prep" / "images")
    (val / "gt.csv").write_text("ImageId,EncodedPixels,Height,Width,ClassId\n")
    assert lpred.split_source([val])["gt"] == str(val / "gt.csv") and list(s["images"]["image_id"]) == ["a.jpg"]
