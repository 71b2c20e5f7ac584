"""Model builders behind one interface: ``build_model(config)`` for arch "unet", "maskrcnn" or "deepmac".

A config is a flat JSON-serialisable dict holding ``arch`` and every setting of that arch
(``default_config(arch, **overrides)``); it is saved in checkpoints and is all ``build_model`` needs.

:data:`ARCHS` names the architectures: arch -> its module, which declares what the rest of the pipeline
needs: ``DEFAULT_CONFIG``, ``build(config)`` and, for :mod:`lib.weights`, ``ARCHITECTURE_KEYS`` (config keys
a fine-tuning run may not change), ``BACKBONE_CONFIG_KEY`` / ``BACKBONE_SCOPE`` / ``BACKBONE_FILE_PREFIXES``
(which ImageNet file fills which part of the state dict), ``CLASS_COUNT_PREFIXES`` (layers whose shape
follows ``num_classes``), ``NEW_HEAD_PREFIXES`` (heads in no published file), ``TAKES_COCO_FILES`` and
``OWN_HEAD_PREFIXES`` (torchvision's COCO Mask R-CNN files: whether they fit, and what of them stays fresh).
What the models share (config rules, the resize transform) is in :mod:`lib.models.common`.

Every model: ``forward(images, targets=None)`` with ``images`` a list of ``(3, H, W)`` float32 tensors in
0..1 (sizes may differ) and ``targets`` a list of dicts ``boxes (N, 4)`` float32 x1y1x2y2, ``labels (N,)``
int64 = category + 1, ``masks (N, H, W)`` uint8 (N may be 0); detectors with ``attr_head`` also need
``attributes (N, num_attributes)`` multi-hot (float32 or uint8, as ``lib.training_data.PreparedDataset`` gives).

- train mode: ``dict[str, scalar Tensor]`` of losses (the total is their sum); ``loss_attr`` with
  ``attr_head``;
- eval mode: one dict per image: ``boxes (N, 4)`` float x1y1x2y2 in input pixels, ``labels (N,)`` int64 in
  1..num_classes-1, ``scores (N,)``, ``masks (N, 1, H, W)`` float probabilities at the input size; the UNet
  adds ``semantic (C, H, W)`` probabilities; detectors with ``attr_head`` add ``attr_scores
  (N, num_attributes)`` float32 sigmoid probabilities, row-aligned with the detections (lib/tta.py
  keeps them; lib/postprocess.py turns them into ``cat_attr_attr`` ClassIds with ``attributes="on"``).
  Inside ``lib.mask_paste.crops_from(model)`` the detectors return unpasted ``mask_crops (N, 1, M, M)``
  instead of ``masks`` (``lib.mask_paste.masks_in_frame`` pastes them into any frame), and inside
  ``lib.models.unet.without_semantic(model)`` the UNet leaves out ``semantic``.

Shared keys: ``arch, num_classes (47), min_size, max_size, pretrained (False), mask_categories (None = all)``.
``pretrained`` says the backbone starts from pretrained weights (detectors then freeze BatchNorm, as torchvision
does); building never downloads: :mod:`lib.weights` loads weight files into a built model.
Mask R-CNN and DeepMAC: ``attr_head (False), num_attributes (92), attr_hidden (256), attr_loss_weight (1.0),
attr_prior (False)``
(lib/models/maskrcnn.py); with ``attr_head`` False the model and its state dict are those without the head,
so configs saved before these keys existed build the same model. One default changed since: the U-Net's
``region_masks`` (True now); a U-Net saved before that key existed gives region masks too (bench/RESULTS.md).
"""
from __future__ import annotations

import copy

from torch import nn

from . import deepmac, maskrcnn, unet
from .common import complete_config

ARCHS = {"unet": unet, "maskrcnn": maskrcnn, "deepmac": deepmac}


def _check_arch(arch: str) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {sorted(ARCHS)}")


def default_config(arch: str, **overrides) -> dict:
    """The full config of ``arch`` with ``overrides`` applied; unknown keys raise ValueError."""
    _check_arch(arch)
    return complete_config(ARCHS[arch].DEFAULT_CONFIG, overrides)


def build_model(config: dict) -> nn.Module:
    """The model described by ``config`` (needs ``arch``; missing keys take the arch's defaults)."""
    if "arch" not in config:
        raise ValueError(f"config has no 'arch' (one of {sorted(ARCHS)}): {sorted(config)}")
    _check_arch(config["arch"])
    return ARCHS[config["arch"]].build(copy.deepcopy(config))
