"""Training data from the prepared set: a torch Dataset, torchvision v2 transforms and a DataLoader factory
(plain or aspect-ratio grouped batches, both exactly resumable: :func:`make_loader`, :func:`set_epoch`).

An item is ``(image, target)``:

* ``image``: ``tv_tensors.Image`` uint8 (3, H, W), RGB (float32 0..1 after ``ToDtype`` in the transforms);
* ``target``: dict with ``boxes`` (``tv_tensors.BoundingBoxes`` XYXY float32 (N, 4), x2/y2 exclusive as in
  the prepared set), ``labels`` int64 (N,) = category + 1 (0 is background), ``masks`` (``tv_tensors.Mask`` uint8
  (N, H, W), 0/1), ``attributes`` float32 (N, num_attributes) multi-hot (row i = the attribute ids of
  instance i; all zero for categories without attributes) and ``image_id`` (the Kaggle ImageId, a str).
  N may be 0.

Because boxes and masks are tv_tensors, every v2 geometric transform moves them together with the image,
and ``SanitizeBoundingBoxes`` (with :func:`instance_fields` as its ``labels_getter``) and
:class:`BoxesFromMasks` drop instances together with their labels, masks and attributes.

Two augmentations of Ghiasi et al. 2021 ("Simple Copy-Paste is a Strong Data Augmentation Method for Instance
Segmentation"), both off by default: large-scale jitter per image (:func:`build_transforms` ``lsj_size``) and
copy-paste between the images of a batch (:class:`CopyPaste`, the loader's collate function:
:func:`make_loader` ``copy_paste``).
"""
from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from torchvision import tv_tensors
from torchvision.transforms import v2

from . import prepared as lprepared
from .boxes import extent_boxes, mask_bbox, row_col_any
from .kaggle_data import read_image
from .labels import N_ATTRIBUTES

# Per-instance plain tensors of a target, filtered together with the boxes and masks.
INSTANCE_FIELDS = ("labels", "attributes")
# Large-scale jitter: the resize factor range of the paper and of detectron2's LSJ configs.
LSJ_SCALE_RANGE = (0.1, 2.0)
# Padding colour of large-scale jitter (uint8 RGB): the ImageNet mean the models subtract, so padding is 0 after
# their normalisation, as the padding of their own batching.
LSJ_PAD_RGB = (124, 116, 104)
# Copy-paste: an instance that loses pixels (covered by pasted ones, or cut by the frame) and keeps fewer is dropped.
COPY_PASTE_MIN_PIXELS = 16


class PreparedDataset(Dataset):
    """Images and instance targets of one split of a prepared set (see ``lib/prepared.py``).

    ``split``: "train", "val" or None (all rows). ``image_ids`` (optional) restricts to these ImageIds,
    in the given order; each must be in the split. ``transforms``: a callable ``(image, target) -> (image,
    target)`` such as :func:`build_transforms`; None returns the uint8 image untouched.
    ``num_attributes``: width of the ``attributes`` multi-hot (92); a larger attribute id is an error.
    """

    def __init__(self, prepared_dir: str | Path, split: str | None = "train", transforms=None,
                 image_ids: Sequence[str] | None = None, num_attributes: int = N_ATTRIBUTES):
        self.prepared_dir = Path(prepared_dir)
        self.num_attributes = int(num_attributes)
        self.split = split
        self.transforms = transforms
        index = lprepared.load_index(self.prepared_dir, split)
        if image_ids is not None:
            known = set(index["image_id"])
            missing = [i for i in image_ids if i not in known]
            if missing:
                raise ValueError(f"{self.prepared_dir}: image ids not in split {split!r}: {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''}")
            pos = {iid: k for k, iid in enumerate(index["image_id"])}
            index = index.iloc[[pos[i] for i in image_ids]].reset_index(drop=True)
        self.index = index
        self.image_ids: list[str] = list(index["image_id"])

    def __len__(self) -> int:
        return len(self.image_ids)

    def load(self, i: int) -> tuple[tv_tensors.Image, dict]:
        """Item ``i`` before transforms."""
        image_id = self.image_ids[i]
        img = read_image(lprepared.image_path(self.prepared_dir, image_id))
        ann = lprepared.read_ann(self.prepared_dir, image_id)
        h, w = img.shape[:2]
        if (int(ann["height"]), int(ann["width"])) != (h, w):
            raise ValueError(f"{lprepared.ann_path(self.prepared_dir, image_id)}: annotation size "
                             f"{ann['height']}x{ann['width']} != image size {h}x{w}")
        masks, cats, attr_ids = lprepared.decode_instances(ann)
        attributes = torch.zeros((len(attr_ids), self.num_attributes), dtype=torch.float32)
        for k, ids in enumerate(attr_ids):
            bad = [a for a in ids if not 0 <= int(a) < self.num_attributes]
            if bad:
                raise ValueError(f"{lprepared.ann_path(self.prepared_dir, image_id)}: instance {k} has attribute ids "
                                 f"{bad} outside 0..{self.num_attributes - 1}")
            attributes[k, [int(a) for a in ids]] = 1.0
        boxes = [a.get("bbox") or mask_bbox(m) or [0, 0, 0, 0] for a, m in zip(ann["instances"], masks)]
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))))
        target = {
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                                              format="XYXY", canvas_size=(h, w)),
            "labels": torch.from_numpy(cats + 1),
            "masks": tv_tensors.Mask(torch.from_numpy(masks)),
            "attributes": attributes,
            "image_id": image_id,
        }
        return image, target

    def __getitem__(self, i: int):
        image, target = self.load(i)
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target


