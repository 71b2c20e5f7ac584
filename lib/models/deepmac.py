"""Deep-MARC: Mask R-CNN with a deep hourglass mask head trained on ground-truth boxes.

After Birodkar et al., "The surprising impact of mask-head architecture on novel class segmentation"
(ICCV 2021, DeepMAC / Deep-MARC): a deep mask head, trained on ground-truth boxes rather than on
proposals, generalises much better, in particular to classes whose masks were never seen in training
(here: categories outside ``mask_categories``, which still get boxes).

The detector (backbone, RPN, box head, config keys) is the one of :mod:`lib.models.maskrcnn`; only the
mask branch changes (:class:`DeepMACRoIHeads`, plugged in through torchvision's RoIHeads modules
``mask_roi_pool / mask_head / mask_predictor``):

- Crop: ``MultiScaleRoIAlign`` to ``mask_roi_size`` (default 32) on the FPN levels.
- Head (:class:`HourglassMaskHead`): a residual stem to ``mask_head_width`` channels, then
  ``mask_head_stacks`` hourglasses, each an encoder-decoder of ``mask_head_depth`` levels (residual blocks,
  stride-2 residual downsampling, nearest upsampling + residual block added to the skip branch).
  GroupNorm, not BatchNorm: the number of crops per batch varies (it can be 0 or 1).
- Predictor: a 1x1 conv, so masks come out at the crop size (``mask_roi_size`` x ``mask_roi_size``;
  no 2x ConvTranspose as in torchvision's predictor); torchvision pastes masks of any square size.
- Class-agnostic masks by default (``class_agnostic_masks``: one channel used for every label); with
  False the predictor has ``num_classes`` channels and the channel of the (predicted / GT) label is used.
- Training: the mask branch pools at the GT boxes of each image whose category is in ``mask_categories``
  (at most ``mask_max_instances`` per image, a random subset beyond that), each corner jittered
  uniformly by up to ``gt_box_jitter`` x the box width/height; BCE against the GT mask cropped to the
  (jittered) box (torchvision's ``maskrcnn_loss`` / ``project_masks_on_boxes``). Proposals do not reach
  the mask loss. Inference: the mask branch runs on the final detections, as in Mask R-CNN.
- Optional attribute head (``attr_head``, ``num_attributes``, ``attr_hidden``, ``attr_loss_weight``,
  ``attr_prior``): the one of :mod:`lib.models.maskrcnn` (on the box head's RoI features, trained on
  proposals, ``loss_attr`` and ``attr_scores``); the mask branch above does not touch it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.roi_heads import maskrcnn_loss
from torchvision.ops import MultiScaleRoIAlign

from . import maskrcnn
from .common import complete_config

DEFAULT_CONFIG = {
    **maskrcnn.DEFAULT_CONFIG,
    "arch": "deepmac",
    "mask_roi_size": 32,  # RoIAlign crop; masks are predicted at this size
    "mask_head_depth": 3,  # down/up levels per hourglass (32 -> 16 -> 8 -> 4)
    "mask_head_width": 128,  # channels in the mask head
    "mask_head_stacks": 2,  # hourglasses in sequence
    "class_agnostic_masks": True,
    "gt_box_jitter": 0.05,  # max corner shift, relative to the box width/height (training only)
    "mask_max_instances": 64,  # GT boxes per image used by the mask loss
}

# What lib/weights.py needs to load weight files into this model (see lib/models/maskrcnn.py): the detector's,
# but for the mask branch.
ARCHITECTURE_KEYS = maskrcnn.ARCHITECTURE_KEYS + ("mask_head_depth", "mask_head_width", "mask_head_stacks")
BACKBONE_CONFIG_KEY = maskrcnn.BACKBONE_CONFIG_KEY
BACKBONE_SCOPE = maskrcnn.BACKBONE_SCOPE
BACKBONE_FILE_PREFIXES = maskrcnn.BACKBONE_FILE_PREFIXES
# the box predictor and the mask predictor (a 1x1 conv: exactly these two tensors)
CLASS_COUNT_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.weight", "roi_heads.mask_predictor.bias")
NEW_HEAD_PREFIXES = maskrcnn.NEW_HEAD_PREFIXES
TAKES_COCO_FILES = True
OWN_HEAD_PREFIXES = ("roi_heads.mask_head.", "roi_heads.mask_predictor.")  # the hourglass head: fresh from COCO


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class ResidualBlock(nn.Module):
    """conv3x3(stride)-GN-ReLU-conv3x3-GN plus a (projected when the shape changes) shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            _norm(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            _norm(out_channels),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), _norm(out_channels)
            )

    def forward(self, x):
        return F.relu(self.body(x) + self.shortcut(x))


