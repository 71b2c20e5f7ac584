"""Inference of one batch of images with one model: TTA views, each mapped back to the original frame and
fused on the device, as rows of the prediction table (:mod:`lib.prediction_table`).

1. a DataLoader (:func:`make_image_loader`) whose workers decode and shrink each image to ``long_side``
   (never upscaled), so the CPU work overlaps the accelerator; models run under ``torch.inference_mode``
   with the autocast of 05's ``--amp`` (bf16, or fp16 on GPUs without native bf16; boxes and masks stay float32);
2. per model and image, every TTA view (``tta_scales`` x {plain, horizontal flip}, :func:`tta_views`) is
   mapped back to the original frame at the stored mask resolution: a detector's mask crops are pasted
   straight into that frame, all of an image's masks in one batched ``grid_sample`` with no host sync per
   detection (:mod:`lib.mask_paste`), instead of full-size float32 pastes resized afterwards; the UNet's
   full-size masks are resized to it, and its ``semantic`` probabilities are not produced
   (:func:`lib.models.unet.without_semantic`). The views are merged by the rules of
   :func:`lib.fusion.fuse_instances` (one source per view, equal weights), on the model's device
   (:func:`_fuse_views`): only the fused masks, quantized to uint8, cross to the host;
3. instances scoring below ``score_floor`` are dropped; masks are stored as soft probabilities at
   ``mask_size x mask_size`` (the Kaggle convention: the map is resized from the original frame without
   keeping the aspect) or at the original size (``mask_size=0``); boxes are in original-image pixels
   (:func:`result_rows`).

TTA scales. The models resize their input themselves (``model.transform``, torchvision's
``GeneralizedRCNNTransform``, for all three archs), so a scale ``s`` multiplies that transform's
``min_size``/``max_size`` by ``s`` for the view; a model without ``.transform`` gets its input image
resized by ``s`` instead. A flipped view runs on the mirrored image; its masks and boxes are mirrored back.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import kaggle_data as lkaggle
from . import prediction_table as lpred
from .boxes import prob_boxes_torch
from .fusion import fused_attributes, fusion_plan
from .kaggle_metric import _FLOAT32_EXACT, mask_iou
from .mask_paste import crops_from, default_chunk, masks_in_frame
from .models.unet import without_semantic

__all__ = ["ImageDataset", "make_image_loader", "image_batches", "tta_views", "predict_batch", "batch_views", "result_rows"]


class ImageDataset(Dataset):
    """Items ``(position, image)``: ``image`` a uint8 ``(3, h, w)`` RGB tensor, shrunk (INTER_AREA) so its
    long side is at most ``long_side`` (0 = original size; never upscaled). Read without EXIF rotation.
    An image that cannot be read (:func:`lib.kaggle_data.read_image`'s ``ValueError``) is its reason, a str,
    so one bad file does not stop the loader."""

    def __init__(self, paths: Sequence[str], long_side: int = 0):
        self.paths = [str(p) for p in paths]
        self.long_side = int(long_side or 0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            img = lkaggle.read_image(self.paths[i])
        except ValueError as e:
            return i, str(e)
        h, w = img.shape[:2]
        nh, nw = lkaggle.resized_shape(h, w, self.long_side or None)
        if (nh, nw) != (h, w):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        return i, torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def _collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def make_image_loader(paths: Sequence[str], long_side: int, batch_size: int, workers: int,
                      pin_memory: bool = False) -> DataLoader:
    """Ordered DataLoader over :class:`ImageDataset`; batches are ``(positions, [uint8 (3, h, w) or str])``."""
    return _ordered_loader(ImageDataset(paths, long_side), batch_size, workers, pin_memory)


def _ordered_loader(dataset, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate,
                      pin_memory=pin_memory)


def _as_numpy(item):
    """An :class:`ImageDataset` item with its tensor as a numpy array (a tensor crosses a pipe as shared memory
    that dies with the process that sent it)."""
    i, im = item
    return i, im if isinstance(im, str) else im.numpy()


def image_batches(paths: Sequence[str], long_side: int, batch_size: int, workers: int, pin_memory: bool = False):
    """The batches of :func:`make_image_loader` (``(positions, [uint8 (3, h, w) or str])``, in order), robust to
    a loader process that dies (a decoder crashing on a hostile file, an out-of-memory kill).

    PyTorch's DataLoader then raises at once ("worker exited unexpectedly") without naming the image. Here the
    images that were in flight are read again, each in a process of its own (:func:`lib.workers.run_alone`): the
    one whose process dies becomes an unreadable image (its reason a str, as for a file that cannot be
    decoded: 05 reports and skips it), the others are predicted, and a new loader goes on with the rest.
    """
    from torch.utils.data import Subset

    from .workers import LOADER_PREFETCH, loader_worker_died, run_alone, worker_deaths_seen_in_next

    dataset = ImageDataset(paths, long_side)
    start, n = 0, len(dataset)
    while start < n:
        loader = _ordered_loader(Subset(dataset, range(start, n)), batch_size, workers, pin_memory)
        try:
            batches = iter(loader)  # starts the workers and installs PyTorch's SIGCHLD handler
            with worker_deaths_seen_in_next():
                for positions, images in batches:
                    start = positions[-1] + 1
                    yield positions, images
            return
        except RuntimeError as e:
            if workers == 0 or not loader_worker_died(e):
                raise
        in_flight = range(start, min(n, start + workers * LOADER_PREFETCH * batch_size))
        items = [run_alone(lambda i: _as_numpy(dataset[i]), i, on_crash=lambda i, reason: (
            i, f"the process reading this image died ({reason}): {dataset.paths[i]}")) for i in in_flight]
        items = [(i, im if isinstance(im, str) else torch.from_numpy(im)) for i, im in items]
        for j in range(0, len(items), batch_size):
            chunk = items[j:j + batch_size]
            yield [i for i, _ in chunk], [im for _, im in chunk]
        start = in_flight.stop


def tta_views(scales: Sequence[float] = (1.0,), flip: bool = False) -> list[tuple[float, bool]]:
    """``[(scale, flipped), ...]``: every scale, plain and (with ``flip``) mirrored."""
    if not scales:
        raise ValueError("tta scales: at least one scale is needed")
    bad = [s for s in scales if not (s > 0 and np.isfinite(s))]
    if bad:
        raise ValueError(f"tta scales must be positive, got {list(scales)}")
    return [(float(s), f) for s in dict.fromkeys(scales) for f in ((False, True) if flip else (False,))]


@contextlib.contextmanager
def _scaled_transform(model, scale: float):
    """Multiply ``model.transform``'s min_size/max_size by ``scale`` inside the block (restored after)."""
    t = getattr(model, "transform", None)
    if scale == 1.0 or t is None or not hasattr(t, "min_size"):
        yield
        return
    old_min, old_max = t.min_size, t.max_size
    t.min_size = tuple(max(1, int(round(m * scale))) for m in old_min)
    t.max_size = max(1, int(round(old_max * scale)))
    try:
        yield
    finally:
        t.min_size, t.max_size = old_min, old_max


def _quantize_on_device(maps: torch.Tensor) -> torch.Tensor:
    """Probabilities -> uint8 ``round(p * 255)`` on their device."""
    return (maps.float() * 255).round_().clamp_(0, 255).to(torch.uint8)


def _quantize(maps: torch.Tensor) -> np.ndarray:
    """Probabilities (any shape, any device) -> uint8 ``round(p * 255)`` numpy array on the host."""
    return _quantize_on_device(maps).cpu().numpy()


def _view_result(out: dict, flip: bool, in_hw: tuple[int, int], orig_hw: tuple[int, int],
                 store_hw: tuple[int, int], score_floor: float, quantize: bool = True) -> dict:
    """One model output (one image, one view) -> instances in the original frame at the stored resolution.

    ``out`` carries ``mask_crops`` (a detector inside :func:`lib.mask_paste.crops_from`) or full-size
    ``masks``; either way the kept instances' maps are made in the ``store_hw`` frame by
    :func:`lib.mask_paste.masks_in_frame` (flipped back for a flipped view) and quantized, a chunk of
    instances at a time (bounded memory). ``masks`` is the (N, Hs, Ws) uint8 ``round(p * 255)`` of
    :func:`predict_batch`: a host array, or with ``quantize=False`` a tensor left on the model's device (for
    :func:`_fuse_views`).
    """
    scores = out["scores"].float()
    keep = torch.nonzero(scores >= score_floor).flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    dev = scores.device
    q = torch.empty((len(keep), int(store_hw[0]), int(store_hw[1])), dtype=torch.uint8,
                    device="cpu" if quantize else dev)
    chunk = default_chunk(store_hw)
    for j in range(0, len(keep), chunk):
        maps = masks_in_frame(out, in_hw, store_hw, rows=keep[j:j + chunk])
        q[j:j + chunk] = _quantize_on_device(maps.flip(-1) if flip else maps)
    if quantize:
        q = q.numpy()
    boxes = out["boxes"][keep].float().cpu().numpy().reshape(-1, 4).astype(np.float32)
    in_h, in_w = in_hw
    if flip:
        boxes[:, [0, 2]] = in_w - boxes[:, [2, 0]]
    oh, ow = orig_hw
    boxes *= np.array([ow / in_w, oh / in_h, ow / in_w, oh / in_h], np.float32)
    attrs = out.get("attr_scores")
    return {
        "masks": q,
        "categories": (out["labels"][keep] - 1).cpu().numpy().astype(np.int64),
        "scores": scores[keep].cpu().numpy().astype(np.float32),
        "boxes": boxes,
        "attr_scores": None if attrs is None else attrs[keep].float().cpu().numpy().astype(np.float32),
    }


def _iou_within_categories(binary: torch.Tensor, categories: np.ndarray, by_matmul: bool | None = None) -> np.ndarray:
    """(N, N) float64 mask IoU of the (N, H, W) boolean masks ``binary`` between instances of one category
    (0 across categories). ``by_matmul`` (default: off the CPU) computes all pairs with one matrix product on
    the masks' device: float32 with TF32 switched off for it (exact counts below 2**24 pixels; float64 above,
    which is slow on consumer GPUs); otherwise :func:`lib.kaggle_metric.mask_iou` per category on the host."""
    n = binary.shape[0]
    if by_matmul is None:
        by_matmul = binary.device.type != "cpu"
    if not by_matmul:
        b = binary.cpu().numpy()
        out = np.zeros((n, n), np.float64)
        for c in np.unique(categories):
            idx = np.flatnonzero(categories == c)
            out[np.ix_(idx, idx)] = mask_iou(b[idx], b[idx])
        return out
    f = binary.reshape(n, -1)
    if f.shape[1] < _FLOAT32_EXACT:  # float32 counts are exact up to 2**24 pixels - if TF32 is off for this product
        f = f.to(torch.float32)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            inter = (f @ f.T).double()
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32
    else:
        f = f.to(torch.float64)
        inter = f @ f.T
    area = f.sum(1)
    union = area[:, None] + area[None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter)).cpu().numpy()
    same = categories[:, None] == categories[None, :]
    return np.where(same, iou, 0.0)