def _image_attribute_counts(task) -> tuple[np.ndarray, np.ndarray]:
    prepared_dir, image_ids, num_classes, num_attributes = task
    counts = np.zeros((num_classes, num_attributes), np.int64)
    totals = np.zeros(num_classes, np.int64)
    for image_id in image_ids:
        for inst in lprepared.read_ann(prepared_dir, image_id)["instances"]:
            label = int(inst["category"]) + 1
            totals[label] += 1
            counts[label, [int(a) for a in inst.get("attributes", ())]] += 1
    return counts, totals


def attribute_counts(dataset: PreparedDataset, num_classes: int, workers: int = 0,
                     chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """How often each attribute goes with each label in ``dataset``'s annotation records (no image is read):
    ``counts (num_classes, num_attributes)`` int64 instances of label ``c`` (category + 1) carrying attribute
    ``a``, and ``totals (num_classes,)`` instances of label ``c``. Chunks of ``chunk`` images in ``workers``
    processes (0 or 1: in this one); what the attribute head's prior starts from
    (:meth:`lib.models.maskrcnn.AttributePredictor.init_prior`)."""
    from .workers import process_map

    ids = list(dataset.image_ids)
    tasks = [(dataset.prepared_dir, ids[k:k + chunk], num_classes, dataset.num_attributes)
             for k in range(0, len(ids), chunk)]
    counts = np.zeros((num_classes, dataset.num_attributes), np.int64)
    totals = np.zeros(num_classes, np.int64)
    with process_map(_image_attribute_counts, tasks, workers, ordered=False) as results:
        for c, t in results:
            counts += c
            totals += t
    return torch.from_numpy(counts), torch.from_numpy(totals)


def instance_fields(inputs) -> tuple[torch.Tensor, ...]:
    """``SanitizeBoundingBoxes`` labels_getter: the target's :data:`INSTANCE_FIELDS` that are present.

    ``inputs`` is the transform's input, ``(image, target)`` (or the target dict alone).
    """
    target = inputs[1] if isinstance(inputs, (tuple, list)) else inputs
    return tuple(target[k] for k in INSTANCE_FIELDS if k in target)





class BoxesFromMasks(v2.Transform):
    """Drop instances whose mask is empty (e.g. a sliver resized away) and set every box to its mask's extent.

    After resizing, nearest-neighbour masks and geometrically scaled boxes can disagree by a pixel or more
    (thin parts vanish); the mask is the ground truth, so boxes follow it. Labels and attributes
    (:data:`INSTANCE_FIELDS`) stay aligned.
    """

    def forward(self, *inputs):
        sample = inputs if len(inputs) > 1 else inputs[0]
        image, target = sample
        masks = target.get("masks")
        if masks is None or "boxes" not in target:
            return image, target
        target = dict(target)
        boxes = target["boxes"]
        rows, cols = row_col_any(masks)
        keep = rows.any(1)
        if masks.shape[0] > 0 and not bool(keep.all()):
            for key in INSTANCE_FIELDS:
                if key in target:
                    target[key] = target[key][keep]
            masks = tv_tensors.wrap(masks.as_subclass(torch.Tensor)[keep], like=masks) \
                if isinstance(masks, tv_tensors.TVTensor) else masks[keep]
            target["masks"] = masks
            rows, cols = rows[keep], cols[keep]
        new_boxes = extent_boxes(rows, cols).to(boxes.dtype)
        target["boxes"] = tv_tensors.wrap(new_boxes, like=boxes) if isinstance(boxes, tv_tensors.BoundingBoxes) \
            else new_boxes
        return image, target


def build_transforms(train: bool, hflip: float = 0.5, color_jitter: float = 0.2, lsj_size: int = 0) -> v2.Compose:
    """torchvision v2 pipeline for ``(image, target)`` pairs; ends with ``ToDtype(float32, scale=True)``.

    ``train=False``: only the dtype conversion (the model resizes internally).

    The models resize every image to their own ``min_size``/``max_size`` (``GeneralizedRCNNTransform``),
    which would undo a rescale done here: multi-scale training is the model config's ``train_scale_range``
    (:class:`lib.models.common.ScaleJitterTransform`), not a transform of this pipeline.
    ``train=True``:
      * ``RandomHorizontalFlip(hflip)`` (0 disables), ``ColorJitter(brightness/contrast/saturation =
        color_jitter)`` (0 disables);
      * ``lsj_size=S > 0``: large-scale jitter (:func:`lsj_transforms`): every image comes out S x S, its
        instances cropped with it. 0: off;
      * ``ClampBoundingBoxes``, ``SanitizeBoundingBoxes`` (drops boxes under 1 px with their labels,
        attributes and masks) and :class:`BoxesFromMasks` (drops empty masks, boxes = mask extents).
    """
    ts: list = []
    if train:
        if hflip > 0:
            ts.append(v2.RandomHorizontalFlip(p=hflip))
        if color_jitter > 0:
            ts.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        if lsj_size:
            ts += lsj_transforms(lsj_size)
        ts += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=instance_fields),
               BoxesFromMasks()]
    ts.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ts)


