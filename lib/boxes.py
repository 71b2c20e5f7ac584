"""Boxes from masks: one rule for the whole pipeline.

A box is ``[x1, y1, x2, y2]`` in pixels of its mask, ``x2``/``y2`` exclusive: the columns ``x1..x2-1`` and rows
``y1..y2-1`` are the first and last that hold foreground (a one-pixel mask at (r, c) has the box
``[c, r, c + 1, r + 1]``), as torchvision expects of boxes made from masks. An empty mask has no box (None),
or all zeros where a box per mask is needed.

Foreground is ``mask != 0`` for a binary mask. For a soft probability map it is the pixels ``>= thresh``,
else (a map whose every value is below ``thresh``) its nonzero pixels, so a faint instance still gets a box.

The same rule on NumPy arrays (01's records, the fusion of prediction tables: :func:`mask_bbox`,
:func:`prob_boxes`) and on torch tensors on any device (training targets after augmentation, TTA fusion on
the accelerator: :func:`mask_boxes`, :func:`prob_boxes_torch`), both from per-row / per-column reductions.
(:func:`lib.rle.runs_bbox` finds the same window from a run-length encoding without decoding it.)
"""
from __future__ import annotations

import numpy as np

__all__ = ["mask_bbox", "prob_boxes", "extent_boxes", "mask_boxes", "prob_boxes_torch"]


def mask_bbox(mask: np.ndarray) -> list[int] | None:
    """The box of a (H, W) mask (nonzero = foreground) as ``[x1, y1, x2, y2]`` ints, or None if it is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return [int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1]


def prob_boxes(maps: np.ndarray, thresh: float = 0.5) -> np.ndarray:
    """(N, H, W) probabilities -> (N, 4) float32 boxes of the pixels ``>= thresh`` (else the nonzero ones;
    zeros for an all-zero map)."""
    out = np.zeros((len(maps), 4), np.float32)
    for i, m in enumerate(maps):
        fg = m >= thresh
        box = mask_bbox(fg if fg.any() else m > 0)
        if box is not None:
            out[i] = box
    return out


def extent_boxes(rows, cols):
    """(N, 4) float32 tensor of boxes from which rows (N, H) and columns (N, W) of N masks hold foreground
    (bool tensors); a mask without any such row gets ``[0, 0, W, H]`` - callers with empty masks zero those."""
    import torch

    h, w = rows.shape[1], cols.shape[1]
    y1 = rows.int().argmax(dim=1)
    y2 = h - rows.flip(1).int().argmax(dim=1)
    x1 = cols.int().argmax(dim=1)
    x2 = w - cols.flip(1).int().argmax(dim=1)
    return torch.stack([x1, y1, x2, y2], dim=1).float()


def row_col_any(masks):
    """Which rows (N, H) and columns (N, W) of each (N, H, W) mask tensor are nonzero: two max-reductions of
    the masks as they are (no full-size boolean copy)."""
    import torch

    m = masks.as_subclass(torch.Tensor)
    if m.dtype == torch.bool:
        return m.any(dim=2), m.any(dim=1)
    if m.is_floating_point():
        m = m.abs()
    return m.amax(dim=2) != 0, m.amax(dim=1) != 0


def mask_boxes(masks):
    """(N, H, W) non-empty mask tensor (any dtype, nonzero = foreground) -> (N, 4) float32 boxes."""
    return extent_boxes(*row_col_any(masks))


def prob_boxes_torch(maps, thresh: float = 0.5):
    """:func:`prob_boxes` of an (M, H, W) probability tensor on its device: (M, 4) float32 tensor."""
    import torch

    row_max, col_max = maps.amax(2), maps.amax(1)  # (M, H), (M, W)
    strong = (row_max.amax(1) >= thresh)[:, None]
    rows = torch.where(strong, row_max >= thresh, row_max > 0)
    cols = torch.where(strong, col_max >= thresh, col_max > 0)
    boxes = extent_boxes(rows, cols)
    boxes[~rows.any(1)] = 0
    return boxes
