"""Inference behind ``05_predict.py``: checkpoints + images -> prediction table (:mod:`lib.prediction_table`).

Flow of :func:`run_prediction`:

1. models: each ``--checkpoints`` entry (a ``best.pth``/``checkpoint.pth`` file, or a training out-dir,
   meaning its ``best.pth``, else ``checkpoint.pth``) is rebuilt from its saved config alone
   (:func:`lib.checkpoint.load_checkpoint`); its name is the out-dir name unless ``--names`` says otherwise;
2. images: the test images of a Kaggle-layout ``--data-dir`` (:func:`lib.submission.list_test_images`,
   original sizes), or the images of one split of a prepared set (``--prepared-dir``; "original" size = the
   prepared size; ``gt.csv`` in train.csv format is written for them so 06 can score and tune on val);
3. a DataLoader whose workers decode and shrink each image to ``input_long_side`` (never upscaled), so the
   CPU work overlaps the accelerator; models run under ``torch.inference_mode`` with bf16 autocast on CUDA;
4. per model and image, every TTA view (``tta_scales`` x {plain, horizontal flip}) is mapped back to the
   original frame at the stored mask resolution and the views are merged by the rules of
   :func:`lib.fusion.fuse_instances` (one source per view, equal weights), on the model's device
   (:func:`_fuse_views`): only the fused masks, quantized to uint8, cross to the host;
5. instances scoring below ``score_floor`` are dropped; masks are stored as soft probabilities at
   ``mask_size x mask_size`` (the Kaggle convention: the map is resized from the original frame without
   keeping the aspect) or at the original size (``mask_size=0``); boxes are in original-image pixels.

TTA scales. The models resize their input themselves (``model.transform``, torchvision's
``GeneralizedRCNNTransform``, for all three archs), so a scale ``s`` multiplies that transform's
``min_size``/``max_size`` by ``s`` for the view; a model without ``.transform`` gets its input image
resized by ``s`` instead. A flipped view runs on the mirrored image; its masks and boxes are mirrored back.

Output directory (``out_dir``)::

    predictions.parquet     all rows (lib.prediction_table format), ordered by image, model, score (desc)
    images.parquet          image_id, orig_height, orig_width of every predicted image (even with no rows)
    meta.json               checkpoints, model configs, args, config hash, timing (images/s)
    gt.csv                  (prepared-set input only) ground truth of the predicted images, train.csv format
    shards/config.json      config hash of the shards below
    shards/part-<rank>-<n>.parquet    prediction rows of one shard
    shards/images-<rank>-<n>.parquet  the images of that shard: written after its part, it marks them done

Resume: a rerun with the same configuration skips the images listed in ``shards/images-*`` and predicts
the rest; when every image is done the shards are merged (atomically) into ``predictions.parquet`` /
``images.parquet`` and removed (``keep_shards`` keeps them). Shards of another configuration (other
checkpoint files, TTA, mask size, input size, score floor, precision or image list) are never mixed: the run
stops with an error unless ``restart`` is set, which deletes them. Shard boundaries are multiples of the
batch size, so a run split by ``stop_after`` sees the same batches as an uninterrupted one.

Distributed: launched by ``torchrun`` (``WORLD_SIZE`` > 1), rank ``r`` predicts ``todo[r::world]`` of the
images still to do and writes its own shards; rank 0 merges after a barrier (gloo on CPU, nccl on CUDA).
"""
from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from . import prepared as lprepared
from . import checkpoint as lcheckpoint
from . import kaggle_data as ldata
from . import io as lio
from . import prediction_table as lpred
from . import runtime
from .training_data import extent_boxes
from .fusion import fused_attributes, fusion_plan
from .metric import _FLOAT32_EXACT, mask_iou

__all__ = [
    "PREDICT_FORMAT",
    "resolve_checkpoint",
    "model_names",
    "images_from_data_dir",
    "images_from_cache",
    "write_gt_csv",
    "ImageDataset",
    "make_image_loader",
    "tta_views",
    "predict_batch",
    "batch_views",
    "result_rows",
    "prediction_config",
    "config_hash",
    "ShardStore",
    "run_prediction",
]