def collate_fn(batch):
    """``[(image, target), ...]`` -> ``(list of images, list of targets)`` (sizes differ, so no stacking)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


def lsj_transforms(size: int, scale_range: Sequence[float] = LSJ_SCALE_RANGE) -> list:
    """Large-scale jitter to ``size`` x ``size`` (the copy-paste paper; detectron2's ``ResizeScale`` +
    ``FixedSizeCrop``), as two v2 transforms of a uint8 ``(image, target)``:

    * ``ScaleJitter``: the image scaled to fit ``size`` x ``size`` (aspect kept) times U(``scale_range``);
    * ``RandomCrop(size, pad_if_needed=True)``: a random ``size`` x ``size`` window; a side shorter than ``size``
      is padded (image: :data:`LSJ_PAD_RGB`, masks: 0) and the image lands at a random offset in it.

    Boxes and masks move with the image; instances cropped away are left to ``SanitizeBoundingBoxes`` /
    :class:`BoxesFromMasks` after it. Random draws from torch's global generator, as every v2 transform.
    """
    if int(size) < 1:
        raise ValueError(f"large-scale jitter size must be >= 1, got {size}")
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"large-scale jitter scale range must be 0 < lo <= hi, got {tuple(scale_range)}")
    s = int(size)
    return [v2.ScaleJitter(target_size=(s, s), scale_range=(lo, hi), antialias=True),
            v2.RandomCrop((s, s), pad_if_needed=True, fill={tv_tensors.Image: list(LSJ_PAD_RGB), "others": 0})]


def _like(new: torch.Tensor, old):
    """``new`` as the tv_tensor type (and box format / canvas) of ``old``, or plain when ``old`` is plain."""
    return tv_tensors.wrap(new, like=old) if isinstance(old, tv_tensors.TVTensor) else new


def _visible(masks: torch.Tensor, lost: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Which instances stay after a cut (N,) bool: those that lost no pixels (``lost`` (N,) bool) and those that
    keep at least ``max(1, min_pixels)`` of their ``masks`` (N, H, W) (counted for the cut instances only)."""
    keep = ~lost
    if bool(lost.any()):
        counts = masks[lost].flatten(1).sum(1, dtype=torch.int32)
        keep[lost] = counts >= max(1, int(min_pixels))
    return keep


