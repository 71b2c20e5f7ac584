"""Semantic U-Net (segmentation_models_pytorch) with instances recovered from connected components.

Overlaps. Instances of this dataset overlap by design: garment parts (categories 27-45: sleeves, pockets,
zippers, ...) lie on garments (0-26), and garments overlap each other (a coat over a dress). A semantic
model predicts one class per pixel, so :func:`semantic_target` chooses the *most specific* label: parts are
painted over garments, and within each group smaller instances over larger ones. A sleeve pixel is
"sleeve", not "top"; the garment loses the pixels under its parts, which is the price of a single-label
map (the detectors in :mod:`lib.models.maskrcnn` / :mod:`lib.models.deepmac` handle overlaps properly; this
model is meant for the ensemble, which fuses its instances with the detectors').

Partial supervision (config ``mask_categories``, category ids, ``None`` = all): pixels of instances whose
category is not in ``mask_categories`` are ignored by the losses unless a supervised instance is painted
over them (the model is not taught their class, and they are not background either).

Loss = ``ce_weight`` x cross-entropy (all classes incl. background, ignored pixels excluded) +
``dice_weight`` x soft Dice (:func:`soft_dice_loss`) averaged over the *foreground classes present in the
batch*: background is left to the cross-entropy (it dominates the pixels), and absent classes are not
averaged in (smp's ``DiceLoss`` zeroes them but still divides by all channels, which shrinks the loss by
the fraction of absent classes).

Input handling: torchvision's ``GeneralizedRCNNTransform`` normalises (ImageNet mean/std), resizes like the
detectors (scale = min(min_size / short side, max_size / long side); the default min_size = max_size = 512
puts the long side at 512; in training times a random factor from ``train_scale_range`` when set, see
:class:`lib.models.common.ScaleJitterTransform`), pads to a multiple of ``2 ** encoder_depth`` and batches. Training
targets are built at the input size and resized with the same nearest sampling; padding is ignored by the losses.
Eval: logits are cropped to each image, resized bilinearly to the input size, softmaxed, and turned into
instances by :func:`instances_from_probs` (``min_area`` is in network pixels and scaled to the input size); each
instance's mask is its region (config ``region_masks``, on by default: bench/RESULTS.md measures it against the
class probability as the mask).

forward(images, targets=None): images a list of ``(3, H, W)`` float in 0..1; targets ``masks (N, H, W)``
uint8 and ``labels (N,)`` int64 = category + 1 (``boxes`` unused), N may be 0. Training returns
``{"loss_ce", "loss_dice"}``; eval returns per image ``boxes, labels, scores, masks (N, 1, H, W)`` and
``semantic (C, H, W)`` softmax probabilities (when ``return_semantic``: 47 float32 maps, about 190 MB for
a 1229 x 820 image, so 05 runs the model inside :func:`without_semantic`: nothing there reads them).

Host syncs: training builds its targets and losses with tensor ops only (no per-image ``.tolist()`` or
``bool(tensor)``); eval turns probabilities into instances on the host (``instances_from_probs``).
"""
from __future__ import annotations

import contextlib
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..labels import CATEGORY_GROUPS
from .common import ScaleJitterTransform, complete_config, mask_label_table

IGNORE_INDEX = -100  # target value of pixels the losses skip (torch's cross-entropy default)
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

DEFAULT_CONFIG = {
    "arch": "unet",
    "num_classes": 47,  # background + 46 categories; labels are category + 1
    "encoder": "resnet34",  # any smp encoder name
    "encoder_depth": 5,
    "decoder_channels": [256, 128, 64, 32, 16],  # one per encoder level
    "pretrained": False,  # the encoder started from ImageNet weights (lib.weights loads them; recorded only)
    "min_size": 512,  # resize: scale = min(min_size / short side, max_size / long side)
    "max_size": 512,
    "train_scale_range": None,  # [lo, hi]: training resize sizes x U(lo, hi) per image (multi-scale)
    "ce_weight": 1.0,
    "dice_weight": 1.0,
    "min_area": 16,  # smallest component kept, in network pixels
    "max_instances": 100,  # per image, highest scores first
    "region_masks": True,  # instance masks: the region itself (1 inside) instead of its class probability there
    "return_semantic": True,  # eval output carries "semantic" (C, H, W) probabilities
    "mask_categories": None,  # category ids whose masks train (None = all); see the module docstring
}

