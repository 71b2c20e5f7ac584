"""Mask R-CNN (torchvision) with selectable FPN backbones and partial mask supervision.

Backbones (config ``backbone``):

- ``"resnet50"``: torchvision's ``maskrcnn_resnet50_fpn`` architecture (same modules, same state-dict keys).
- ``"resnet50_v2"``: torchvision's ``maskrcnn_resnet50_fpn_v2`` architecture (BatchNorm in the FPN and
  heads, 2-conv RPN head, 4-conv box head).
- ``"resnet18"``, ``"resnet34"``: lighter ResNet FPN backbones (``resnet_fpn_backbone``), v1 heads.
- ``"mobilenet_v3"``: MobileNetV3-Large FPN (``mobilenet_backbone(fpn=True)``), two FPN levels plus
  max-pool, the anchors of torchvision's ``fasterrcnn_mobilenet_v3_large_fpn``.

Normalisation layers: torchvision freezes BatchNorm (``FrozenBatchNorm2d``) when it loads pretrained
weights; frozen *random* statistics would be wrong when training from scratch, so, like torchvision's own
builders when no weights are given, the backbone uses trainable ``nn.BatchNorm2d`` when ``pretrained`` is
False (and all backbone layers train). With ``pretrained`` BatchNorm is frozen and
``trainable_backbone_layers`` (default 3) of the backbone train; the weights themselves (ImageNet or COCO
files) are loaded after the build by :mod:`lib.weights`. Building never downloads.

Partial mask supervision (config ``mask_categories``: category ids, ``None`` = all): the box classifier and
regressor train on every class, but the mask loss only uses positive proposals whose matched ground-truth
category is in ``mask_categories`` (:class:`MaskSubsetRoIHeads`). With no such proposal in the batch the mask
loss is an exact zero that is still connected to the graph.

Attribute head (config ``attr_head``, off by default): a multi-label classifier over the
``num_attributes`` (92) attributes on the box head's RoI features (the ``box_head`` output that feeds the
box predictor): :class:`AttributePredictor`, ``attr_hidden`` hidden units (0 = one linear layer).
Training: BCE-with-logits (mean over proposals x attributes) of the sampled positive proposals whose
matched ground-truth category carries attributes (``lib.labels.ATTRIBUTE_CATEGORIES``; other categories
are ignored) against the matched instance's multi-hot ``attributes``, times ``attr_loss_weight``, as
``loss_attr`` (an exact zero connected to the graph when no such proposal is sampled). Eval: the box
features are pooled again at each final detection box and ``attr_scores (N, num_attributes)`` sigmoid
probabilities are added to each image's output, row-aligned with ``boxes/labels/scores/masks`` (for
every detection; consumers keep them for attribute categories only). With ``attr_head`` False the model,
its state dict and its outputs are exactly those without the head. With ``attr_prior`` (off by default; 03/04
turn it on with ``--attr-head``) the head adds per-category logits at each RoI's label (the matched ground
truth's in training, the detection's in eval), which the engine starts at the training set's per-category
attribute frequencies (:meth:`AttributePredictor.init_prior`): the head starts as the per-category prior.

Class-agnostic masks (config ``class_agnostic_masks``, False by default as in torchvision): the mask
predictor has one output channel, used for every label, instead of one per class. With ``mask_categories``
a per-class head never trains the channels of the other classes; a class-agnostic head uses the same
(trained) channel for them, which is the setting of the DeepMAC paper's comparison (lib/models/deepmac.py).

Multi-scale training (config ``train_scale_range``: ``None`` or ``[lo, hi]``): the model's own resize
(:class:`lib.models.common.ScaleJitterTransform`, a ``GeneralizedRCNNTransform``) draws a factor
``s ~ U(lo, hi)`` per training image and resizes it with ``min_size * s`` / ``max_size * s``; eval always
uses the nominal sizes. Rescaling the image before the model would be undone by this resize, so the jitter
has to live here.

Heads at given boxes (:func:`masks_for_boxes`, :func:`attributes_for_boxes`, and the box head's features there,
:func:`box_features_for_boxes`): the mask branch (or the
attribute head) of a Mask R-CNN / DeepMAC run on boxes the caller chooses, e.g. ground-truth boxes, to
measure the mask head alone, without the detector's box errors.

Inputs/outputs follow torchvision's ``MaskRCNN``: ``forward(images, targets=None)`` with images a list of
``(3, H, W)`` float tensors in 0..1 (sizes may differ); targets ``boxes (N, 4)`` float x1y1x2y2,
``labels (N,)`` int64 = category + 1, ``masks (N, H, W)`` uint8, ``N`` may be 0; with ``attr_head`` also
``attributes (N, num_attributes)`` multi-hot (float or uint8). Training returns the loss dict
(``loss_classifier, loss_box_reg, loss_mask, loss_objectness, loss_rpn_box_reg``, plus ``loss_attr`` with
``attr_head``); eval returns per image ``boxes (N, 4), labels (N,), scores (N,), masks (N, 1, H, W)``
probabilities at the input size (plus ``attr_scores (N, num_attributes)`` float32 with ``attr_head``).
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet50 as tv_resnet50
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection._utils import BoxCoder
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    _resnet_fpn_extractor,
    mobilenet_backbone,
    resnet_fpn_backbone,
)
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss, maskrcnn_inference, maskrcnn_loss
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops import misc as misc_nn_ops

from ..labels import ATTRIBUTE_CATEGORIES, N_ATTRIBUTES
from ..mask_paste import paste_masks
from .common import ScaleJitterTransform, complete_config, mask_label_table

FPN_CHANNELS = 256  # out_channels of every backbone below
BACKBONES = ("resnet50", "resnet50_v2", "resnet18", "resnet34", "mobilenet_v3")

# Feature maps the RoI poolers read, and the default anchors, per backbone family.
_FEATMAPS = {"resnet": ["0", "1", "2", "3"], "mobilenet": ["0", "1"]}
_DEFAULT_ANCHORS = {
    "resnet": [[32], [64], [128], [256], [512]],  # one size per level: 4 FPN levels + "pool"
    "mobilenet": [[32, 64, 128, 256, 512]] * 3,  # 2 FPN levels + "pool", as fasterrcnn_mobilenet_v3_large_fpn
}

DEFAULT_CONFIG = {
    "arch": "maskrcnn",
    "num_classes": 47,  # background + 46 categories; labels are category + 1
    "backbone": "resnet50",  # one of BACKBONES
    "pretrained": False,  # backbone starts from pretrained weights (lib.weights): frozen BatchNorm, see build_backbone
    "trainable_backbone_layers": None,  # with pretrained: None = 3; from scratch every layer trains
    "min_size": 800,  # GeneralizedRCNNTransform resizing: short side -> min_size, long side <= max_size
    "max_size": 1333,
    "train_scale_range": None,  # [lo, hi]: training resize sizes x U(lo, hi) per image (ScaleJitterTransform)
    "anchor_sizes": None,  # list per anchor level; None = torchvision's default for the backbone family
    "aspect_ratios": None,  # list per anchor level; None = [0.5, 1.0, 2.0] on every level
    "rpn_pre_nms_top_n_train": 2000,
    "rpn_pre_nms_top_n_test": 1000,
    "rpn_post_nms_top_n_train": 2000,
    "rpn_post_nms_top_n_test": 1000,
    "rpn_batch_size_per_image": 256,
    "box_batch_size_per_image": 512,
    "box_positive_fraction": 0.25,
    "box_detections_per_img": 100,
    "box_score_thresh": 0.05,
    "box_nms_thresh": 0.5,
    "mask_roi_size": 14,  # RoIAlign crop of the mask branch; the predictor outputs 2x this
    "mask_categories": None,  # category ids whose masks train (None = all); boxes train on all classes
    "class_agnostic_masks": False,  # one mask channel for every label (True) or one per class (torchvision)
    "attr_head": False,  # multi-label attribute head on the box head's RoI features (see the docstring)
    "num_attributes": N_ATTRIBUTES,  # 92
    "attr_hidden": 256,  # hidden units of the attribute MLP (0 = a single linear layer)
    "attr_loss_weight": 1.0,  # factor on loss_attr
    "attr_prior": False,  # per-category attribute logits added to the head's, started at the training set's frequencies
}

# What lib/weights.py needs to load weight files into this model (read through lib.models.ARCHS).
# Config keys that fix the architecture (parameter names, shapes or norm layers): a fine-tuning run may not
# change them (num_classes may: the class-count layers start fresh).
ARCHITECTURE_KEYS = ("backbone", "pretrained", "anchor_sizes", "aspect_ratios", "class_agnostic_masks", "attr_head",
                     "num_attributes", "attr_hidden", "attr_prior")
BACKBONE_CONFIG_KEY = "backbone"  # the config key naming the backbone (lib.weights.BACKBONE_URLS: ImageNet files)
BACKBONE_SCOPE = "backbone.body."  # where the ImageNet backbone's weights sit in the state dict
# The ImageNet file's prefix of that part, per backbone (torchvision's MobileNetV3: the FPN body is its `features`).
BACKBONE_FILE_PREFIXES = {"mobilenet_v3": "features."}
# Layers whose shape follows num_classes: they load when their shapes fit, else start fresh (COCO's 91 -> 47).
CLASS_COUNT_PREFIXES = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")
NEW_HEAD_PREFIXES = ("roi_heads.attr_predictor.",)  # the attribute head: in no published file, starts fresh
TAKES_COCO_FILES = True  # torchvision's COCO Mask R-CNN files (lib.weights.COCO_URLS) fit this model
OWN_HEAD_PREFIXES = ()  # layers that start fresh even though a COCO file holds them (none: the file's model)


class Float32BoxCoder(BoxCoder):
    """torchvision's ``BoxCoder`` that decodes in float32 whatever the dtype of the regression output.

    torchvision casts the reference boxes to the deltas' dtype (``boxes.to(rel_codes.dtype)``): under bf16
    autocast the RPN's and the box predictor's deltas are bf16, so proposals and final boxes land on the bf16
    grid (2 px steps in 256-512, 4 px in 512-1024). As detectron2 does (``deltas.float()``), the deltas and
    the reference boxes are cast to float32 and decoded with autocast off; in float32 nothing changes.
    """

    def decode_single(self, rel_codes: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        with torch.autocast(rel_codes.device.type, enabled=False):
            return super().decode_single(rel_codes.float(), boxes.float())


class Float32AnchorGenerator(AnchorGenerator):
    """torchvision's ``AnchorGenerator`` whose anchors are float32 under any autocast.

    torchvision builds anchors in the dtype of the feature maps (bf16/fp16 under autocast: a 1024 px
    image's anchors on a 4 px grid) and keeps its cell anchors in that dtype afterwards, so one
    low-precision call would round them for good; here they stay float32.
    """

    def set_cell_anchors(self, dtype: torch.dtype, device: torch.device):
        super().set_cell_anchors(torch.float32 if dtype.is_floating_point else dtype, device)


def use_float32_boxes(model: MaskRCNN) -> MaskRCNN:
    """Give ``model``'s RPN and RoI heads a :class:`Float32BoxCoder` (same weights and clip); returns it."""
    for part in (model.rpn, model.roi_heads):
        old = part.box_coder
        part.box_coder = Float32BoxCoder(old.weights, old.bbox_xform_clip)
    return model


class AttributePredictor(nn.Sequential):
    """RoI features ``(R, in_features)`` and their labels ``(R,)`` -> attribute logits ``(R, num_attributes)``.

    ``Linear(in_features, hidden) - ReLU - Linear(hidden, num_attributes)``, or one ``Linear`` when
    ``hidden`` is 0. With ``num_classes`` (config ``attr_prior``) a ``(num_classes, num_attributes)`` table of
    per-category logits is added at each RoI's label: :meth:`init_prior` starts it at the training set's
    per-category attribute frequencies, and the last layer starts at zero, so the untrained head predicts the
    per-category prior and training learns what the RoI's features add to it.
    """

    def __init__(self, in_features: int, num_attributes: int, hidden: int = 256, num_classes: int | None = None):
        if hidden > 0:
            layers = [nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_attributes)]
        else:
            layers = [nn.Linear(in_features, num_attributes)]
        super().__init__(*layers)
        self.num_attributes = int(num_attributes)
        self.category_logits = None
        if num_classes is not None:
            self.category_logits = nn.Parameter(torch.zeros(int(num_classes), self.num_attributes))
            nn.init.zeros_(layers[-1].weight)
            nn.init.zeros_(layers[-1].bias)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        out = super().forward(features)
        if self.category_logits is None:
            return out
        if labels is None:
            raise ValueError("an attribute head with a per-category prior (attr_prior) needs each RoI's label")
        return out + self.category_logits[labels.long()].to(out.dtype)

    @torch.no_grad()
    def init_prior(self, counts: torch.Tensor, totals: torch.Tensor, strength: float = 1.0) -> None:
        """Start the per-category logits at the attribute frequencies: ``counts (num_classes, num_attributes)``
        instances of label ``c`` with attribute ``a``, ``totals (num_classes,)`` instances of label ``c``. Each
        frequency is shrunk towards the attribute's frequency over all labels by ``strength`` pseudo-instances
        (a label without instances gets that overall frequency), then clipped to [1e-4, 1 - 1e-4]."""
        counts, totals = counts.double(), totals.double()
        overall = counts.sum(0) / totals.sum().clamp(min=1)
        p = (counts + strength * overall) / (totals[:, None] + strength)
        self.category_logits.copy_(torch.logit(p.clamp(1e-4, 1 - 1e-4)).to(self.category_logits))


class MaskSubsetRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` whose mask branch trains only on some categories.

    ``forward`` keeps torchvision's box branch (``select_training_samples``, ``fastrcnn_loss``,
    ``postprocess_detections``) and splits the mask branch into two overridable steps:

    - :meth:`mask_loss` (training): Mask R-CNN's loss on positive proposals whose matched GT label is
      allowed by ``mask_label_allowed`` (``maskrcnn_loss``); subclasses may pick other boxes (DeepMAC).
    - :meth:`mask_logits` (both): ``mask_roi_pool -> mask_head -> mask_predictor`` on given boxes.

    With ``class_agnostic_masks`` the predictor has one output channel, used for every label.

    With an ``attr_predictor`` (an :class:`AttributePredictor`) the heads also train and predict
    attributes (see the module docstring): :meth:`attr_loss` in training, :meth:`attr_logits` at the final
    detections in eval. ``attr_categories``: category ids whose instances train it (None = all).
    Without one, nothing about the heads changes (no modules, buffers, losses or outputs are added).
    """

    def __init__(
        self,
        *args,
        num_classes: int,
        mask_categories: Optional[list[int]] = None,
        class_agnostic_masks: bool = False,
        attr_predictor: Optional[nn.Module] = None,
        attr_categories: Optional[list[int]] = None,
        attr_loss_weight: float = 1.0,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.class_agnostic_masks = class_agnostic_masks
        # Derived from the config, not a learned state: kept out of the state dict.
        self.register_buffer("mask_label_allowed", mask_label_table(num_classes, mask_categories), persistent=False)
        self.attr_predictor = attr_predictor
        if attr_predictor is not None:
            self.attr_loss_weight = float(attr_loss_weight)
            self.register_buffer("attr_label_allowed", mask_label_table(num_classes, attr_categories), persistent=False)

    def mask_channels(self, labels: torch.Tensor) -> torch.Tensor:
        """The predictor channel used for each label (0 when masks are class-agnostic)."""
        return torch.zeros_like(labels) if self.class_agnostic_masks else labels

    def mask_logits(self, features, boxes: list[torch.Tensor], image_shapes) -> torch.Tensor:
        """``(sum N_i, channels, M, M)`` mask logits for ``boxes[i] (N_i, 4)`` in image ``i``."""
        x = self.mask_roi_pool(features, boxes, image_shapes)
        x = self.mask_head(x)
        return self.mask_predictor(x)

    def mask_loss(self, features, proposals, matched_idxs, labels, image_shapes, targets) -> torch.Tensor:
        """Mask R-CNN loss on the sampled positive proposals with a mask-supervised GT category."""
        mask_proposals, pos_matched_idxs = [], []
        for props, midx, lab, t in zip(proposals, matched_idxs, labels, targets):
            keep = lab > 0
            if t["labels"].numel():  # (with no GT, matched_idxs are dummy zeros and every label is 0)
                keep &= self.mask_label_allowed[t["labels"]][midx]
            pos = torch.where(keep)[0]
            mask_proposals.append(props[pos])
            pos_matched_idxs.append(midx[pos])
        logits = self.mask_logits(features, mask_proposals, image_shapes)
        gt_masks = [t["masks"] for t in targets]
        gt_channels = [self.mask_channels(t["labels"]) for t in targets]
        return maskrcnn_loss(logits, mask_proposals, gt_masks, gt_channels, pos_matched_idxs)

    def attr_logits(self, features, boxes: list[torch.Tensor], image_shapes,
                    labels: list[torch.Tensor] | None = None) -> torch.Tensor:
        """``(sum N_i, num_attributes)`` attribute logits for ``boxes[i] (N_i, 4)`` in image ``i`` labelled
        ``labels[i] (N_i,)`` (category + 1; needed by a head with a per-category prior)."""
        return self.attr_predictor(self.box_head(self.box_roi_pool(features, boxes, image_shapes)),
                                   None if labels is None else torch.cat(labels))

    def attr_loss(self, box_features, matched_idxs, labels, targets) -> torch.Tensor:
        """BCE-with-logits of the attribute head on the sampled positive proposals of attribute categories.

        ``box_features (sum R_i, D)``: the box head's output for the sampled proposals, image after image;
        ``labels[i] (R_i,)``: their matched GT labels (0 = background); ``matched_idxs[i]``: matched GT
        indices. Mean over (selected proposals x attributes); an exact zero (still in the graph) when none.
        """
        feats = box_features.split([len(lab) for lab in labels])
        sel_feats, sel_labels, sel_targets = [], [], []
        for f, midx, lab, t in zip(feats, matched_idxs, labels, targets):
            pos = torch.where((lab > 0) & self.attr_label_allowed[lab.clamp(min=0)])[0]
            sel_feats.append(f[pos])
            sel_labels.append(lab[pos])
            sel_targets.append(t["attributes"][midx[pos]])
        logits = self.attr_predictor(torch.cat(sel_feats), torch.cat(sel_labels))
        if logits.shape[0] == 0:
            return logits.sum() * 0.0
        target = torch.cat(sel_targets).to(device=logits.device, dtype=torch.float32)
        return F.binary_cross_entropy_with_logits(logits.float(), target)

    def _check_attribute_targets(self, targets) -> None:
        n_attr = self.attr_predictor.num_attributes
        for i, t in enumerate(targets):
            a = t.get("attributes")
            if a is None:
                raise ValueError(
                    f"attr_head needs targets[{i}]['attributes'] ((N, {n_attr}) multi-hot per instance, as "
                    "lib/training_data.py PreparedDataset gives); the target has only " + ", ".join(sorted(t)))
            if a.shape != (t["labels"].shape[0], n_attr):
                raise ValueError(f"targets[{i}]['attributes'] must have shape ({t['labels'].shape[0]}, {n_attr}) "
                                 f"(instances x attributes), got {tuple(a.shape)}")

    def forward(self, features, proposals, image_shapes, targets=None):
        if self.training:
            self.check_targets(targets)
            for t in targets:
                if not t["boxes"].is_floating_point():
                    raise TypeError(f"target boxes must be float, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be int64, got {t['labels'].dtype}")
            if self.attr_predictor is not None:
                self._check_attribute_targets(targets)
            proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)

        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        if self.training:
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            loss_mask = self.mask_loss(features, proposals, matched_idxs, labels, image_shapes, targets)
            losses = {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg, "loss_mask": loss_mask}
            if self.attr_predictor is not None:
                losses["loss_attr"] = self.attr_loss_weight * self.attr_loss(box_features, matched_idxs, labels,
                                                                             targets)
            return [], losses

        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        result = [{"boxes": b, "labels": lab, "scores": s} for b, lab, s in zip(boxes, labels, scores)]
        logits = self.mask_logits(features, boxes, image_shapes)
        probs = maskrcnn_inference(logits.float(), [self.mask_channels(lab) for lab in labels])
        for r, p in zip(result, probs):
            r["masks"] = p  # float32 probabilities also under autocast (pasted in float32 at float32 boxes)
        if self.attr_predictor is not None:
            attr = torch.sigmoid(self.attr_logits(features, boxes, image_shapes, labels).float())
            for r, a in zip(result, attr.split([len(b) for b in boxes])):
                r["attr_scores"] = a
        return result, {}


def _family(backbone: str) -> str:
    return "mobilenet" if backbone.startswith("mobilenet") else "resnet"


def featmap_names(backbone: str) -> list[str]:
    """Names of the FPN feature maps the RoI poolers read for ``backbone``."""
    return list(_FEATMAPS[_family(backbone)])


def build_backbone(config: dict) -> nn.Module:
    """The FPN backbone (``out_channels`` = 256) for ``config['backbone']``, with random weights.

    With ``config['pretrained']`` (the backbone starts from ImageNet or COCO weights, which
    :mod:`lib.weights` loads after the build) it follows torchvision's convention for pretrained backbones:
    ``FrozenBatchNorm2d`` (``resnet50_v2``: trainable BatchNorm, as torchvision's v2 builder) and only the
    last ``trainable_backbone_layers`` (default 3) stages train. Without it every layer trains, with
    ``nn.BatchNorm2d``. Never downloads.
    """
    name = config["backbone"]
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {BACKBONES}")
    pretrained = bool(config["pretrained"])
    max_layers = 6 if name == "mobilenet_v3" else 5
    if pretrained:
        trainable = 3 if config["trainable_backbone_layers"] is None else int(config["trainable_backbone_layers"])
        if not 0 <= trainable <= max_layers:
            raise ValueError(f"trainable_backbone_layers must be in 0..{max_layers}, got {trainable}")
    else:
        trainable = max_layers
    norm_layer = misc_nn_ops.FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    if name == "resnet50_v2":
        # As torchvision's maskrcnn_resnet50_fpn_v2: trainable BatchNorm in the ResNet and the FPN.
        return _resnet_fpn_extractor(tv_resnet50(weights=None), trainable, norm_layer=nn.BatchNorm2d)
    if name == "mobilenet_v3":
        return mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True,
                                  norm_layer=norm_layer, trainable_layers=trainable)
    return resnet_fpn_backbone(backbone_name=name, weights=None, norm_layer=norm_layer, trainable_layers=trainable)


def anchor_generator(config: dict) -> Float32AnchorGenerator:
    family = _family(config["backbone"])
    sizes = config["anchor_sizes"] if config["anchor_sizes"] is not None else _DEFAULT_ANCHORS[family]
    n_levels = len(_DEFAULT_ANCHORS[family])
    if len(sizes) != n_levels:
        raise ValueError(
            f"anchor_sizes needs {n_levels} levels (one list of sizes per feature map) for backbone "
            f"{config['backbone']!r}, got {len(sizes)}: {sizes}"
        )
    ratios = config["aspect_ratios"] if config["aspect_ratios"] is not None else [[0.5, 1.0, 2.0]] * n_levels
    if len(ratios) != n_levels:
        raise ValueError(f"aspect_ratios needs {n_levels} levels for backbone {config['backbone']!r}, got {ratios}")
    return Float32AnchorGenerator(
        tuple(tuple(int(s) for s in level) for level in sizes),
        tuple(tuple(float(r) for r in level) for level in ratios),
    )


def attribute_head_kwargs(config: dict, in_features: int) -> dict:
    """RoI-heads constructor kwargs of the attribute head for ``config`` ({} when ``attr_head`` is off).

    ``in_features``: size of the box head's output (the box predictor's input). The head trains on the
    categories of ``lib.labels.ATTRIBUTE_CATEGORIES`` that the model has (``< num_classes - 1``).
    """
    if not isinstance(config["attr_head"], bool):
        raise ValueError(f"attr_head must be true or false, got {config['attr_head']!r}")
    if not config["attr_head"]:
        return {}
    if not isinstance(config["attr_prior"], bool):
        raise ValueError(f"attr_prior must be true or false, got {config['attr_prior']!r}")
    n_attr, hidden, weight = config["num_attributes"], config["attr_hidden"], config["attr_loss_weight"]
    for key, value, low in (("num_attributes", n_attr, 1), ("attr_hidden", hidden, 0)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ValueError(f"{key} must be an integer >= {low}, got {value!r}")
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not 0 <= float(weight) < float("inf"):
        raise ValueError(f"attr_loss_weight must be a finite number >= 0, got {weight!r}")
    return {
        "attr_predictor": AttributePredictor(int(in_features), int(n_attr), int(hidden),
                                             int(config["num_classes"]) if config["attr_prior"] else None),
        "attr_categories": [c for c in ATTRIBUTE_CATEGORIES if c < config["num_classes"] - 1],
        "attr_loss_weight": float(weight),
    }


def build_detector(config: dict, mask_roi_pool=None, mask_head=None, mask_predictor=None,
                   roi_heads_cls: type = MaskSubsetRoIHeads, roi_heads_kwargs: Optional[dict] = None) -> MaskRCNN:
    """torchvision ``MaskRCNN`` for a complete ``config`` with ``roi_heads_cls`` (a MaskSubsetRoIHeads).

    ``mask_roi_pool / mask_head / mask_predictor`` replace Mask R-CNN's mask branch when given (DeepMAC);
    ``roi_heads_kwargs`` go to the RoI heads' constructor (e.g. ``class_agnostic_masks``). With
    ``config['attr_head']`` the heads get an :class:`AttributePredictor` (see the module docstring).
    """
    backbone = build_backbone(config)
    v2 = config["backbone"] == "resnet50_v2"
    anchors = anchor_generator(config)
    names = featmap_names(config["backbone"])
    kwargs = {}
    if v2:  # the heads of maskrcnn_resnet50_fpn_v2
        c = backbone.out_channels
        kwargs["rpn_head"] = RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2)
        kwargs["box_head"] = FastRCNNConvFCHead((c, 7, 7), [256] * 4, [1024], norm_layer=nn.BatchNorm2d)
        kwargs["mask_head"] = MaskRCNNHeads(c, [256] * 4, 1, norm_layer=nn.BatchNorm2d)
    model = MaskRCNN(
        backbone,
        num_classes=config["num_classes"],
        min_size=config["min_size"],
        max_size=config["max_size"],
        rpn_anchor_generator=anchors,
        rpn_pre_nms_top_n_train=config["rpn_pre_nms_top_n_train"],
        rpn_pre_nms_top_n_test=config["rpn_pre_nms_top_n_test"],
        rpn_post_nms_top_n_train=config["rpn_post_nms_top_n_train"],
        rpn_post_nms_top_n_test=config["rpn_post_nms_top_n_test"],
        rpn_batch_size_per_image=config["rpn_batch_size_per_image"],
        box_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=names, output_size=config["mask_roi_size"], sampling_ratio=2),
        **kwargs,
    )
    t = model.transform
    model.transform = ScaleJitterTransform(t.min_size, t.max_size, t.image_mean, t.image_std,
                                           size_divisible=t.size_divisible, fixed_size=t.fixed_size,
                                           scale_range=config["train_scale_range"])
    old = model.roi_heads
    model.roi_heads = roi_heads_cls(
        old.box_roi_pool,
        old.box_head,
        old.box_predictor,
        # torchvision's defaults for the matcher, sampler and box coder
        fg_iou_thresh=0.5,
        bg_iou_thresh=0.5,
        batch_size_per_image=config["box_batch_size_per_image"],
        positive_fraction=config["box_positive_fraction"],
        bbox_reg_weights=None,
        score_thresh=config["box_score_thresh"],
        nms_thresh=config["box_nms_thresh"],
        detections_per_img=config["box_detections_per_img"],
        mask_roi_pool=mask_roi_pool if mask_roi_pool is not None else old.mask_roi_pool,
        mask_head=mask_head if mask_head is not None else old.mask_head,
        mask_predictor=mask_predictor if mask_predictor is not None else old.mask_predictor,
        num_classes=config["num_classes"],
        mask_categories=config["mask_categories"],
        **attribute_head_kwargs(config, old.box_predictor.cls_score.in_features),
        **(roi_heads_kwargs or {}),
    )
    return use_float32_boxes(model)


def build(config: dict) -> MaskRCNN:
    """Mask R-CNN from a (possibly partial) config; missing keys take DEFAULT_CONFIG's values.

    With ``class_agnostic_masks`` the mask predictor is torchvision's ``MaskRCNNPredictor`` with one
    output channel (otherwise the model, and its state dict, are those of torchvision's builder).
    """
    config = complete_config(DEFAULT_CONFIG, config)
    if not isinstance(config["class_agnostic_masks"], bool):
        raise ValueError(f"class_agnostic_masks must be true or false, got {config['class_agnostic_masks']!r}")
    if not config["class_agnostic_masks"]:
        return build_detector(config)
    predictor = MaskRCNNPredictor(FPN_CHANNELS, 256, 1)
    # torchvision initialises the logits conv with Kaiming fan_out, which for one output channel is
    # sqrt(num_classes) times wider than for the per-class head (std 1.41 instead of 0.21 with 47 classes):
    # initial mask logits of about +-10 and a first mask loss near 9. Use the per-class head's std instead.
    nn.init.normal_(predictor.mask_fcn_logits.weight, std=math.sqrt(2.0 / int(config["num_classes"])))
    return build_detector(config, mask_predictor=predictor, roi_heads_kwargs={"class_agnostic_masks": True})


# --------------------------------------------------------------------------------------------- heads at given boxes
def _heads_input(model: MaskRCNN, images: list[torch.Tensor], boxes: list[torch.Tensor]):
    """Backbone features of ``images`` after the model's transform, and ``boxes`` mapped into that frame.

    Returns ``(features, boxes in the transformed frame, transformed image sizes, original sizes)``.
    """
    if len(images) != len(boxes):
        raise ValueError(f"{len(images)} images but {len(boxes)} box tensors (one (N, 4) tensor per image)")
    orig_sizes = []
    for i, (im, b) in enumerate(zip(images, boxes)):
        if im.ndim != 3 or im.shape[0] != 3:
            raise ValueError(f"images[{i}] must be a (3, H, W) tensor, got shape {tuple(im.shape)}")
        if b.ndim != 2 or b.shape[1] != 4:
            raise ValueError(f"boxes[{i}] must be an (N, 4) x1y1x2y2 tensor, got shape {tuple(b.shape)}")
        orig_sizes.append((int(im.shape[-2]), int(im.shape[-1])))
    image_list, _ = model.transform(list(images))
    features = model.backbone(image_list.tensors)
    scaled = [resize_boxes(b.to(image_list.tensors.device, torch.float32), o, s)
              for b, o, s in zip(boxes, orig_sizes, image_list.image_sizes)]
    return features, scaled, image_list.image_sizes, orig_sizes


@torch.no_grad()
def masks_for_boxes(model: MaskRCNN, images: list[torch.Tensor], boxes: list[torch.Tensor],
                    labels: Optional[list[torch.Tensor]] = None) -> list[torch.Tensor]:
    """The mask branch of ``model`` (Mask R-CNN or DeepMAC) run at given boxes instead of its detections.

    Args:
        model: a model of this module or of :mod:`lib.models.deepmac` (its ``roi_heads`` is a
            :class:`MaskSubsetRoIHeads`); it is put in eval mode.
        images: list of ``(3, H_i, W_i)`` float tensors in 0..1 on the model's device.
        boxes: list of ``(N_i, 4)`` float x1y1x2y2 boxes in the pixels of ``images[i]`` (N_i may be 0).
        labels: list of ``(N_i,)`` int64 labels (category + 1) choosing the mask channel of a per-class
            head; required unless the masks are class-agnostic (then ignored).

    Returns:
        one ``(N_i, H_i, W_i)`` float32 tensor of mask probabilities per image, row-aligned with
        ``boxes[i]``: what ``model(images)`` returns as ``masks[:, 0]`` for detections at these boxes
        (the image goes through the model's resize transform, the boxes are mapped into its frame, and
        the predicted masks are pasted back at the original boxes and size); zero outside each box.
    """
    heads = getattr(model, "roi_heads", None)
    if not isinstance(heads, MaskSubsetRoIHeads):
        raise TypeError(f"masks_for_boxes needs a Mask R-CNN / DeepMAC model of lib.models, got roi_heads "
                        f"{type(heads).__name__}")
    if not heads.class_agnostic_masks:
        if labels is None:
            raise ValueError("this model has per-class masks: pass labels (one (N,) tensor per image) to choose "
                             "the mask channel")
        if len(labels) != len(boxes) or any(len(lab) != len(b) for lab, b in zip(labels, boxes)):
            raise ValueError("labels must hold one (N_i,) tensor per image, N_i as in boxes")
    model.eval()
    features, scaled, sizes, orig_sizes = _heads_input(model, images, boxes)
    logits = heads.mask_logits(features, scaled, sizes)
    if heads.class_agnostic_masks:
        channels = [torch.zeros(len(b), dtype=torch.int64, device=logits.device) for b in scaled]
    else:
        channels = [heads.mask_channels(lab.to(logits.device, torch.int64)) for lab in labels]
    probs = maskrcnn_inference(logits.float(), channels)  # (N_i, 1, M, M) per image
    return [paste_masks(p, b.to(p.device, torch.float32), o) for p, b, o in zip(probs, boxes, orig_sizes)]


@torch.no_grad()
def box_features_for_boxes(model: MaskRCNN, images: list[torch.Tensor], boxes: list[torch.Tensor]) -> torch.Tensor:
    """The box head's RoI features (what the box predictor and the attribute head read) at given boxes:
    ``(sum N_i, representation size)``, rows in the order of ``boxes`` (``images`` / ``boxes`` as
    :func:`masks_for_boxes`)."""
    heads = model.roi_heads
    model.eval()
    features, scaled, sizes, _ = _heads_input(model, images, boxes)
    return heads.box_head(heads.box_roi_pool(features, scaled, sizes))


@torch.no_grad()
def attributes_for_boxes(model: MaskRCNN, images: list[torch.Tensor], boxes: list[torch.Tensor],
                         labels: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The attribute head of ``model`` (built with ``attr_head``) at given boxes.

    ``images`` / ``boxes`` as :func:`masks_for_boxes`; ``labels[i] (N_i,)`` int64 category + 1 of each box
    (needed by a head with a per-category prior, config ``attr_prior``). Returns one ``(N_i, num_attributes)``
    float32 tensor of sigmoid probabilities per image, row-aligned with ``boxes[i]`` (what the model's
    ``attr_scores`` would be for detections at these boxes with these labels).
    """
    heads = getattr(model, "roi_heads", None)
    if getattr(heads, "attr_predictor", None) is None:
        raise ValueError("attributes_for_boxes: the model has no attribute head (build it with attr_head=True)")
    feats = box_features_for_boxes(model, images, boxes)
    if labels is not None:
        labels = torch.cat([torch.as_tensor(lab, device=feats.device).long() for lab in labels])
    scores = torch.sigmoid(heads.attr_predictor(feats, labels).float())
    return list(scores.split([len(b) for b in boxes]))