PREDICT_FORMAT = "imat-predictions/1"
_SHARD_RE = re.compile(r"^(part|images)-(\d+)-(\d+)\.parquet$")


# --------------------------------------------------------------------------------------------- inputs
def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a training out-dir -> its ``best.pth`` (else ``checkpoint.pth``)."""
    p = Path(path)
    if p.is_dir():
        for name in ("best.pth", "checkpoint.pth"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p}: no best.pth or checkpoint.pth in this training directory")
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    return p


def model_names(paths: Sequence[str | Path], names: Sequence[str] | None = None) -> list[str]:
    """One name per checkpoint: ``names`` if given, else the out-dir name (``work/unet/best.pth`` -> "unet")."""
    if names:
        if len(names) != len(paths):
            raise ValueError(f"--names: {len(names)} names for {len(paths)} checkpoints")
        out = [str(n) for n in names]
    else:
        out = [Path(p).name if Path(p).is_dir() else Path(p).resolve().parent.name for p in paths]
    dup = sorted({n for n in out if out.count(n) > 1})
    if dup:
        raise ValueError(f"model names {dup} are used twice (checkpoints {list(map(str, paths))}); "
                         f"give distinct --names")
    if any(not n or n == "ensemble" for n in out):
        raise ValueError(f"model names must be non-empty and not 'ensemble', got {out}")
    return out


def images_from_data_dir(data_dir: str | Path, progress: bool = True) -> pd.DataFrame:
    """Test images of a Kaggle-layout dir: ``image_id, path, orig_height, orig_width`` (original sizes)."""
    from . import submission as lsub

    df = lsub.list_test_images(data_dir, progress=progress)
    df = df.assign(path=[str(Path(data_dir) / "test" / i) for i in df["image_id"]])
    return df[["image_id", "path", "orig_height", "orig_width"]].reset_index(drop=True)


def images_from_cache(prepared_dir: str | Path, split: str = "val") -> pd.DataFrame:
    """Images of one split of a prepared set: ``image_id, path, orig_height, orig_width`` (= the prepared size)."""
    idx = lprepared.load_index(prepared_dir, split)
    if len(idx) == 0:
        raise ValueError(f"{prepared_dir}: split {split!r} has no images")
    return pd.DataFrame({
        "image_id": idx["image_id"].astype(str),
        "path": [str(lprepared.image_path(prepared_dir, i)) for i in idx["image_id"]],
        "orig_height": idx["height"].astype("int32"),
        "orig_width": idx["width"].astype("int32"),
    })


def write_gt_csv(prepared_dir: str | Path, image_ids: Sequence[str], path: str | Path) -> int:
    """Write the prepared set records of ``image_ids`` as a train.csv-format CSV (masks at the prepared size).

    Returns the number of rows. Images without instances have no row (as in train.csv).
    """
    rows = []
    for iid in image_ids:
        ann = lprepared.read_ann(prepared_dir, iid)
        for inst in ann["instances"]:
            rows.append((iid, inst["rle"], int(ann["height"]), int(ann["width"]), str(inst["class_id"])))
    df = pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "Height", "Width", "ClassId"])
    with lio.atomic_path(path, suffix=".csv") as tmp:
        df.to_csv(tmp, index=False)
    return len(df)


class ImageDataset(Dataset):
    """Items ``(position, image)``: ``image`` a uint8 ``(3, h, w)`` RGB tensor, shrunk (INTER_AREA) so its
    long side is at most ``long_side`` (0 = original size; never upscaled). Read without EXIF rotation."""

    def __init__(self, paths: Sequence[str], long_side: int = 0):
        self.paths = [str(p) for p in paths]
        self.long_side = int(long_side or 0)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = ldata.read_image(self.paths[i])
        h, w = img.shape[:2]
        nh, nw = ldata.resized_shape(h, w, self.long_side or None)
        if (nh, nw) != (h, w):
            img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA)
        return i, torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def _collate(batch):
    return [b[0] for b in batch], [b[1] for b in batch]


def make_image_loader(paths: Sequence[str], long_side: int, batch_size: int, workers: int,
                      pin_memory: bool = False) -> DataLoader:
    """Ordered DataLoader over :class:`ImageDataset`; batches are ``(positions, [uint8 (3, h, w)])``."""
    return DataLoader(ImageDataset(paths, long_side), batch_size=batch_size, shuffle=False, num_workers=workers,
                      collate_fn=_collate, pin_memory=pin_memory)


# --------------------------------------------------------------------------------------------- inference
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


def _resize_maps(masks: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(n, 1, h, w)`` probabilities -> ``(n, H, W)`` float32 at ``size`` on the masks' device (bilinear;
    antialiased when shrinking)."""
    H, W = int(size[0]), int(size[1])
    m = masks.float()
    h, w = m.shape[-2:]
    if (h, w) != (H, W) and m.shape[0]:
        m = F.interpolate(m, size=(H, W), mode="bilinear", align_corners=False, antialias=H < h or W < w)
    return m.reshape(m.shape[0], H, W)


