"""Training data from the prepared set: a torch Dataset, torchvision v2 transforms and a DataLoader factory.

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
"""
from __future__ import annotations

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


def build_transforms(train: bool, scale_range: Sequence[float] | None = None, hflip: float = 0.5,
                     color_jitter: float = 0.2, target_size: int | None = None) -> v2.Compose:
    """torchvision v2 pipeline for ``(image, target)`` pairs; ends with ``ToDtype(float32, scale=True)``.

    ``train=False``: only the dtype conversion (the model resizes internally).

    The models resize every image to their own ``min_size``/``max_size`` (``GeneralizedRCNNTransform``),
    which undoes a rescale done here: the training scripts get multi-scale training from the model config
    ``train_scale_range`` instead and do not pass ``scale_range``.
    ``train=True``:
      * ``scale_range=(lo, hi)``: if ``hi > 8`` these are short-side pixel sizes (``RandomShortestSize``
        over ``lo..hi`` in steps of 32, plus ``hi``); otherwise scale factors (``ScaleJitter`` to
        ``target_size`` x U(lo, hi); with ``target_size`` = the prepared set's ``long_side`` a factor of 1 keeps
        the image size). None: no resizing;
      * ``RandomHorizontalFlip(hflip)`` (0 disables), ``ColorJitter(brightness/contrast/saturation =
        color_jitter)`` (0 disables);
      * ``ClampBoundingBoxes``, ``SanitizeBoundingBoxes`` (drops boxes under 1 px with their labels,
        attributes and masks) and :class:`BoxesFromMasks` (drops empty masks, boxes = mask extents).
    """
    ts: list = []
    if train:
        if scale_range is not None:
            lo, hi = float(scale_range[0]), float(scale_range[1])
            if not 0 < lo <= hi:
                raise ValueError(f"scale_range must be 0 < lo <= hi, got {tuple(scale_range)}")
            if hi > 8:
                sizes = sorted(set(list(range(int(lo), int(hi) + 1, 32)) + [int(hi)]))
                ts.append(v2.RandomShortestSize(min_size=sizes, antialias=True))
            else:
                if target_size is None:
                    raise ValueError("scale factors in scale_range need target_size (the prepared set long side)")
                ts.append(v2.ScaleJitter(target_size=(int(target_size), int(target_size)), scale_range=(lo, hi),
                                         antialias=True))
        if hflip > 0:
            ts.append(v2.RandomHorizontalFlip(p=hflip))
        if color_jitter > 0:
            ts.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
        ts += [v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(min_size=1.0, labels_getter=instance_fields),
               BoxesFromMasks()]
    ts.append(v2.ToDtype(torch.float32, scale=True))
    return v2.Compose(ts)


def collate_fn(batch):
    """``[(image, target), ...]`` -> ``(list of images, list of targets)`` (sizes differ, so no stacking)."""
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)


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

    def _indices(self) -> list[int]:
        if self.dist is not None:
            return list(self.dist)
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        return iter(self._indices()[self.skip:])

    def __len__(self) -> int:
        full = len(self.dist) if self.dist is not None else self.n
        return max(0, full - self.skip)


def seed_worker(worker_id: int) -> None:
    """Seed numpy/random in a DataLoader worker from its torch seed (which the loader's generator fixes)."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int = 0, distributed: bool = False,
                seed: int = 0, drop_last: bool = False) -> DataLoader:
    """DataLoader with :func:`collate_fn` and an :class:`EpochSampler` (``loader.sampler``).

    Call ``loader.sampler.set_epoch(e)`` (and reseed ``loader.generator``) each epoch. ``distributed``
    shards by ``torch.distributed`` rank. ``pin_memory`` when CUDA is available, persistent workers
    when ``workers > 0``; worker seeds come from ``loader.generator`` (seeded with ``seed``).
    """
    num_replicas, rank = 1, 0
    if distributed:
        import torch.distributed as dist

        num_replicas, rank = dist.get_world_size(), dist.get_rank()
    sampler = EpochSampler(dataset, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank,
                           drop_last=drop_last)
    g = torch.Generator().manual_seed(int(seed))
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=workers,
                      collate_fn=collate_fn, pin_memory=torch.cuda.is_available(), drop_last=drop_last,
                      persistent_workers=workers > 0, worker_init_fn=seed_worker, generator=g)


__all__ = ["PreparedDataset", "BoxesFromMasks", "INSTANCE_FIELDS", "instance_fields",
           "EpochSampler", "build_transforms", "collate_fn", "make_loader", "seed_worker"]