def _fuse_views(views: list[dict], orig_hw: tuple[int, int], store_hw: tuple[int, int], iou_thr: float,
                score_floor: float, chunk: int = 16) -> dict:
    """Merge the TTA views of one image by the rules of :func:`lib.fusion.fuse_instances` (one source per
    view, equal weights) without moving the masks off the device.

    ``views`` are :func:`_view_result` dicts with ``quantize=False`` (uint8 maps on the device: a quarter of
    float32's memory; the maps fused are ``q / 255``, as the host fusion did). The IoU matrix and the
    :func:`lib.fusion.fusion_plan` are small host arrays; the fused maps (each a weighted sum of its
    members' maps: one ``index_add_``, as every instance is in one cluster), their boxes and the uint8
    quantization are computed on the device ``chunk`` fused instances at a time (bounded memory), so only
    the kept masks cross to the host. Returns a :func:`predict_batch` result.
    """
    sh, sw = store_hw
    oh, ow = orig_hw
    q_all = torch.cat([v["masks"] for v in views])  # (N, sh, sw) uint8 round(p * 255)
    cats = np.concatenate([v["categories"] for v in views]).astype(np.int64)
    scores = np.concatenate([v["scores"] for v in views]).astype(np.float64)
    src = np.concatenate([np.full(len(v["scores"]), k, np.int64) for k, v in enumerate(views)])
    with_attrs = [v["attr_scores"] is not None for v in views]
    n_attr = next((v["attr_scores"].shape[1] for v in views if v["attr_scores"] is not None), None)
    ious = _iou_within_categories(q_all >= 128, cats)  # == (q / 255 >= 0.5)
    plan = fusion_plan(cats, scores, src, np.ones(len(views)), lambda idx: ious[np.ix_(idx, idx)], iou_thr, 1)
    keep = np.flatnonzero(plan["scores"] >= score_floor)
    q = np.zeros((len(keep), sh, sw), np.uint8)
    boxes = np.zeros((len(keep), 4), np.float32)
    dev = q_all.device
    for j in range(0, len(keep), chunk):
        # The members of these fused instances, their coefficients (/ 255: the maps are uint8) and target rows:
        # every pooled instance is in one cluster, so one index_add_ sums each fused map.
        terms = [(i, a / 255.0, r) for r, m in enumerate(keep[j:j + chunk]) for i, a in plan["members"][m]]
        idx = torch.tensor([t[0] for t in terms], dtype=torch.long, device=dev)
        coef = torch.tensor([t[1] for t in terms], dtype=torch.float32, device=dev)
        rows = torch.tensor([t[2] for t in terms], dtype=torch.long, device=dev)
        fused = torch.zeros((len(keep[j:j + chunk]), sh, sw), dtype=torch.float32, device=dev)
        fused.index_add_(0, rows, q_all[idx].float() * coef[:, None, None]).clamp_(0, 1)
        q[j:j + chunk] = _quantize(fused)
        boxes[j:j + chunk] = prob_boxes_torch(fused).cpu().numpy().reshape(-1, 4)
    attrs = None
    if n_attr is not None:
        pooled = np.concatenate([v["attr_scores"] if v["attr_scores"] is not None
                                 else np.zeros((len(v["scores"]), n_attr), np.float32) for v in views])
        attrs = fused_attributes(plan, pooled.astype(np.float64), with_attrs)[keep]
    return {
        "masks": q,
        "categories": plan["categories"][keep],
        "scores": plan["scores"][keep].astype(np.float32),
        "boxes": (boxes * np.array([ow / sw, oh / sh, ow / sw, oh / sh], np.float32)).astype(np.float32),
        "attr_scores": attrs,
    }


