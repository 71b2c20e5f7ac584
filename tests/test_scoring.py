"""lib/scoring.py: the Kaggle metric and COCO mask AP of a prediction table after post-processing."""
from __future__ import annotations

import numpy as np
import pytest

from lib import prediction_table as lpred
from lib import scoring as lscoring
from lib.kaggle_data import resize_mask
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
    s = lscoring.score_table(t2, gt, {"attributes": "on"}, full_class_ids=True, progress=False)
    assert s["kaggle"] == 1.0 and "10_3_7" in s["per_class"]
    s = lscoring.score_table(t2, gt, full_class_ids=True, progress=False)  # attributes off: "10" != "10_3_7"
    assert s["kaggle"] < 1.0