def _any_pixel(masks: torch.Tensor) -> torch.Tensor:
    """(N,) bool: which of the (N, h, w) masks have a nonzero pixel (a max-reduction, no boolean copy)."""
    if masks.numel() == 0:  # no masks, or a zero-size window
        return torch.zeros(len(masks), dtype=torch.bool, device=masks.device)
    return masks.flatten(1).amax(1) != 0


def paste_instances(image: torch.Tensor, target: dict, src_image: torch.Tensor, src_target: dict,
                    chosen: torch.Tensor, min_pixels: int = COPY_PASTE_MIN_PIXELS) -> tuple[torch.Tensor, dict]:
    """Copy-paste (Ghiasi et al. 2021) without blending: the instances ``chosen`` (int64 indices) of
    ``(src_image, src_target)`` pasted on ``(image, target)``.

    ``image`` (3, H, W) and ``src_image`` (3, h, w) of one dtype; targets as :class:`PreparedDataset` items
    (``masks`` (N, H, W) 0/1, ``boxes``, :data:`INSTANCE_FIELDS`). The frames are aligned at the top-left
    corner, at the pixels' own scale: source pixels outside the H x W frame are cut (with large-scale jitter
    every image is the same size). The chosen masks' union takes the source's pixels; the target's masks lose
    the pixels under it; the pasted instances follow the target's, with their labels and attributes (and any
    other :data:`INSTANCE_FIELDS`). An instance left empty is dropped, and so is one that lost pixels (covered,
    or cut by the frame) and keeps fewer than ``min_pixels``; a chosen instance dropped so is not pasted at all
    (none left: the inputs are returned). Boxes are recomputed from the masks (:class:`BoxesFromMasks`).
    Returns the new ``(image, target)``; the other target keys are the target's.
    """
    h, w = image.shape[-2:]
    hh, ww = min(h, src_image.shape[-2]), min(w, src_image.shape[-1])
    src_masks = src_target["masks"].as_subclass(torch.Tensor)[chosen]
    masks = target["masks"].as_subclass(torch.Tensor)
    pasted = masks.new_zeros((len(chosen), h, w))
    pasted[:, :hh, :ww] = src_masks[:, :hh, :ww]
    outside = _any_pixel(src_masks[:, hh:]) | _any_pixel(src_masks[:, :, ww:])
    fits = _visible(pasted, outside, min_pixels)
    if not bool(fits.any()):
        return image, target
    chosen, pasted = chosen[fits], pasted[fits]  # a pasted instance cut away by the frame is not pasted at all
    alpha = pasted.amax(0) != 0  # (H, W) bool: the pasted pixels
    plain = image.as_subclass(torch.Tensor)
    out_image = plain.clone()
    out_image[:, :hh, :ww] = torch.where(alpha[:hh, :ww], src_image.as_subclass(torch.Tensor)[:, :hh, :ww].to(
        plain.dtype), plain[:, :hh, :ww])
    cut = masks * (~alpha).to(masks.dtype)
    covered = _any_pixel(masks * alpha.to(masks.dtype))
    keep = torch.cat([_visible(cut, covered, min_pixels),
                      torch.ones(len(chosen), dtype=torch.bool, device=masks.device)])
    all_masks = torch.cat([cut, pasted])
    out = dict(target)
    for key in INSTANCE_FIELDS:
        if key in target:
            out[key] = torch.cat([target[key], src_target[key][chosen].to(target[key].dtype)])[keep]
    out["masks"] = _like(all_masks[keep], target["masks"])
    out["boxes"] = _like(torch.zeros((int(keep.sum()), 4), dtype=target["boxes"].dtype), target["boxes"])
    return BoxesFromMasks()(_like(out_image, image), out)