class Hourglass(nn.Module):
    """Encoder-decoder with skips: ``depth`` stride-2 downsamplings, then nearest upsampling.

    ``(B, C, H, W) -> (B, C, H, W)`` for any H, W (upsampling goes back to each skip's exact size).
    """

    def __init__(self, channels: int, depth: int):
        super().__init__()
        self.skips = nn.ModuleList(ResidualBlock(channels, channels) for _ in range(depth))
        self.downs = nn.ModuleList(ResidualBlock(channels, channels, stride=2) for _ in range(depth))
        self.middle = ResidualBlock(channels, channels)
        self.ups = nn.ModuleList(ResidualBlock(channels, channels) for _ in range(depth))

    def forward(self, x):
        skips = []
        for skip, down in zip(self.skips, self.downs):
            skips.append(skip(x))
            x = down(x)
        x = self.middle(x)
        for up, s in zip(reversed(self.ups), reversed(skips)):
            x = up(F.interpolate(x, size=s.shape[-2:], mode="nearest")) + s
        return x


class HourglassMaskHead(nn.Sequential):
    """RoI features ``(R, in_channels, M, M)`` -> ``(R, width, M, M)``: stem + ``stacks`` hourglasses."""

    def __init__(self, in_channels: int, width: int, depth: int, stacks: int):
        layers = [ResidualBlock(in_channels, width)]
        for _ in range(stacks):
            layers += [Hourglass(width, depth), ResidualBlock(width, width)]
        super().__init__(*layers)
        self.out_channels = width


def jitter_boxes(boxes: torch.Tensor, ratio: float, image_shape: tuple[int, int]) -> torch.Tensor:
    """Move each corner of ``boxes (N, 4)`` x1y1x2y2 by U(-ratio, ratio) x the box width/height.

    Results are clipped to the image ``(H, W)`` and kept at least one pixel wide and tall.
    """
    if ratio <= 0 or boxes.numel() == 0:
        return boxes
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    out = boxes + (torch.rand_like(boxes) * 2 - 1) * ratio * wh
    h, w = image_shape
    x1 = out[:, 0].clamp(0, w - 1)
    y1 = out[:, 1].clamp(0, h - 1)
    x2 = torch.maximum(out[:, 2].clamp(max=w), x1 + 1)
    y2 = torch.maximum(out[:, 3].clamp(max=h), y1 + 1)
    return torch.stack([x1, y1, x2, y2], dim=1)


class DeepMACRoIHeads(maskrcnn.MaskSubsetRoIHeads):
    """RoI heads whose mask branch trains on (jittered) ground-truth boxes; see the module docstring."""

    def __init__(self, *args, gt_box_jitter: float = 0.05, mask_max_instances: int = 64, **kwargs):
        super().__init__(*args, **kwargs)
        self.gt_box_jitter = float(gt_box_jitter)
        self.mask_max_instances = int(mask_max_instances)

    def mask_loss(self, features, proposals, matched_idxs, labels, image_shapes, targets) -> torch.Tensor:
        """BCE of the mask head at the GT boxes with a mask-supervised category (proposals unused)."""
        boxes, masks, channels = [], [], []
        for t, shape in zip(targets, image_shapes):
            keep = torch.where(self.mask_label_allowed[t["labels"]])[0]
            if keep.numel() > self.mask_max_instances:
                pick = torch.randperm(keep.numel(), device=keep.device)[: self.mask_max_instances]
                keep = keep[pick.sort().values]
            boxes.append(jitter_boxes(t["boxes"][keep], self.gt_box_jitter, shape))
            masks.append(t["masks"][keep])
            channels.append(self.mask_channels(t["labels"][keep]))
        logits = self.mask_logits(features, boxes, image_shapes)
        idxs = [torch.arange(len(b), device=b.device) for b in boxes]
        return maskrcnn_loss(logits, boxes, masks, channels, idxs)


def build(config: dict) -> MaskRCNN:
    """DeepMAC from a (possibly partial) config; missing keys take DEFAULT_CONFIG's values."""
    config = complete_config(DEFAULT_CONFIG, config)
    for key in ("mask_head_depth", "mask_head_width", "mask_head_stacks", "mask_roi_size"):
        if int(config[key]) < (0 if key == "mask_head_depth" else 1):
            raise ValueError(f"{key} must be a positive integer, got {config[key]!r}")
    width = int(config["mask_head_width"])
    names = maskrcnn.featmap_names(config["backbone"])
    return maskrcnn.build_detector(
        config,
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=config["mask_roi_size"], sampling_ratio=2),
        mask_head=HourglassMaskHead(
            maskrcnn.FPN_CHANNELS, width, int(config["mask_head_depth"]), int(config["mask_head_stacks"])
        ),
        mask_predictor=nn.Conv2d(width, 1 if config["class_agnostic_masks"] else config["num_classes"], 1),
        roi_heads_cls=DeepMACRoIHeads,
        roi_heads_kwargs={
            "class_agnostic_masks": bool(config["class_agnostic_masks"]),
            "gt_box_jitter": config["gt_box_jitter"],
            "mask_max_instances": config["mask_max_instances"],
        },
    )