def _quantize_on_device(maps: torch.Tensor) -> torch.Tensor:
    """Probabilities -> uint8 ``round(p * 255)`` on their device."""
    return (maps.float() * 255).round_().clamp_(0, 255).to(torch.uint8)


def _quantize(maps: torch.Tensor) -> np.ndarray:
    """Probabilities (any shape, any device) -> uint8 ``round(p * 255)`` numpy array on the host."""
    return _quantize_on_device(maps).cpu().numpy()


def _resize_quantize(masks: torch.Tensor, size: tuple[int, int], chunk: int = 16,
                     on_device: bool = False) -> np.ndarray | torch.Tensor:
    """``(N, 1, h, w)`` probabilities -> ``(N, H, W)`` uint8 (``round(p * 255)``) at ``size``, resized on the
    masks' device ``chunk`` masks at a time (bounded memory; see :func:`_resize_maps`). A host numpy array,
    or with ``on_device`` a tensor left on the masks' device."""
    out = torch.empty((masks.shape[0], int(size[0]), int(size[1])), dtype=torch.uint8,
                      device=masks.device if on_device else "cpu")
    for j in range(0, masks.shape[0], chunk):
        out[j:j + chunk] = _quantize_on_device(_resize_maps(masks[j:j + chunk], size))
    return out if on_device else out.numpy()