class CopyPaste:
    """Simple Copy-Paste at batch level, as the loader's collate function (torchvision's references apply
    their ``SimpleCopyPaste`` in the collate step too): ``[(image, target), ...]`` -> ``(images, targets)``
    as :func:`collate_fn`, then each image, with probability ``p``, gets a random non-empty subset of the
    instances of another image of the batch (:func:`paste_instances`; the sources are the images before any
    pasting). A batch of one image is left as it is.

    Draws (the choice per image, the source image, the subset size and the subset) come from torch's global
    generator, as the per-image v2 transforms': seeded per epoch in the main process (``--workers 0``) and per
    worker from the loader's generator. ``p = 0`` draws nothing.
    """

    def __init__(self, p: float, min_pixels: int = COPY_PASTE_MIN_PIXELS):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"copy-paste probability must be in [0, 1], got {p}")
        self.p, self.min_pixels = float(p), int(min_pixels)

    def __call__(self, batch):
        return self.paste_batch(*collate_fn(batch))

    def paste_batch(self, images: list, targets: list) -> tuple[list, list]:
        """The lists of a collated batch with instances pasted (new lists; the inputs are not changed)."""
        n = len(images)
        out_images, out_targets = list(images), list(targets)
        if self.p <= 0 or n < 2:
            return out_images, out_targets
        for i in range(n):
            if float(torch.rand(())) >= self.p:
                continue
            j = (i + 1 + int(torch.randint(n - 1, ()))) % n
            n_src = int(targets[j]["masks"].shape[0])
            if n_src == 0:
                continue
            k = int(torch.randint(1, n_src + 1, ()))
            chosen = torch.randperm(n_src)[:k].sort().values
            out_images[i], out_targets[i] = paste_instances(images[i], targets[i], images[j], targets[j], chosen,
                                                            self.min_pixels)
        return out_images, out_targets


class EpochSampler(Sampler):
    """Shuffled (or ordered) indices that depend only on ``(seed, epoch)``, optionally sharded by rank.

    ``set_epoch(e)`` picks the epoch's order; ``set_skip(k)`` drops the first ``k`` indices of this rank's
    share (to resume in the middle of an epoch). Wraps ``DistributedSampler`` when ``num_replicas > 1``.
    """

    def __init__(self, dataset, shuffle: bool, seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 drop_last: bool = False):
        self.n = len(dataset)
        self.shuffle, self.seed = shuffle, int(seed)
        self.epoch, self.skip = 0, 0
        self.dist = None
        if num_replicas > 1:
            self.dist = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle,
                                           seed=seed, drop_last=drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if self.dist is not None:
            self.dist.set_epoch(epoch)

    def set_skip(self, k: int) -> None:
        self.skip = max(0, int(k))

    def order(self) -> list[int]:
        """This rank's indices of the current epoch, before the skip."""
        if self.dist is not None:
            return list(self.dist)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def full_len(self) -> int:
        """``len(self.order())``: this rank's share of an epoch, before the skip."""
        return len(self.dist) if self.dist is not None else self.n

    def __iter__(self):
        return iter(self.order()[self.skip:])

    def __len__(self) -> int:
        return max(0, self.full_len() - self.skip)


# ------------------------------------------------------------------------------ aspect-ratio grouped batches
def aspect_ratio_bins(factor: int) -> list[float]:
    """Bin edges of the aspect ratio ``width / height``, as torchvision's references
    (``create_aspect_ratio_groups``): ``2 ** linspace(-1, 1, 2 * factor + 1)`` for ``factor > 0``
    (``2 * factor + 1`` edges, log-spaced from 1/2 to 2, so ``2 * factor + 2`` groups), ``[1.0]`` for 0."""
    if factor < 0:
        raise ValueError(f"aspect_ratio_group_factor must be >= 0, got {factor}")
    if factor == 0:
        return [1.0]
    return [float(2.0 ** v) for v in np.linspace(-1, 1, 2 * int(factor) + 1)]


def aspect_ratio_groups(aspect_ratios: Sequence[float], factor: int) -> list[int]:
    """Group id of each ``width / height``: the number of bin edges (:func:`aspect_ratio_bins`) at or below it
    (``bisect_right``, as torchvision's ``_quantize``); group ids rise with the ratio."""
    bins = aspect_ratio_bins(factor)
    return [bisect.bisect_right(bins, float(r)) for r in aspect_ratios]