@torch.inference_mode()
def predict_batch(model, images: list[torch.Tensor], orig_sizes: list[tuple[int, int]],
                  views: Sequence[tuple[float, bool]] = ((1.0, False),), mask_size: int = 512,
                  score_floor: float = 0.05, dtype=None, tta_iou: float = 0.5) -> list[dict]:
    """Run ``model`` (lib.models interface, eval mode) on a batch with TTA and map the results back.

    Args:
        images: ``(3, h, w)`` float 0..1 tensors on the model's device (possibly shrunk originals).
        orig_sizes: ``(H0, W0)`` per image: boxes are returned in these pixels.
        views: ``[(scale, flipped)]`` from :func:`tta_views`.
        mask_size: stored mask resolution ``mask_size x mask_size``; 0 = the original size.
        score_floor: instances scoring below it are dropped (per view and after fusion).
        dtype: autocast dtype (e.g. ``torch.bfloat16``) or None.
        tta_iou: mask IoU at which instances of two views fuse.

    Returns one dict per image: ``masks`` (N, Hs, Ws) uint8 probabilities x 255, ``categories`` (N,)
    int64 (= label - 1), ``scores`` (N,) float32 (descending), ``boxes`` (N, 4) float32 x1y1x2y2 in original
    pixels, ``attr_scores`` (N, A) float32 or None.
    """
    if not images:
        return []
    stores = [(mask_size, mask_size) if mask_size else tuple(map(int, o)) for o in orig_sizes]
    per_image = batch_views(model, images, orig_sizes, views, stores, score_floor, dtype)
    return [vs[0] if len(vs) == 1 else _fuse_views(vs, tuple(orig_sizes[i]), stores[i], tta_iou, score_floor)
            for i, vs in enumerate(per_image)]