def _view_result(out: dict, flip: bool, in_hw: tuple[int, int], orig_hw: tuple[int, int],
                 store_hw: tuple[int, int], score_floor: float, quantize: bool = True) -> dict:
    """One model output (one image, one view) -> instances in the original frame at the stored resolution.

    ``masks`` is the (N, Hs, Ws) uint8 ``round(p * 255)`` of :func:`predict_batch`: a host array, or with
    ``quantize=False`` a tensor left on the model's device (for :func:`_fuse_views`).
    """
    scores = out["scores"].float()
    keep = torch.nonzero(scores >= score_floor).flatten()
    keep = keep[torch.argsort(scores[keep], descending=True, stable=True)]
    masks = out["masks"][keep]
    if masks.ndim == 3:
        masks = masks[:, None]
    if flip:
        masks = masks.flip(-1)
    q = _resize_quantize(masks, store_hw, on_device=not quantize)
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
    which is slow on consumer GPUs); otherwise :func:`lib.metric.mask_iou` per category on the host."""
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


def _boxes_of_maps(maps: torch.Tensor) -> np.ndarray:
    """(M, H, W) probabilities -> (M, 4) float32 ``x1, y1, x2, y2`` (x2/y2 exclusive) of the pixels >= 0.5,
    of the nonzero pixels when there are none, zeros for an all-zero map (as
    :func:`lib.fusion.masks_to_boxes`), computed on the maps' device from per-row / per-column maxima."""
    row_max, col_max = maps.amax(2), maps.amax(1)  # (M, H), (M, W)
    strong = (row_max.amax(1) >= 0.5)[:, None]
    rows = torch.where(strong, row_max >= 0.5, row_max > 0)
    cols = torch.where(strong, col_max >= 0.5, col_max > 0)
    boxes = extent_boxes(rows, cols)
    boxes[~rows.any(1)] = 0
    return boxes.cpu().numpy().astype(np.float32).reshape(-1, 4)


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
        boxes[j:j + chunk] = _boxes_of_maps(fused)
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
    they stay on the device as uint8 tensors for :func:`_fuse_views`."""
    device = images[0].device
    per_image: list[list[dict]] = [[] for _ in images]
    for scale, flip in views:
        inputs = [im.flip(-1) if flip else im for im in images]
        if scale != 1.0 and getattr(model, "transform", None) is None:
            inputs = [F.interpolate(im[None], scale_factor=scale, mode="bilinear", align_corners=False,
                                    antialias=scale < 1)[0] for im in inputs]
        with _scaled_transform(model, scale), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
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


# --------------------------------------------------------------------------------------------- config + shards
def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def prediction_config(checkpoints: Sequence[Path], names: Sequence[str], images: pd.DataFrame, source: dict,
                      input_long_side: int, views: Sequence[tuple[float, bool]], tta_iou: float, mask_size: int,
                      score_floor: float, amp: str) -> dict:
    """Everything that changes the stored predictions (what the shards' config hash covers)."""
    ids_hash = hashlib.sha256("\n".join(images["image_id"]).encode()).hexdigest()
    return {
        "format": PREDICT_FORMAT,
        "models": [{"name": n, "checkpoint": str(Path(p).resolve()), "sha256": _file_sha256(Path(p))}
                   for n, p in zip(names, checkpoints)],
        "source": source, "num_images": len(images), "image_ids_sha256": ids_hash,
        "input_long_side": int(input_long_side), "tta_views": [[s, bool(f)] for s, f in views],
        "tta_iou": float(tta_iou), "mask_size": int(mask_size), "score_floor": float(score_floor), "amp": amp,
    }


def config_hash(config: dict) -> str:
    return hashlib.sha256(lio.to_json(config, indent=None).encode()).hexdigest()[:16]


class ShardStore:
    """The ``shards/`` folder of a 05 output directory (see the module docstring)."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir) / "shards"

    def _files(self) -> dict[tuple[str, int, int], Path]:
        out = {}
        if self.dir.is_dir():
            for f in self.dir.iterdir():
                m = _SHARD_RE.match(f.name)
                if m:
                    out[(m[1], int(m[2]), int(m[3]))] = f
        return out

    def check_config(self, chash: str, config: dict, restart: bool = False) -> str:
        """Adopt or verify the shards' configuration. Returns "fresh" or "resume".

        Raises ``ValueError`` when shards of another configuration exist (unless ``restart``: deleted).
        """
        cfg_path = self.dir / "config.json"
        if self.dir.exists() and restart:
            shutil.rmtree(self.dir)
        if cfg_path.is_file():
            old = lio.read_json(cfg_path)
            if old.get("config_hash") != chash:
                diff = sorted(k for k in set(old.get("config", {})) | set(config)
                              if old.get("config", {}).get(k) != config.get(k))
                raise ValueError(
                    f"{self.dir} holds shards of another prediction configuration (hash {old.get('config_hash')}, "
                    f"this run {chash}; differing: {', '.join(diff) or '?'}). Rerun with --restart to delete them, "
                    f"or use another --out-dir")
            return "resume" if self._files() else "fresh"
        if self._files():
            raise ValueError(f"{self.dir} holds shards without config.json; rerun with --restart to delete them")
        lio.atomic_write_json(cfg_path, {"config_hash": chash, "config": config})
        return "fresh"

    def remove_orphans(self) -> int:
        """Delete prediction parts whose images file is missing (a run stopped between the two writes)."""
        files = self._files()
        n = 0
        for (kind, r, k), f in files.items():
            if kind == "part" and ("images", r, k) not in files:
                f.unlink(missing_ok=True)
                n += 1
        return n

    def done(self) -> pd.DataFrame:
        """``image_id, orig_height, orig_width, rank, shard`` of every image a finished shard holds."""
        frames = []
        for (kind, r, k), f in sorted(self._files().items()):
            if kind == "images":
                frames.append(pd.read_parquet(f).assign(rank=r, shard=k))
        if not frames:
            return pd.DataFrame({"image_id": pd.Series([], dtype=str), "orig_height": pd.Series([], dtype="int32"),
                                 "orig_width": pd.Series([], dtype="int32"), "rank": [], "shard": []})
        return pd.concat(frames, ignore_index=True).drop_duplicates("image_id", keep="first")

    def next_index(self, rank: int) -> int:
        ks = [k for (_, r, k) in self._files() if r == rank]
        return max(ks) + 1 if ks else 0

    def write(self, rank: int, index: int, rows: list[dict], images: pd.DataFrame) -> None:
        """Write one shard: its rows, then (the done marker) its images, each atomically."""
        with lio.atomic_path(self.dir / f"part-{rank}-{index:05d}.parquet", suffix=".parquet") as tmp:
            lpred.make_table(rows).to_parquet(tmp, index=False)
        with lio.atomic_path(self.dir / f"images-{rank}-{index:05d}.parquet", suffix=".parquet") as tmp:
            images[["image_id", "orig_height", "orig_width"]].reset_index(drop=True).to_parquet(tmp, index=False)

    def merge(self, image_ids: Sequence[str], model_order: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(predictions, images) of ``image_ids`` from the shards, in image order, model order, score desc."""
        done = self.done().set_index("image_id")
        missing = [i for i in image_ids if i not in done.index]
        if missing:
            raise ValueError(f"{self.dir}: {len(missing)} images not predicted yet (e.g. {missing[:3]})")
        owner = {i: (int(done.at[i, "rank"]), int(done.at[i, "shard"])) for i in image_ids}
        parts = []
        files = self._files()
        for (kind, r, k), f in sorted(files.items()):
            if kind == "part" and ("images", r, k) in files:
                t = pd.read_parquet(f)
                if len(t):
                    t = t[[owner.get(i) == (r, k) for i in t["image_id"]]]
                    parts.append(t)
        pos = {iid: n for n, iid in enumerate(image_ids)}
        mpos = {m: n for n, m in enumerate(model_order)}
        table = pd.concat(parts, ignore_index=True) if parts else lpred.make_table([])
        if len(table):
            table = table.assign(_i=table["image_id"].map(pos), _m=table["model"].map(mpos).fillna(len(mpos)),
                                 _s=-table["score"].astype(np.float64))
            table = table.sort_values(["_i", "_m", "_s"], kind="stable").drop(columns=["_i", "_m", "_s"])
        table = table[lpred.COLUMNS].astype(lpred.DTYPES) if len(table) else lpred.make_table([])
        images = done.loc[list(image_ids), ["orig_height", "orig_width"]].reset_index()
        images = images.astype({"orig_height": "int32", "orig_width": "int32"})
        return table.reset_index(drop=True), images

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------------- the stage
def _broadcast(obj, distributed: bool):
    if not distributed:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def run_prediction(args) -> dict:
    """Stage 05 (``05_predict.py``'s flags as ``args``). Returns the summary also written to ``meta.json``.

    Rank 0 holds the lock of ``out_dir`` (:func:`lib.io.lock_dir`) until it returns."""
    with contextlib.ExitStack() as held:
        return _run_prediction(args, held)


def _run_prediction(args, held: contextlib.ExitStack) -> dict:
    from tqdm import tqdm

    env = runtime.setup_distributed(args.device)
    rank, world, device, distributed = env["rank"], env["world_size"], env["device"], env["distributed"]
    main = rank == 0
    progress = main and not args.no_progress
    if device.type == "cpu" and getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    runtime.set_backend_flags()  # image sizes vary: no cuDNN autotuning
    dtype = runtime.amp_dtype(args.amp, device)
    out_dir = Path(args.out_dir)
    t0 = time.time()

    # ---- models
    ckpt_paths = [resolve_checkpoint(p) for p in args.checkpoints]
    names = model_names(args.checkpoints, args.names)
    models, infos = [], []
    for name, path in zip(names, ckpt_paths):
        model, ckpt = lcheckpoint.load_checkpoint(path)
        model = model.to(device).eval()
        if getattr(args, "channels_last", False):
            model = model.to(memory_format=torch.channels_last)
        models.append(model)
        infos.append({"name": name, "checkpoint": str(path), "arch": ckpt["config"]["arch"],
                      "config": ckpt["config"], "stage": ckpt.get("stage"), "epoch": ckpt.get("epoch"),
                      "global_step": ckpt.get("global_step"), "best_score": ckpt.get("best_score"),
                      "labels": ckpt.get("labels")})
        del ckpt

    # ---- images
    if args.prepared_dir:
        frame = images_from_cache(args.prepared_dir, args.split)
        source = {"prepared_dir": str(Path(args.prepared_dir).resolve()), "split": args.split}
    else:
        frame = images_from_data_dir(args.data_dir, progress=progress)
        source = {"data_dir": str(Path(args.data_dir).resolve())}
    if args.limit:
        frame = frame.head(args.limit).reset_index(drop=True)
    views = tta_views(args.tta_scales, args.tta_flip)
    long_side = args.input_long_side
    if not long_side:  # enough pixels for the largest view of any model
        long_side = int(round(max(int(i["config"].get("max_size") or 0) for i in infos) * max(s for s, _ in views)))
    amp = str(dtype).replace("torch.", "") if dtype is not None else "off"

    # ---- configuration check (rank 0), shared with every rank
    store = ShardStore(out_dir)
    status = None
    if main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            held.enter_context(lio.lock_dir(out_dir, "05_predict run"))
            for d in (out_dir, store.dir):  # half-written files of a killed run (never read); no rank writes yet
                lio.remove_temp_files(d)
            config = prediction_config(ckpt_paths, names, frame, source, long_side, views, args.tta_iou,
                                       args.mask_size, args.score_floor, amp)
            if getattr(args, "channels_last", False):  # float-level differences: shards of the two never mix
                config["channels_last"] = True
            chash = config_hash(config)
            meta_path = out_dir / "meta.json"
            old_meta = lio.read_json(meta_path) if meta_path.is_file() else {}
            complete = (old_meta.get("status") == "done" and (out_dir / "predictions.parquet").is_file()
                        and (out_dir / "images.parquet").is_file())
            if complete and not args.restart:
                if old_meta.get("config_hash") != chash:
                    raise ValueError(f"{out_dir} holds finished predictions of another configuration (hash "
                                     f"{old_meta.get('config_hash')}, this run {chash}); rerun with --restart to "
                                     f"replace them, or use another --out-dir")
                status = {"state": "complete", "hash": chash}
            else:
                state = store.check_config(chash, config, restart=args.restart)
                store.remove_orphans()
                if args.prepared_dir:
                    write_gt_csv(args.prepared_dir, frame["image_id"], out_dir / "gt.csv")
                status = {"state": state, "hash": chash, "config": config}
        except Exception as e:  # tell the other ranks, then raise here
            status = {"state": "error", "error": f"{type(e).__name__}: {e}"}
            _broadcast(status, distributed)
            raise
    status = _broadcast(status, distributed)
    if status["state"] == "error":
        raise RuntimeError(f"rank 0 stopped: {status['error']}")
    if status["state"] == "complete":
        if main:
            print(f"05: {out_dir}/predictions.parquet is complete for this configuration (hash {status['hash']}); "
                  f"nothing to do (--restart predicts again)")
        if distributed:
            import torch.distributed as dist

            dist.destroy_process_group()
        return lio.read_json(out_dir / "meta.json") if main else {}

    run_args = lio.json_safe(vars(args))
    meta_base = {"stage": "05_predict", "config_hash": status["hash"], "world_size": world, "device": str(device),
                 "amp": amp, "input_long_side": long_side, "tta_views": [[s, f] for s, f in views],
                 "mask_size": args.mask_size, "score_floor": args.score_floor, "source": source,
                 "num_images": len(frame), "models": [{k: v for k, v in i.items() if k != "labels"} for i in infos],
                 "labels": infos[0]["labels"], "args": run_args}
    if main:
        lio.atomic_write_json(out_dir / "meta.json", {**meta_base, "status": "running"})

    # ---- this rank's images
    done_ids = set(store.done()["image_id"])
    todo = [k for k, iid in enumerate(frame["image_id"]) if iid not in done_ids]
    mine = todo[rank::world]
    if args.stop_after:
        mine = mine[: args.stop_after]
    bs = max(1, args.batch_size)
    shard_size = max(bs, -(-max(1, args.shard_size) // bs) * bs)  # a multiple of the batch size
    sub = frame.iloc[mine].reset_index(drop=True)
    loader = make_image_loader(sub["path"].tolist(), long_side, bs, args.workers, pin_memory=device.type == "cuda")
    pool = cf.ThreadPoolExecutor(max_workers=max(1, min(4, (os.cpu_count() or 2) // 2)))
    shard_no = store.next_index(rank)
    pending: list[cf.Future] = []
    shard_pos: list[int] = []
    n_done, t_loop = 0, time.time()

    def flush():
        nonlocal shard_no, pending, shard_pos
        if not shard_pos:
            return
        rows = [r for f in pending for r in f.result()]
        store.write(rank, shard_no, rows, sub.iloc[shard_pos])
        shard_no += 1
        pending, shard_pos = [], []

    bar = tqdm(total=len(frame), initial=len(done_ids), desc="05 predict", unit="img", disable=not progress,
               dynamic_ncols=True)
    try:
        for positions, imgs in loader:
            batch = [im.to(device, non_blocking=True).float().div_(255) for im in imgs]
            orig = [(int(sub.at[p, "orig_height"]), int(sub.at[p, "orig_width"])) for p in positions]
            per_model = [predict_batch(m, batch, orig, views, args.mask_size, args.score_floor, dtype, args.tta_iou)
                         for m in models]
            for j, p in enumerate(positions):
                iid = sub.at[p, "image_id"]
                pending.append(pool.submit(
                    lambda rs, iid=iid, o=orig[j]: [r for name, res in rs for r in result_rows(iid, name, res, o)],
                    [(name, pm[j]) for name, pm in zip(names, per_model)]))
                shard_pos.append(p)
            n_done += len(positions)
            bar.update(len(positions) * world)
            if len(shard_pos) >= shard_size:
                flush()
        flush()
    finally:
        bar.close()
        pool.shutdown(wait=True)
    t_pred = time.time() - t_loop

    # ---- merge (rank 0, after every rank is done)
    counts = [n_done]
    if distributed:
        import torch.distributed as dist

        counts = [None] * world
        dist.all_gather_object(counts, n_done)
        dist.barrier()
    summary: dict = {}
    if main:
        done = store.done()
        left = int((~frame["image_id"].isin(set(done["image_id"]))).sum())
        timing = {"seconds": round(time.time() - t0, 2), "predict_seconds": round(t_pred, 2),
                  "images_this_run": int(sum(counts)),
                  "images_per_s": round(sum(counts) / max(t_pred, 1e-9), 3)}
        if left:
            summary = {**meta_base, "status": "partial", "images_left": left, "timing": timing}
            lio.atomic_write_json(out_dir / "meta.json", summary)
            print(f"05: {len(frame) - left} of {len(frame)} images predicted ({left} left); rerun the same "
                  f"command to continue")
        else:
            table, images = store.merge(frame["image_id"].tolist(), names)
            with lio.atomic_path(out_dir / "predictions.parquet", suffix=".parquet") as tmp:
                table.to_parquet(tmp, index=False)
            with lio.atomic_path(out_dir / "images.parquet", suffix=".parquet") as tmp:
                images.to_parquet(tmp, index=False)
            per_model = table.groupby("model").size().to_dict() if len(table) else {}
            summary = {**meta_base, "status": "done", "num_predictions": len(table),
                       "predictions_per_model": {n: int(per_model.get(n, 0)) for n in names}, "timing": timing,
                       "files": {"predictions": str(out_dir / "predictions.parquet"),
                                 "images": str(out_dir / "images.parquet"),
                                 "gt": str(out_dir / "gt.csv") if args.prepared_dir else None}}
            lio.atomic_write_json(out_dir / "meta.json", summary)
            if not args.keep_shards:
                store.clear()
            print(f"05: {len(table)} instances for {len(images)} images from {len(names)} models "
                  f"({', '.join(names)}) -> {out_dir / 'predictions.parquet'} "
                  f"({timing['images_per_s']} images/s this run)")
    if distributed:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
    return summary