def image_aspect_ratios(dataset) -> list[float]:
    """``width / height`` of each item of ``dataset``, without decoding images.

    From ``dataset.index``'s ``height`` / ``width`` columns (a :class:`PreparedDataset`: the prepared set's
    index.parquet); else, for a dataset with ``prepared_dir`` and ``image_ids``, from the image files'
    headers (PIL reads only the header); a ``torch.utils.data.Subset`` maps through to its dataset.
    ``ValueError`` when the sizes cannot be found.
    """
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = image_aspect_ratios(dataset.dataset)
        return [inner[int(i)] for i in dataset.indices]
    index = getattr(dataset, "index", None)
    if index is not None and {"height", "width"} <= set(getattr(index, "columns", ())):
        h = index["height"].to_numpy(dtype=np.float64)
        w = index["width"].to_numpy(dtype=np.float64)
        if len(h) == len(dataset) and (h > 0).all() and (w > 0).all():
            return (w / h).tolist()
    if hasattr(dataset, "prepared_dir") and hasattr(dataset, "image_ids"):
        from PIL import Image

        out = []
        for image_id in dataset.image_ids:
            with Image.open(lprepared.image_path(dataset.prepared_dir, image_id)) as im:
                w, h = im.size
            out.append(w / h)
        return out
    raise ValueError(f"aspect-ratio grouping needs each image's size: {type(dataset).__name__} has neither an "
                     f"index with height/width columns nor prepared_dir + image_ids")


