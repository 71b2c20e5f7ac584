"""What the models of :mod:`lib.models` share: the config rules and the resize transform.

- :func:`complete_config`: a model's full config from its ``DEFAULT_CONFIG`` and a (partial) config; unknown
  keys or another ``arch`` are errors.
- :func:`mask_label_table`: the ``(num_classes,)`` bool table of the labels whose masks train
  (config ``mask_categories``), checked.
- :func:`train_scale_range`: the one rule that turns ``--scale-range LO HI`` into the config's
  ``train_scale_range`` factors; :func:`check_scale_range` checks such factors.
- :class:`ScaleJitterTransform`: torchvision's ``GeneralizedRCNNTransform`` (normalise, resize to
  ``min_size`` / ``max_size``, pad, batch) whose training resize is multi-scale (``train_scale_range``);
  every model resizes with it, so multi-scale training lives here (rescaling an image before the model would
  be undone by this resize).
"""
from __future__ import annotations

import copy
import numbers
from typing import Optional

import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes


def train_scale_range(scale_range, min_size: int) -> list[float] | None:
    """``--scale-range LO HI`` -> the model config's ``train_scale_range`` factors (None = off).

    Values above 8 are short-side pixel sizes and are divided by the model's ``min_size``; the factors must
    satisfy ``0 < lo <= hi`` (ValueError naming ``--scale-range``) and are rounded to 6 digits.
    """
    if scale_range is None:
        return None
    lo, hi = (float(v) for v in scale_range)
    if hi > 8:
        lo, hi = lo / float(min_size), hi / float(min_size)
    if not 0 < lo <= hi:
        raise ValueError(f"--scale-range must be 0 < LO <= HI, got {tuple(scale_range)}")
    return [round(lo, 6), round(hi, 6)]


def check_scale_range(scale_range) -> Optional[tuple[float, float]]:
    """``None`` or a validated ``(lo, hi)`` pair of factors with ``0 < lo <= hi``."""
    if scale_range is None:
        return None
    try:
        lo, hi = (float(v) for v in scale_range)
    except (TypeError, ValueError):
        raise ValueError(f"train_scale_range must be [lo, hi], got {scale_range!r}") from None
    if not 0 < lo <= hi:
        raise ValueError(f"train_scale_range must satisfy 0 < lo <= hi, got {scale_range!r}")
    return lo, hi


RENAMED_KEYS = {"mask_classes": "mask_categories"}  # config keys of older checkpoints -> their names now


def complete_config(defaults: dict, config: dict) -> dict:
    """``defaults`` updated with ``config`` (keys of :data:`RENAMED_KEYS` read under their new names); unknown
    keys or another ``arch`` raise ValueError."""
    config = {RENAMED_KEYS.get(k, k): v for k, v in config.items()}
    unknown = sorted(set(config) - set(defaults))
    if unknown:
        raise ValueError(f"unknown config keys for arch {defaults['arch']!r}: {unknown}; known: {sorted(defaults)}")
    if config.get("arch", defaults["arch"]) != defaults["arch"]:
        raise ValueError(f"config arch {config['arch']!r} given to the {defaults['arch']!r} builder")
    out = copy.deepcopy(defaults)
    out.update(copy.deepcopy(config))
    return out


def mask_label_table(num_classes: int, mask_categories: Optional[list[int]]) -> torch.Tensor:
    """``(num_classes,)`` bool: True at label ``c + 1`` for each category ``c`` whose masks train.

    ``mask_categories=None`` allows every label; index 0 (background) is always False.
    """
    table = torch.zeros(num_classes, dtype=torch.bool)
    if mask_categories is None:
        table[1:] = True
        return table
    for c in mask_categories:
        if not isinstance(c, numbers.Integral) or isinstance(c, bool) or not 0 <= c < num_classes - 1:
            raise ValueError(f"mask_categories: {c!r} is not a category id in 0..{num_classes - 2}")
        table[int(c) + 1] = True
    return table


class ScaleJitterTransform(GeneralizedRCNNTransform):
    """``GeneralizedRCNNTransform`` whose training resize is multi-scale.

    With ``scale_range = (lo, hi)`` each training image is resized with ``min_size`` and ``max_size``
    multiplied by ``s ~ U(lo, hi)`` (torch's global generator, so seeded runs repeat); ``scale_range=None``
    and eval mode behave exactly as the parent class.

    ``paste_masks`` (True; not in the state dict): with False, eval ``postprocess`` maps the boxes to the
    original image size as usual but leaves the mask crops unpasted, under ``mask_crops (N, 1, M, M)``
    instead of ``masks``, for :func:`lib.mask_paste.masks_in_frame` to paste into the frame the caller
    keeps (switched by :func:`lib.mask_paste.crops_from`).
    """

    paste_masks = True

    def __init__(self, *args, scale_range=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.scale_range = check_scale_range(scale_range)

    def postprocess(self, result, image_shapes, original_image_sizes):
        if self.training or self.paste_masks:
            return super().postprocess(result, image_shapes, original_image_sizes)
        for pred, im_s, o_im_s in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], im_s, o_im_s)
            if "masks" in pred:
                pred["mask_crops"] = pred.pop("masks")
        return result

    def resize(self, image, target=None):
        if not (self.training and self.scale_range):
            return super().resize(image, target)
        lo, hi = self.scale_range
        s = float(torch.empty(()).uniform_(lo, hi))
        nominal = self.min_size, self.max_size
        self.min_size = tuple(max(1, round(m * s)) for m in nominal[0])
        self.max_size = max(1, round(nominal[1] * s))
        try:
            return super().resize(image, target)
        finally:
            self.min_size, self.max_size = nominal
