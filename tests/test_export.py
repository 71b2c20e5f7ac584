"""lib/export.py: overlays and COCO results of post-processed predictions, one model or several fused."""
import json

import cv2
import numpy as np
import pandas as pd
from pycocotools import mask as mask_utils

from lib import export
from lib import prediction_table as lpred
from lib.postprocess import save_params
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


def test_overlays_and_coco_results_follow_the_post_processed_masks(tmp_path):
    frame, paths = _images(tmp_path, {"a.jpg": (40, 30), "sub/b.png": (20, 24)})
    a = rect(5, 4, 25, 20, 0.9, hw=(40, 30))
    table = lpred.make_table(pred_rows("a.jpg", [a, rect(0, 0, 3, 3, 0.9, hw=(40, 30))], [6, 31], [0.8, 0.2],
                                       orig=(40, 30)))
    got = export.export_predictions(tmp_path / "out", table, frame, paths, [f"c{i}" for i in range(46)],
                                    progress=False)
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
    got = export.export_predictions(tmp_path / "out", lpred.make_table([]), frame, paths, None, overlays=False,
                                    progress=False)
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
    save_params(tmp_path / "params.json", {"score_thresh": 0.3},
                ensemble={"models": ["x", "y"], "weights": [1.0, 1.0], "iou": 0.5, "min_votes": 2})
    fused, params, what = export.export_table(table, tmp_path / "params.json")
    assert what == "ensemble of x+y" and list(fused["category"]) == [3] and params["score_thresh"] == 0.3
    one, _, what = export.export_table(table[table["model"] == "x"])
    assert what == "x" and len(one) == 1