# What lib/weights.py needs to load weight files into this model (read through lib.models.ARCHS; see
# lib/models/maskrcnn.py). smp's ResNet encoders take torchvision's ImageNet files as they are.
ARCHITECTURE_KEYS = ("encoder", "encoder_depth", "decoder_channels")  # a fine-tuning run may not change them
BACKBONE_CONFIG_KEY = "encoder"
BACKBONE_SCOPE = "net.encoder."
BACKBONE_FILE_PREFIXES = {}
CLASS_COUNT_PREFIXES = ("net.segmentation_head.",)
NEW_HEAD_PREFIXES = ()
TAKES_COCO_FILES = False  # a weights file that is not our checkpoint is a bare state dict of this model
OWN_HEAD_PREFIXES = ()


def semantic_target(
    masks: torch.Tensor,
    labels: torch.Tensor,
    mask_categories: list[int] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Per-pixel class map ``(H, W)`` int64 from instance ``masks (N, H, W)`` and ``labels (N,)`` (= category+1).

    Background is 0. Painting order (later wins): garments (categories 0-26), then parts (27-45); within
    each group larger instances (by mask area) first, so smaller ones end on top; ties keep input order.
    Instances whose category is not in ``mask_categories`` (when given) are painted first as ``ignore_index``,
    so they are ignored where no supervised instance covers them.
    """
    h, w = masks.shape[-2:]
    n, dev = masks.shape[0], masks.device
    out = torch.zeros((h, w), dtype=torch.int64, device=dev)
    if n == 0:
        return out
    # Tensor ops only (no host sync): each instance's painting rank (1..n), then per pixel the label of the
    # highest-ranked supervised instance covering it, else ignore_index under an unsupervised one, else 0.
    m = masks.bool()
    cats = labels.to(device=dev, dtype=torch.int64) - 1
    areas = m.flatten(1).sum(1)
    is_part = torch.isin(cats, torch.tensor(CATEGORY_GROUPS["parts"], dtype=torch.int64, device=dev))
    order = torch.argsort(-areas, stable=True)  # larger first, ties in input order
    order = order[torch.argsort(is_part[order].to(torch.int8), stable=True)]  # then garments before parts
    rank = torch.empty(n, dtype=torch.int32, device=dev)
    rank[order] = torch.arange(1, n + 1, dtype=torch.int32, device=dev)
    if mask_categories is None:
        supervised = torch.ones(n, dtype=torch.bool, device=dev)
    else:
        supervised = torch.isin(cats, torch.tensor(list(mask_categories), dtype=torch.int64, device=dev))
    key = torch.where(supervised, rank, 0)[:, None, None]
    top = torch.zeros((h, w), dtype=torch.int32, device=dev)
    ignored = torch.zeros((h, w), dtype=torch.bool, device=dev)
    for j in range(0, n, 16):  # 16 instances at a time: bounded memory
        top = torch.maximum(top, torch.where(m[j:j + 16], key[j:j + 16], 0).amax(0))
        ignored |= (m[j:j + 16] & ~supervised[j:j + 16, None, None]).any(0)
    label_of_rank = torch.zeros(n + 1, dtype=torch.int64, device=dev)
    label_of_rank[rank.long()] = cats + 1
    out = label_of_rank[top.long()]
    return torch.where((top == 0) & ignored, torch.full_like(out, ignore_index), out)


def instances_from_probs(probs: torch.Tensor, min_area: float = 16, max_instances: int = 100,
                         region_masks: bool = True) -> dict:
    """Instances from semantic probabilities ``probs (C, H, W)`` (channel 0 = background).

    The pixels are split into 8-connected regions of equal argmax class (``skimage.measure.label``: the
    connected components of ``argmax == c`` for every class ``c > 0`` in one pass); regions smaller than
    ``min_area`` pixels are dropped. Each region is one instance: ``labels`` = c, ``scores`` = mean of
    ``probs[c]`` over the region, ``boxes`` = its bounding box x1y1x2y2 (x2/y2 exclusive),
    ``masks (N, 1, H, W)`` float32 = ``probs[c]`` inside the region and 0 outside (``region_masks``: 1 inside:
    the region is already the argmax decision, so a mask threshold meant for a detector's sigmoid does not cut
    a region whose class wins with a probability under it; the score still carries the confidence). Sorted by score
    (descending; ties in raster order of the regions), at most ``max_instances``. Tensors are on
    ``probs``' device.
    """
    from scipy import ndimage
    from skimage.measure import label as label_regions

    h, w = probs.shape[-2:]
    dev = probs.device
    pmax, pred = probs.max(0)  # the probability of the argmax class is the largest one
    pred_np = pred.to(torch.int32).cpu().numpy()
    regions = label_regions(pred_np, background=0, connectivity=2)  # 0 = background, 1..n
    flat = regions.ravel()
    areas = np.bincount(flat)
    sums = np.bincount(flat, weights=pmax.double().cpu().numpy().ravel(), minlength=len(areas))
    classes = np.zeros(len(areas), dtype=np.int64)
    classes[flat] = pred_np.ravel()
    ks = np.nonzero(areas >= min_area)[0]
    ks = ks[ks > 0]
    region_scores = sums[ks] / areas[ks]
    order = np.argsort(-region_scores, kind="stable")[:max_instances]
    ks, region_scores = ks[order], region_scores[order]
    # boxes of the kept regions: relabel them 1..K and let find_objects scan once
    relabel = np.zeros(len(areas), dtype=np.int32)
    relabel[ks] = np.arange(1, len(ks) + 1)
    slices = ndimage.find_objects(relabel[regions], max_label=len(ks))
    boxes = [[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices]
    masks = torch.zeros((len(ks), 1, h, w), dtype=torch.float32, device=dev)
    if len(ks):
        regions_t = torch.from_numpy(regions).to(dev)
        for i, (k, (x1, y1, x2, y2)) in enumerate(zip(ks.tolist(), boxes)):
            inside = regions_t[y1:y2, x1:x2] == k
            inside_value = 1.0 if region_masks else probs[int(classes[k]), y1:y2, x1:x2].float()
            masks[i, 0, y1:y2, x1:x2] = torch.where(inside, inside_value, 0.0)
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32, device=dev).reshape(-1, 4),
        "labels": torch.tensor(classes[ks], dtype=torch.int64, device=dev),
        "scores": torch.tensor(region_scores, dtype=torch.float32, device=dev),
        "masks": masks,
    }


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """1 - soft Dice of ``softmax(logits) (B, C, H, W)`` vs ``target (B, H, W)``, averaged over the classes
    ``c > 0`` present in ``target`` (pixels equal to ``ignore_index`` excluded). A zero connected to the
    graph when no foreground class is present. No host sync."""
    probs = logits.softmax(1)
    n_classes = probs.shape[1]
    valid = target != ignore_index
    t = torch.where(valid, target, 0)
    p_true = probs.gather(1, t[:, None])[:, 0]  # probability of the target class at each pixel
    inter = torch.zeros(n_classes, dtype=probs.dtype, device=probs.device).index_add(0, t[valid], p_true[valid])
    count = torch.bincount(t[valid], minlength=n_classes).to(probs.dtype)
    p_sum = (probs * valid[:, None]).sum((0, 2, 3))
    present = count > 0
    present[0] = False
    denom = torch.where(present, p_sum + count, torch.ones_like(p_sum))  # finite gradients for absent classes
    loss = torch.where(present, 1 - 2 * inter / denom, torch.zeros_like(denom))
    return loss.sum() / present.sum().clamp(min=1).to(loss.dtype)


@contextlib.contextmanager
def without_semantic(model):
    """Inside the block a :class:`UNet`'s eval outputs carry no ``semantic`` probabilities (restored after);
    a no-op for other models (give it the bare model, as :func:`lib.mask_paste.crops_from`)."""
    if not isinstance(model, UNet):
        yield
        return
    old = model.return_semantic
    model.return_semantic = False
    try:
        yield
    finally:
        model.return_semantic = old


class UNet(nn.Module):
    """smp ``Unet`` behind the uniform detection interface (see the module docstring).

    ``return_semantic`` (from the config; :func:`without_semantic` switches it off for a block): eval
    outputs carry ``semantic``."""

    def __init__(self, config: dict):
        super().__init__()
        import segmentation_models_pytorch as smp

        self.config = copy.deepcopy(config)
        self.return_semantic = bool(config["return_semantic"])
        # Random weights; an ImageNet encoder is loaded from a file afterwards (lib.weights): never a download.
        self.net = smp.Unet(
            encoder_name=config["encoder"],
            encoder_depth=int(config["encoder_depth"]),
            encoder_weights=None,
            decoder_channels=tuple(config["decoder_channels"]),
            classes=int(config["num_classes"]),
        )
        self.transform = ScaleJitterTransform(
            int(config["min_size"]), int(config["max_size"]), IMAGENET_MEAN, IMAGENET_STD,
            size_divisible=2 ** int(config["encoder_depth"]), scale_range=config["train_scale_range"],
        )

    def losses(self, logits: torch.Tensor, image_sizes: list[tuple[int, int]], targets: list[dict]) -> dict:
        b, _, hp, wp = logits.shape
        target = torch.full((b, hp, wp), IGNORE_INDEX, dtype=torch.int64, device=logits.device)
        for i, (t, (h, w)) in enumerate(zip(targets, image_sizes)):
            sem = semantic_target(t["masks"], t["labels"], self.config["mask_categories"])
            # nearest, as GeneralizedRCNNTransform resizes instance masks
            target[i, :h, :w] = F.interpolate(sem[None, None].float(), size=(h, w))[0, 0].long()
        valid = (target != IGNORE_INDEX).sum().clamp(min=1)
        ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="sum") / valid
        dice = soft_dice_loss(logits, target)
        return {"loss_ce": self.config["ce_weight"] * ce, "loss_dice": self.config["dice_weight"] * dice}

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        if self.training and targets is None:
            raise ValueError("targets are required in training mode")
        batch, _ = self.transform(images)
        logits = self.net(batch.tensors)
        if self.training:
            return self.losses(logits, batch.image_sizes, targets)
        out = []
        for i, (img, (h, w)) in enumerate(zip(images, batch.image_sizes)):
            H, W = img.shape[-2:]
            lg = F.interpolate(logits[i : i + 1, :, :h, :w], size=(H, W), mode="bilinear", align_corners=False)
            probs = lg.softmax(1)[0]
            min_area = self.config["min_area"] * (H * W) / (h * w)
            r = instances_from_probs(probs, min_area, int(self.config["max_instances"]), self.config["region_masks"])
            if self.return_semantic:
                r["semantic"] = probs
            out.append(r)
        return out


def build(config: dict) -> UNet:
    """UNet from a (possibly partial) config; missing keys take DEFAULT_CONFIG's values."""
    config = complete_config(DEFAULT_CONFIG, config)
    mask_label_table(config["num_classes"], config["mask_categories"])  # validates the ids
    if len(config["decoder_channels"]) != config["encoder_depth"]:
        raise ValueError(
            f"decoder_channels needs one entry per encoder level ({config['encoder_depth']}), "
            f"got {config['decoder_channels']}"
        )
    return UNet(config)