@torch.inference_mode()
def batch_views(model, images: list[torch.Tensor], orig_sizes: list[tuple[int, int]],
                views: Sequence[tuple[float, bool]], stores: Sequence[tuple[int, int]], score_floor: float,
                dtype=None) -> list[list[dict]]:
    """The views of :func:`predict_batch` before fusion: per image, one :func:`_view_result` per view, at the
    stored size ``stores[i]``. With one view its masks are uint8 host arrays (the final result); with several
    they stay on the device as uint8 tensors for :func:`_fuse_views`. Detectors run inside
    :func:`lib.mask_paste.crops_from` (their crops are pasted at the stored size, never at the input size),
    the UNet inside :func:`lib.models.unet.without_semantic`."""
    device = images[0].device
    per_image: list[list[dict]] = [[] for _ in images]
    for scale, flip in views:
        inputs = [im.flip(-1) if flip else im for im in images]
        if scale != 1.0 and getattr(model, "transform", None) is None:
            inputs = [F.interpolate(im[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                    antialias=scale < 1)[0] for im in inputs]
        with _scaled_transform(model, scale), crops_from(model), without_semantic(model):
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                outs = model(inputs)
        for i, (out, inp) in enumerate(zip(outs, inputs)):
            per_image[i].append(_view_result(out, flip, tuple(inp.shape[-2:]), tuple(orig_sizes[i]), stores[i],
                                             score_floor, quantize=len(views) == 1))
    return per_image


def result_rows(image_id: str, model_name: str, result: dict, orig_hw: tuple[int, int]) -> list[dict]:
    """A :func:`predict_batch` result -> prediction-table rows (dicts with ``lib.prediction_table.COLUMNS``)."""
    rows = []
    n, mh, mw = result["masks"].shape
    for k in range(n):
        x0, y0, png = lpred.encode_quantized(result["masks"][k])
        b = result["boxes"][k]
        a = result["attr_scores"]
        rows.append({
            "image_id": image_id, "model": model_name, "category": int(result["categories"][k]),
            "score": float(result["scores"][k]), "x1": float(b[0]), "y1": float(b[1]), "x2": float(b[2]),
            "y2": float(b[3]), "orig_height": int(orig_hw[0]), "orig_width": int(orig_hw[1]),
            "mask_height": mh, "mask_width": mw, "mask_x0": x0, "mask_y0": y0, "mask_png": png,
            "attr_scores": None if a is None else a[k].astype(np.float32).tolist(),
        })
    return rows
