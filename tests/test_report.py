"""lib/report.py and the overlay helpers of lib/viz.py."""
import re

import cv2
import numpy as np
import pandas as pd
import pytest

from lib import files as lfiles
from lib import prediction_table as lpred
from lib import rle as lrle
from lib import viz
from lib.report import category_names, train_dirs_from_predictions, write_report


def test_draw_overlay_colours_masked_pixels_only():
    img = np.full((60, 80, 3), 128, np.uint8)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 30:50, 5:30] = True
    masks[1, 35:55, 45:75] = True
    out = viz.draw_overlay(img, masks, ["dress", "sleeve"], [0.9, 0.5])
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    assert (img == 128).all()  # input untouched
    # inside the masks (away from contours and labels) the colour is the class colour blended in
    for m, name, (y, x) in ((0, "dress", (45, 17)), (1, "sleeve", (50, 60))):
        expect = np.clip(0.55 * 128 + 0.45 * np.array(viz.class_color(name)), 0, 255)
        np.testing.assert_allclose(out[y, x], expect, atol=1.5)
    # far from every mask and label: unchanged
    assert (out[2:20, 40:44] == 128).all() and (out[58:, :3] == 128).all()
    assert viz.class_color("dress") != viz.class_color("sleeve")


def test_draw_overlay_empty_and_bad_input():
    img = np.zeros((10, 12, 3), np.uint8)
    np.testing.assert_array_equal(viz.draw_overlay(img, np.zeros((0, 10, 12), bool), []), img)
    with pytest.raises(ValueError, match="1 masks, 2 names"):
        viz.draw_overlay(img, np.ones((1, 10, 12), bool), ["a", "b"])


def test_image_grid_layout():
    a = np.zeros((40, 20, 3), np.uint8)
    b = np.full((80, 80, 3), 255, np.uint8)
    g = viz.image_grid([a, b], ["a", "b"], height=40, pad=4)
    assert g.dtype == np.uint8 and g.shape == (4 + 22 + 40 + 4, 4 + 20 + 4 + 40 + 4, 3)
    g2 = viz.image_grid([a, a, a], None, ncols=2, height=40, pad=4)
    assert g2.shape == (2 * (40 + 4) + 4, 4 + 20 + 4 + 20 + 4, 3)


def test_plot_class_scores(tmp_path):
    p = viz.plot_class_scores({"dress": 0.8, "sleeve": 0.2, "bad": float("nan")}, tmp_path / "c.png", "t")
    img = cv2.imread(str(p))
    assert img is not None and img.shape[0] > 50


def _table(image_id, orig_hw, mask_hw, rect, category, score, model):
    prob = np.zeros(mask_hw, np.float32)
    y0, y1, x0, x1 = rect
    prob[y0:y1, x0:x1] = 0.95
    mx0, my0, png = lpred.encode_prob(prob)
    return {"image_id": image_id, "model": model, "category": category, "score": score, "x1": 0, "y1": 0,
            "x2": 1, "y2": 1, "orig_height": orig_hw[0], "orig_width": orig_hw[1], "mask_height": mask_hw[0],
            "mask_width": mask_hw[1], "mask_x0": mx0, "mask_y0": my0, "mask_png": png, "attr_scores": None}


