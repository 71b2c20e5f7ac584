"""The attribute head refit alone on the trained detector's frozen features (03 / 04 ``--attr-refit-steps``).

At a short budget the jointly trained attribute head stays where its per-category prior starts it: its few
positive RoIs per step move none of its decisions (bench/RESULTS.md). The trained detector's box-head features
hold more: the same head trained alone on them, at the ground-truth boxes of the training split, beats the
prior on held-out images. After training, the engine does that to ``best.pth`` (:func:`refit_steps`: on by default
for a model with an attribute head):

* :func:`attribute_rows`: the box-head features (:func:`lib.models.maskrcnn.box_features_for_boxes`) of every
  attribute-category instance (``lib.labels.ATTRIBUTE_CATEGORIES``) at its ground-truth box, with its label and
  multi-hot attributes;
* :func:`refit_head`: a copy of the attribute head trained on those rows alone (AdamW, BCE-with-logits,
  batches drawn with replacement from a seeded generator);
* :func:`refit_checkpoint`: both on a checkpoint file; the refit head is written back into its weights (and into
  the moving average's, when the run kept one) and ``attr_refit`` (settings and row count) is added; saved
  atomically. A checkpoint that already has ``attr_refit`` is left as it is.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .checkpoint import load_checkpoint, save_checkpoint
from .labels import ATTRIBUTE_CATEGORIES
from .models.maskrcnn import box_features_for_boxes
from .training_data import PreparedDataset, build_transforms

REFIT_DEFAULTS = {"batch": 128, "lr": 1e-3, "weight_decay": 1e-4, "seed": 0}
DEFAULT_STEPS = 400  # --attr-refit-steps of a run with an attribute head, unless given (bench/RESULTS.md)


def refit_steps(requested: int | None, attr_head: bool) -> int:
    """The refit steps of a run: ``requested`` (``--attr-refit-steps``) when given, else :data:`DEFAULT_STEPS`
    with an attribute head and 0 without one."""
    if requested is None:
        return DEFAULT_STEPS if attr_head else 0
    if requested < 0 or (requested and not attr_head):
        raise ValueError(f"--attr-refit-steps {requested}: needs --attr-head and a number of steps >= 0")
    return int(requested)


def attribute_rows(model: nn.Module, samples: Iterable, device: torch.device
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows of the attribute-category instances of ``samples``: ``(features (K, F) float32, labels (K,) int64,
    attributes (K, A) float32)`` on the CPU.

    ``samples`` yields ``(image (3, H, W) float 0..1, boxes (N, 4) x1y1x2y2, labels (N,) int64 category + 1,
    attributes (N, A) multi-hot)``, one image each; ``model`` is a Mask R-CNN / DeepMAC of ``lib.models``.
    """
    allowed = torch.tensor(sorted(c + 1 for c in ATTRIBUTE_CATEGORIES))
    feats, labels, attrs = [], [], []
    for image, boxes, lab, att in samples:
        keep = torch.isin(torch.as_tensor(lab), allowed)
        if not keep.any():
            continue
        f = box_features_for_boxes(model, [image.to(device)], [torch.as_tensor(boxes)[keep].to(device)])
        feats.append(f.float().cpu())
        labels.append(torch.as_tensor(lab)[keep].long())
        attrs.append(torch.as_tensor(att)[keep].float())
    if not feats:
        raise ValueError("no instance of an attribute category to refit the attribute head on")
    return torch.cat(feats), torch.cat(labels), torch.cat(attrs)


def refit_head(head: nn.Module, feats: torch.Tensor, labels: torch.Tensor, attributes: torch.Tensor, steps: int,
               batch: int = 128, lr: float = 1e-3, weight_decay: float = 1e-4, seed: int = 0) -> nn.Module:
    """A copy of the attribute head ``head`` (``lib.models.maskrcnn.AttributePredictor``) trained alone on
    ``feats (K, F)``, ``labels (K,)`` and multi-hot ``attributes (K, A)``: ``steps`` AdamW steps on ``batch`` rows
    drawn with replacement (generator seeded with ``seed``), BCE-with-logits. ``head`` itself is not changed;
    the copy is returned on the CPU in eval mode."""
    head = copy.deepcopy(head).cpu().float().train()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(int(steps)):
        i = torch.randint(0, len(feats), (batch,), generator=gen)
        loss = nn.functional.binary_cross_entropy_with_logits(head(feats[i], labels[i]), attributes[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return head.eval()


def prepared_samples(prepared_dir: str | Path, workers: int = 0):
    """:func:`attribute_rows`'s samples from the training split of a prepared set (images as 01 wrote them)."""
    ds = PreparedDataset(prepared_dir, "train", transforms=build_transforms(train=False))
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=workers)
    for image, target in loader:
        yield image, target["boxes"], target["labels"], target["attributes"]


def refit_checkpoint(path: str | Path, prepared_dir: str | Path, steps: int, device: torch.device,
                     workers: int = 0) -> dict:
    """Refit the attribute head of the checkpoint ``path`` on the training split of ``prepared_dir`` (the rows
    of :func:`attribute_rows` from the weights :func:`lib.checkpoint.load_checkpoint` gives, :func:`refit_head`
    with :data:`REFIT_DEFAULTS`) and save it back. Returns the checkpoint's ``attr_refit``: ``steps``, the
    settings and ``rows`` (instances it learned from); a checkpoint that has one already is not refit again."""
    model, ckpt = load_checkpoint(path)
    if ckpt.get("attr_refit"):
        return ckpt["attr_refit"]
    head = getattr(model.roi_heads, "attr_predictor", None)
    if head is None:
        raise ValueError(f"{path}: the model has no attribute head to refit (train it with --attr-head)")
    model.to(device).eval()
    rows = attribute_rows(model, prepared_samples(prepared_dir, workers), device)
    refit = refit_head(head, *rows, steps=steps, **REFIT_DEFAULTS)
    prefix = "roi_heads.attr_predictor."
    for name, value in refit.state_dict().items():
        ckpt["model"][prefix + name] = value.to(ckpt["model"][prefix + name].dtype)
        if ckpt.get("model_ema"):
            ema = ckpt["model_ema"]
            ema["module." + prefix + name] = value.to(ema["module." + prefix + name].dtype)
    ckpt["attr_refit"] = {"steps": int(steps), **REFIT_DEFAULTS, "rows": int(len(rows[0]))}
    save_checkpoint(path, ckpt)
    return ckpt["attr_refit"]


__all__ = ["REFIT_DEFAULTS", "DEFAULT_STEPS", "refit_steps", "attribute_rows", "refit_head", "prepared_samples", "refit_checkpoint"]
