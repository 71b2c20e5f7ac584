"""Mask crops pasted into an image frame: all of an image's masks in one batched ``grid_sample``, no host sync
per detection (torchvision's ``paste_masks_in_image`` converts every box to Python ints, one sync each).

The detectors (Mask R-CNN, DeepMAC) predict each mask as an ``(M, M)`` crop of probabilities over its box;
by default their ``transform.postprocess`` pastes every crop at the input image size (float32, one
full-size map per detection). Inside :func:`crops_from` they return the crops instead (``mask_crops
(N, 1, M, M)``, boxes in input pixels as usual), and :func:`masks_in_frame` pastes them straight into the
frame the caller keeps: 05's stored ``mask_size x mask_size`` map, or the input size for validation. Models
that never paste (the UNet: ``masks (N, 1, H, W)`` at the input size) go through the same call: their maps
are resized to the frame (:func:`resize_maps`).

Geometry (:func:`paste_masks`) is torchvision's paste rule, evaluated per pixel: the crop padded by one
zero cell on each side, its box widened by ``(M + 2) / M`` about its centre and truncated to whole pixels
``[a, b]`` (b inclusive, as torchvision's ``+ 1``), the padded crop resampled bilinearly
(``align_corners=False``) onto those ``b - a + 1`` pixels; zero outside ``[a, b]`` and outside the frame.
At the same frame size this is torchvision's result up to float rounding. For another frame size
:func:`masks_in_frame` rounds the boxes in the input's pixels (``box_hw``) and the frame samples that paste
at its own pixel centres: what pasting at the input size and resizing gave 05 before, less the resize's
antialiasing, with no full-size map (rounding the scaled boxes to whole pixels of a 512 x 512 frame
instead would grow the masks, by about 2 % of their area from a 768 x 1024 input). detectron2's
``paste_masks_in_image`` pastes the same way (one ``grid_sample`` per chunk of masks over the image on the
GPU, each mask over its own box on the CPU) with a continuous box instead of whole pixels.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["paste_masks", "crops_from", "masks_in_frame", "resize_maps", "default_chunk", "CHUNK_PIXELS"]

CHUNK_PIXELS = 1 << 24  # output pixels per grid_sample call: 64 MB float32 maps + 128 MB sampling grid


def default_chunk(frame_hw: tuple[int, int]) -> int:
    """Masks per chunk that keep a chunk's ``(n, H, W)`` output within :data:`CHUNK_PIXELS` (at least 1)."""
    return max(1, CHUNK_PIXELS // max(1, int(frame_hw[0]) * int(frame_hw[1])))


def _extent(lo: torch.Tensor, hi: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torchvision's whole-pixel extent ``[a, b]`` (b inclusive; int64) of the one-cell-padded crop along one
    axis, from the box edges ``lo, hi`` (float32): ``expand_boxes`` by ``(m + 2) / m``, then truncation."""
    half = (hi - lo) * 0.5 * ((m + 2) / m)
    centre = (hi + lo) * 0.5
    return (centre - half).to(torch.int64), (centre + half).to(torch.int64)


def _axis_grid(start: int, stop: int, a: torch.Tensor, b: torch.Tensor, m: int, ratio: float) -> torch.Tensor:
    """``(n, stop - start)`` ``grid_sample`` coordinates (align_corners=False, normalised to the unpadded
    ``m`` cells) of the frame pixels ``start..stop-1`` for crops spanning the box pixels ``[a, b]`` when padded.

    Frame pixel ``x`` sits at ``u = (x + 0.5) * ratio`` in box pixels (edges at integers; ``ratio`` = box
    pixels per frame pixel). Its source position in the padded crop is ``(u - a) * (m + 2) / (b - a + 1) - 0.5``
    (as ``F.interpolate`` resizes the padded crop to the ``b - a + 1`` pixels; ``u = x + 0.5`` at ratio 1), one
    cell less in the unpadded crop, whose outside ``grid_sample`` reads as zeros: the padding. Positions
    outside ``[a, b + 1)`` get a coordinate far outside (sampled as 0)."""
    u = (torch.arange(start, stop, device=a.device, dtype=torch.float32)[None] + 0.5) * ratio
    a_f = a.to(torch.float32)[:, None]
    span = (b - a + 1).clamp_min(1).to(torch.float32)[:, None]
    src = (u - a_f) * ((m + 2) / span) - 1.5
    g = (2 * src + 1) / m - 1
    inside = (u >= a_f) & (u < (b + 1).to(torch.float32)[:, None])
    return torch.where(inside, g, torch.full_like(g, -3.0))


def _sample(crops: torch.Tensor, gx: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """``crops (n, 1, Mh, Mw)`` sampled at the separable grid ``gx (n, w)`` x ``gy (n, h)`` -> ``(n, h, w)``."""
    n, h, w = crops.shape[0], gy.shape[1], gx.shape[1]
    grid = torch.stack((gx[:, None, :].expand(n, h, w), gy[:, :, None].expand(n, h, w)), dim=3)
    return F.grid_sample(crops, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0]


def paste_masks(crops: torch.Tensor, boxes: torch.Tensor, frame_hw: tuple[int, int], chunk: Optional[int] = None,
                by_box: Optional[bool] = None, box_hw: Optional[tuple[int, int]] = None) -> torch.Tensor:
    """Paste mask crops into a frame of ``frame_hw = (H, W)`` pixels, all masks at once.

    Args:
        crops: ``(N, M, M)`` or ``(N, 1, M, M)`` float probabilities (any float dtype; non-square crops work
            too, each axis with its own size).
        boxes: ``(N, 4)`` x1y1x2y2 in the frame's pixels (float; may extend outside the frame), or with
            ``box_hw`` in the pixels of an image of that size covering the same area as the frame.
        frame_hw: the output size ``(H, W)``.
        box_hw: the size ``(h, w)`` the boxes' pixels belong to (default ``frame_hw``): the crops are placed
            by torchvision's rule in whole pixels of that size and the frame samples that paste at its own
            pixel centres (see the module docstring).
        chunk: masks per ``grid_sample`` call (default :func:`default_chunk`: bounded memory); the result does
            not depend on it.
        by_box: paste each mask over its own box only, reading the boxes on the host once (default: on the
            CPU, where that is free and skips the empty pixels); otherwise chunks of masks over the whole
            frame, with no host sync. Both give the same values.

    Returns ``(N, H, W)`` float32 on the crops' device (computed in float32, autocast off): the bilinear
    paste of torchvision's ``paste_masks_in_image`` (see the module docstring), zero outside each mask's
    padded box and outside the frame.
    """
    H, W = int(frame_hw[0]), int(frame_hw[1])
    bh, bw = (H, W) if box_hw is None else (int(box_hw[0]), int(box_hw[1]))
    ry, rx = bh / H, bw / W  # box pixels per frame pixel
    if crops.ndim == 3:
        crops = crops[:, None]
    if crops.ndim != 4 or crops.shape[1] != 1:
        raise ValueError(f"crops must be (N, M, M) or (N, 1, M, M), got shape {tuple(crops.shape)}")
    n, mh, mw = crops.shape[0], crops.shape[-2], crops.shape[-1]
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must be ({n}, 4) x1y1x2y2 (one per crop), got shape {tuple(boxes.shape)}")
    dev = crops.device
    if by_box is None:
        by_box = dev.type == "cpu"
    with torch.autocast(dev.type, enabled=False):
        crops = crops.to(torch.float32)
        boxes = boxes.to(device=dev, dtype=torch.float32)
        ax, bx = _extent(boxes[:, 0], boxes[:, 2], mw)
        ay, by = _extent(boxes[:, 1], boxes[:, 3], mh)
        if by_box:
            out = torch.zeros((n, H, W), dtype=torch.float32, device=dev)
            x0, x1 = _window(ax, bx, rx, W)
            y0, y1 = _window(ay, by, ry, H)
            for i in range(n):
                if x0[i] < x1[i] and y0[i] < y1[i]:
                    out[i, y0[i]:y1[i], x0[i]:x1[i]] = _sample(
                        crops[i:i + 1], _axis_grid(x0[i], x1[i], ax[i:i + 1], bx[i:i + 1], mw, rx),
                        _axis_grid(y0[i], y1[i], ay[i:i + 1], by[i:i + 1], mh, ry))[0]
            return out
        out = torch.empty((n, H, W), dtype=torch.float32, device=dev)
        step = max(1, int(chunk or default_chunk((H, W))))
        for j in range(0, n, step):
            s = slice(j, j + step)
            out[s] = _sample(crops[s], _axis_grid(0, W, ax[s], bx[s], mw, rx),
                             _axis_grid(0, H, ay[s], by[s], mh, ry))
        return out


def _window(a: torch.Tensor, b: torch.Tensor, ratio: float, size: int) -> tuple[list[int], list[int]]:
    """Host lists of the frame pixel ranges ``[start, stop)`` (within ``0..size``) that can see box pixels
    ``[a, b]`` (a pixel or so more is harmless: :func:`_axis_grid` zeroes it)."""
    start = torch.floor(a.to(torch.float64) / ratio).clamp(0, size).to(torch.int64)
    stop = torch.ceil((b + 1).to(torch.float64) / ratio).clamp(0, size).to(torch.int64)
    return start.tolist(), stop.tolist()


@contextlib.contextmanager
def crops_from(model):
    """Inside the block, an eval forward of ``model`` returns unpasted ``mask_crops (N, 1, M, M)`` (and no
    ``masks``) for each image, boxes in input pixels as usual: the model's transform gets ``paste_masks =
    False`` (:class:`lib.models.common.ScaleJitterTransform`); restored after. A no-op for models whose
    transform has no such switch, and the UNet, which never pastes, keeps returning full-size ``masks``.
    Give it the bare model (validation and 05 run the model itself, not its DDP wrapper). Yields ``model``.

    Use with :func:`masks_in_frame`::

        with crops_from(model):
            outs = model(images)
        maps = masks_in_frame(outs[0], images[0].shape[-2:], frame_hw)
    """
    t = getattr(model, "transform", None)
    if t is None or not hasattr(t, "paste_masks"):
        yield model
        return
    old = t.paste_masks
    t.paste_masks = False
    try:
        yield model
    finally:
        t.paste_masks = old


def resize_maps(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, 1, h, w)`` or ``(n, h, w)`` probabilities -> ``(n, H, W)`` float32 at ``size`` on the masks' device
    (bilinear, ``align_corners=False``; antialiased when shrinking)."""
    H, W = int(size[0]), int(size[1])
    m = masks.float()
    if m.ndim == 3:
        m = m[:, None]
    h, w = m.shape[-2:]
    if (h, w) != (H, W) and m.shape[0]:
        m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False, antialias=H < h or W < w)
    return m.reshape(m.shape[0], H, W)


def masks_in_frame(out: dict, in_hw: tuple[int, int], frame_hw: tuple[int, int], rows=None) -> torch.Tensor:
    """One image's model output -> ``(N, H, W)`` float32 mask probabilities in a frame of ``frame_hw = (H, W)``
    pixels covering the whole input image (of ``in_hw = (h, w)`` pixels; the frame need not keep its aspect).

    ``out`` holds either ``mask_crops (N, 1, M, M)`` with ``boxes (N, 4)`` in input pixels (a detector inside
    :func:`crops_from`): pasted by :func:`paste_masks` with ``box_hw=in_hw`` (the boxes' whole-pixel extent is
    taken in input pixels, as the model's own paste would, and sampled at the frame's pixel centres); or
    ``masks (N, 1, h, w)`` at the input size (the UNet, or a detector outside :func:`crops_from`): resized
    by :func:`resize_maps`. ``rows`` (an index tensor, list or slice) selects detections first. With
    ``frame_hw == in_hw`` a detector's maps are what the model would have pasted itself. On the output's
    device; no host sync (the UNet's resize included) except for CPU pastes (see :func:`paste_masks`).
    """
    (in_h, in_w), (H, W) = (int(v) for v in in_hw), (int(v) for v in frame_hw)
    if "mask_crops" in out:
        crops, boxes = out["mask_crops"], out["boxes"]
        if rows is not None:
            crops, boxes = crops[rows], boxes[rows]
        return paste_masks(crops, boxes, (H, W), box_hw=(in_h, in_w))
    if "masks" in out:
        masks = out["masks"] if rows is None else out["masks"][rows]
        return resize_maps(masks, (H, W))
    raise KeyError(f"masks_in_frame: the output has neither mask_crops nor masks (keys: {sorted(out)})")