def test_write_report(tmp_path):
    data = tmp_path / "data"
    (data / "test").mkdir(parents=True)
    ids = [f"img{i}.jpg" for i in range(3)]
    for i, iid in enumerate(ids):
        img = np.full((90, 60, 3), 40 * i, np.uint8)
        cv2.imwrite(str(data / "test" / iid), img)
    gt_mask = np.zeros((90, 60), np.uint8)
    gt_mask[20:60, 10:40] = 1
    pd.DataFrame({"ImageId": ids[:2], "EncodedPixels": [lrle.encode(gt_mask)] * 2, "Height": [90, 90],
                  "Width": [60, 60], "ClassId": ["10", "31_5"]}).to_csv(data / "gt.csv", index=False)
    rows = [_table(ids[0], (90, 60), (64, 64), (14, 42, 10, 43), 10, 0.9, "a"),
            _table(ids[1], (90, 60), (64, 64), (10, 20, 10, 20), 31, 0.3, "a")]
    tables = {"a": lpred.make_table(rows), "ensemble": lpred.make_table(rows[:1])}
    train = tmp_path / "runs" / "a"
    train.mkdir(parents=True)
    viz.plot_class_scores({"x": 0.5}, train / "curves.png")
    for rec in ({"kind": "epoch", "epoch": 1, "step": 10, "val_kaggle": 0.125},
                {"kind": "epoch", "epoch": 2, "step": 20, "val_kaggle": 0.375}):
        lfiles.append_jsonl(train / "metrics.jsonl", rec)
    lfiles.atomic_write_json(train / "val_scores.json", {"best": {"epoch": 2, "kaggle": 0.25, "coco": {"AP": 0.1}},
                                                         "latest": {"epoch": 3, "kaggle": 0.2, "coco": {"AP": 0.1}}})
    scores = {"a": {"kaggle": 0.5, "AP": 0.3, "AP50": 0.6, "AP75": 0.2, "num_images": 3,
                    "per_class": {"10": 1.0, "31": 0.0}}}
    index = write_report(tmp_path / "sub" / "report", data, tables, {"score_thresh": 0.2}, data / "gt.csv",
                         [train], scores, n_images=2, extra={"submission": "sub/submission.csv"})
    assert index == tmp_path / "sub" / "report" / "index.html"
    html = index.read_text()
    srcs = re.findall(r"<img src='([^']+)'", html)
    assert srcs, "no images in the page"
    for s in srcs:
        assert not s.startswith("/") and (index.parent / s).is_file(), s
    overlays = [s for s in srcs if s.startswith("overlays/")]
    assert len(overlays) == 2  # the sample prefers images with ground truth: img0, img1
    assert {f"overlays/img{i}.png" for i in (0, 1)} == set(overlays)
    assert "curves/a.png" in srcs and "charts/a_per_class.png" in srcs
    # the learning curves of the models (val Kaggle vs step), plotted and tabulated
    assert "curves/learning_curves.png" in srcs
    assert re.search(r"<th>val Kaggle at step</th><th>10</th><th>20</th></tr><tr><td>a</td><td>0.1250</td>"
                     r"<td>0.3750</td>", html)
    assert "0.5000" in html and "0.2500" in html and "sub/submission.csv" in html
    names = category_names(None)
    assert names[10] == "dress" and names[31] == "sleeve"
    # panels: image | ground truth | a | ensemble, all at the display height
    grid = cv2.imread(str(index.parent / "overlays/img0.png"))
    assert grid.shape[0] == 6 + 22 + 90 + 6 and grid.shape[1] == 6 + 4 * (60 + 6)
    # the "a" panel of img0 shows the dress in its class colour
    panel_a = grid[6 + 22:, 6 + 2 * 66: 6 + 2 * 66 + 60, ::-1]
    expect = np.clip(0.55 * 0 + 0.45 * np.array(viz.class_color("dress")), 0, 255)
    np.testing.assert_allclose(panel_a[45, 25], expect, atol=2)


def test_train_dirs_from_predictions(tmp_path):
    (tmp_path / "unet").mkdir()
    lfiles.atomic_write_json(tmp_path / "pred" / "meta.json",
                             {"models": [{"name": "u", "checkpoint": str(tmp_path / "unet" / "best.pth")},
                                         {"name": "gone", "checkpoint": str(tmp_path / "nope" / "best.pth")}]})
    assert train_dirs_from_predictions([tmp_path / "pred"]) == {"u": tmp_path / "unet"}
    assert train_dirs_from_predictions([tmp_path / "pred" / "predictions.parquet"]) == {"u": tmp_path / "unet"}