class GroupedBatchSampler(Sampler):
    """Batches of images from one aspect-ratio group, over an :class:`EpochSampler`'s order (torchvision's
    ``GroupedBatchSampler``, made exact-resumable).

    The epoch's order (``sampler.order()``: depends only on ``(seed, epoch)``, this rank's share under DDP) is
    streamed into one buffer per group; a buffer that reaches ``batch_size`` is the next batch. At the end the
    incomplete buffers are joined in group order (neighbouring aspect ratios next to each other; within a
    group in stream order) and cut into batches, the last one short unless ``drop_last``. So every index of
    the share comes exactly once, as without grouping, and there are as many batches as without grouping:
    ``ceil(n / batch_size)`` (``floor`` with ``drop_last``). torchvision instead fills each incomplete group
    with repeats of that group's images and yields ``floor(n / batch_size)`` batches, which repeats some
    images and leaves others out of the epoch.

    ``set_epoch(e)`` picks the epoch (of the sampler); ``set_skip(k)`` drops the first ``k`` batches of the
    epoch's batches (to resume in the middle of an epoch: the rest are the same batches in the same order).
    ``group_ids[i]``: the group of dataset index ``i`` (:func:`aspect_ratio_groups`).
    """

    def __init__(self, sampler: EpochSampler, group_ids: Sequence[int], batch_size: int, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.sampler, self.group_ids = sampler, [int(g) for g in group_ids]
        self.batch_size, self.drop_last = int(batch_size), bool(drop_last)
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def set_skip(self, k: int) -> None:
        self.skip = max(0, int(k))

    def batches(self) -> list[list[int]]:
        """Every batch of the current epoch, before the skip."""
        bs, buffers, out = self.batch_size, {}, []
        for i in self.sampler.order():
            buf = buffers.setdefault(self.group_ids[i], [])
            buf.append(i)
            if len(buf) == bs:
                out.append(buf)
                buffers[self.group_ids[i]] = []
        rest = [i for g in sorted(buffers) for i in buffers[g]]
        out += [rest[k:k + bs] for k in range(0, len(rest), bs)]
        if self.drop_last and out and len(out[-1]) < bs:
            out.pop()
        return out

    def _full_len(self) -> int:
        n = self.sampler.full_len()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        return iter(self.batches()[self.skip:])

    def __len__(self) -> int:
        return max(0, self._full_len() - self.skip)


def seed_worker(worker_id: int) -> None:
    """Seed numpy/random in a DataLoader worker from its torch seed (which the loader's generator fixes)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int = 0, distributed: bool = False,
                seed: int = 0, drop_last: bool = False, aspect_ratio_group_factor: int = 0,
                copy_paste: float = 0.0) -> DataLoader:
    """DataLoader with :func:`collate_fn` over an :class:`EpochSampler`; ``copy_paste`` > 0: collated by
    :class:`CopyPaste` with that probability per image instead.

    Call :func:`set_epoch` each epoch (and reseed ``loader.generator``). ``distributed`` shards by
    ``torch.distributed`` rank. ``pin_memory`` when CUDA is available, persistent workers when
    ``workers > 0``; worker seeds come from ``loader.generator`` (seeded with ``seed``).
    ``aspect_ratio_group_factor``: 0 = plain batches of the sampler's order (``loader.sampler`` is the
    :class:`EpochSampler`); ``k > 0`` = batches of one aspect-ratio group (``2k + 1`` log-spaced bin edges,
    :func:`aspect_ratio_bins`), ``loader.batch_sampler`` a :class:`GroupedBatchSampler` over the
    :class:`EpochSampler` (ratios from :func:`image_aspect_ratios`). ``len(loader)`` is the same either way.
    """
    num_replicas, rank = 1, 0
    if distributed:
        import torch.distributed as dist

        num_replicas, rank = dist.get_world_size(), dist.get_rank()
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank,
                           drop_last=drop_last)
    g = torch.Generator().manual_seed(int(seed))
    collate = CopyPaste(copy_paste) if copy_paste else collate_fn
    common = dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                  persistent_workers=workers > 0, worker_init_fn=seed_worker, generator=g)
    if aspect_ratio_group_factor:
        groups = aspect_ratio_groups(image_aspect_ratios(dataset), aspect_ratio_group_factor)
        batches = GroupedBatchSampler(sampler, groups, batch_size, drop_last=drop_last)
        return DataLoader(dataset, batch_sampler=batches, **common)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **common)


def set_epoch(loader: DataLoader, epoch: int, skip_batches: int = 0) -> None:
    """Point a :func:`make_loader` loader at ``epoch`` (its order depends only on the seed and the epoch),
    starting after its first ``skip_batches`` batches (resuming mid-epoch: the batches that follow are those
    of the whole epoch from there on). Works for grouped and plain loaders alike."""
    batches = loader.batch_sampler
    if isinstance(batches, GroupedBatchSampler):
        batches.set_epoch(epoch)
        batches.set_skip(skip_batches)
    else:
        loader.sampler.set_epoch(epoch)
        loader.sampler.set_skip(int(skip_batches) * int(loader.batch_size))


class LoaderWorkerDied(RuntimeError):
    """A DataLoader worker process died (killed, crashed) while reading training images."""


def checked_batches(loader: DataLoader):
    """The batches of ``loader`` (one epoch, after :func:`set_epoch`). When a worker process dies (PyTorch then
    raises without naming the image), the batches that were in flight are read again, one image at a time in a
    process of its own (:func:`lib.workers.run_alone`), and :class:`LoaderWorkerDied` names the image whose process
    dies, with the reason (e.g. "killed by SIGKILL")."""
    from .workers import loader_worker_died, worker_deaths_seen_in_next

    batches, done = iter(loader), 0  # iter() starts the workers (and PyTorch's SIGCHLD handler)
    try:
        with worker_deaths_seen_in_next():
            for batch in batches:
                yield batch
                done += 1
    except RuntimeError as e:
        if not loader_worker_died(e):
            raise
        raise LoaderWorkerDied(f"a DataLoader worker process died at batch {done + 1} of the epoch: "
                               f"{_dead_worker_image(loader, done)}") from None


def _dead_worker_image(loader: DataLoader, done: int) -> str:
    """Which image of the batches in flight after ``done`` batches kills the process that reads it."""
    from .workers import LOADER_PREFETCH, run_alone

    dataset = loader.dataset
    ids = getattr(dataset, "image_ids", None)
    in_flight = list(loader.batch_sampler)[done:done + LOADER_PREFETCH * max(1, loader.num_workers)]
    for i in (i for batch in in_flight for i in batch):
        reason = run_alone(lambda i: (dataset[i], None)[1], i, on_crash=lambda i, reason: reason)
        if reason:
            return f"image {ids[i] if ids is not None else i} (dataset index {i}) kills the process reading it: {reason}"
    return f"no image of the {len(in_flight)} batches in flight kills a process when read again (out of memory?)"


__all__ = ["PreparedDataset", "BoxesFromMasks", "INSTANCE_FIELDS", "instance_fields", "CopyPaste", "paste_instances",
           "lsj_transforms", "LSJ_SCALE_RANGE", "LSJ_PAD_RGB", "COPY_PASTE_MIN_PIXELS",
           "EpochSampler", "GroupedBatchSampler", "aspect_ratio_bins", "aspect_ratio_groups",
           "image_aspect_ratios", "build_transforms", "collate_fn", "make_loader", "set_epoch", "seed_worker",
           "checked_batches", "LoaderWorkerDied"]
