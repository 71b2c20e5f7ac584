"""lib/boxes.py: one boxes-from-masks rule on NumPy arrays and torch tensors (x2/y2 exclusive)."""
import numpy as np
import torch

from lib.boxes import extent_boxes, mask_bbox, mask_boxes, prob_boxes, prob_boxes_torch


def test_mask_bbox_one_pixel_full_and_empty():
    m = np.zeros((5, 7), np.uint8)
    assert mask_bbox(m) is None
    m[2, 3] = 1
    assert mask_bbox(m) == [3, 2, 4, 3]
    assert mask_bbox(np.ones((5, 7), bool)) == [0, 0, 7, 5]


def test_extent_boxes_from_rows_and_columns():
    rows = torch.tensor([[False, True, True, False], [False, False, False, False]])
    cols = torch.tensor([[True, False, False, True, False], [False, False, False, False, False]])
    assert extent_boxes(rows, cols).tolist() == [[0, 1, 4, 3], [0, 0, 5, 4]]  # empty: the whole frame


def test_mask_boxes_on_tensors_match_mask_bbox():
    m = torch.zeros((3, 7, 9), dtype=torch.uint8)
    m[0, 3, 4] = 1
    m[1, :, :] = 1
    m[2, 1:3, 5:9] = 1
    m[2, 6, 0] = 1
    got = mask_boxes(m).tolist()
    assert got == [[float(v) for v in mask_bbox(x.numpy())] for x in m]
    assert got == [[4, 3, 5, 4], [0, 0, 9, 7], [0, 1, 9, 7]]
    assert mask_boxes(torch.zeros((0, 4, 4), dtype=torch.uint8)).shape == (0, 4)
    for other in (m.bool(), m.float() * 0.3, -m.float(), m * 200):  # any nonzero value is foreground
        assert mask_boxes(other).tolist() == got


def test_prob_boxes_threshold_then_nonzero_then_zeros():
    m = np.zeros((3, 10, 12), np.float32)
    m[0, 2:5, 3:9] = 0.8
    m[1, 1, 1] = 0.2  # only weak pixels: their box
    np.testing.assert_array_equal(prob_boxes(m), [[3, 2, 9, 5], [1, 1, 2, 2], [0, 0, 0, 0]])


def test_prob_boxes_torch_equals_the_numpy_rule():
    """The on-device boxes (of TTA-fused maps) = the NumPy rule: the pixels >= 0.5, else the nonzero
    ones (however faint, subnormal floats included), else zeros."""
    rng = np.random.default_rng(1)
    maps = (rng.random((6, 12, 16)) * (rng.random((6, 12, 16)) < 0.2)).astype(np.float32)
    maps[1] = 0.0
    maps[1, 3:5, 7:9] = 0.3  # nothing >= 0.5: the box of the nonzero pixels
    maps[2] = 0.0
    maps[2, 6, 2] = np.float32(1e-40)  # subnormal, still nonzero
    maps[3] = 0.0  # all zero
    maps[4, 0, 0] = 0.5  # exactly the threshold
    got = prob_boxes_torch(torch.from_numpy(maps)).numpy()
    np.testing.assert_array_equal(got, prob_boxes(maps))
    assert got.dtype == np.float32 and got[2].tolist() == [2, 6, 3, 7] and got[3].tolist() == [0, 0, 0, 0]
