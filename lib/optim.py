"""Optimisation of a training run (``lib/engine.py``): the optimizer, the learning-rate schedule, the batch and
learning rate a step sees, and the moving average of the weights.

* :func:`build_optimizer` - SGD or AdamW, no weight decay on 1-D parameters (biases, norm weights);
* :func:`build_lr_scheduler` - a ``LambdaLR`` stepped once per optimizer step (not per epoch) with the factor of
  :func:`lr_factor_fn`: linear warmup, then cosine to 0, steps at :func:`milestone_steps`, or constant;
  :func:`step_scheduler` steps it;
* :func:`optimization_summary` - global batch and (optionally linearly scaled) peak learning rate;
* :func:`make_ema` - ``torch.optim.swa_utils.AveragedModel`` of the weights, or None.
"""
from __future__ import annotations

import math
import warnings

import torch


def build_optimizer(model: torch.nn.Module, name: str, lr: float, weight_decay: float, momentum: float,
                    device: torch.device) -> torch.optim.Optimizer:
    """``name`` "sgd" or "adamw" over the trainable parameters; no weight decay on 1-D parameters (biases,
    norm weights); fused kernels on CUDA."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    kw = {"fused": True} if device.type == "cuda" else {}
    if name == "sgd":
        make = lambda **k: torch.optim.SGD(groups, lr=lr, momentum=momentum, **k)  # noqa: E731
    else:
        make = lambda **k: torch.optim.AdamW(groups, lr=lr, **k)  # noqa: E731
    try:
        return make(**kw)
    except (TypeError, RuntimeError, ValueError):
        return make()


def lr_factor_fn(schedule: str, total_steps: int, warmup_steps: int, milestones_steps=(), gamma: float = 0.1):
    """step -> multiplier of the peak lr: linear warmup from 1/1000, then cosine to 0 / steps / constant."""
    total_steps = max(1, int(total_steps))
    warmup_steps = max(0, int(warmup_steps))
    milestones_steps = sorted(int(m) for m in milestones_steps)

    def f(step: int) -> float:
        if step < warmup_steps:
            a = step / warmup_steps
            w = 1e-3 * (1 - a) + a
        else:
            w = 1.0
        if schedule == "cosine":
            t = min(1.0, max(0.0, (step - warmup_steps) / max(1, total_steps - warmup_steps)))
            return w * 0.5 * (1 + math.cos(math.pi * t))
        if schedule == "step":
            return w * gamma ** sum(step >= m for m in milestones_steps)
        return w

    return f


def milestone_steps(lr_milestones: str, epochs: int, steps_per_epoch: int) -> list[int]:
    """``--lr-milestones`` ("8,11"; "" = 2/3 and 8/9 of ``epochs``) as global steps."""
    if lr_milestones.strip():
        try:
            eps = [int(x) for x in lr_milestones.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--lr-milestones {lr_milestones!r}: expected comma-separated epochs") from None
    else:
        eps = sorted({max(1, round(epochs * 2 / 3)), max(1, round(epochs * 8 / 9))})
    return [e * steps_per_epoch for e in eps]


def build_lr_scheduler(optimizer: torch.optim.Optimizer, schedule: str, epochs: int, steps_per_epoch: int,
                       warmup_steps: int, lr_milestones: str = "", gamma: float = 0.1
                       ) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``--schedule`` of a run of ``epochs`` x ``steps_per_epoch`` optimizer steps: :func:`lr_factor_fn`
    over :func:`milestone_steps`, as a ``LambdaLR`` stepped after every optimizer step."""
    lr_f = lr_factor_fn(schedule, steps_per_epoch * epochs, warmup_steps,
                        milestone_steps(lr_milestones, epochs, steps_per_epoch), gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_f)


def step_scheduler(lr_scheduler) -> None:
    """``lr_scheduler.step()`` after an optimizer step, without torch's warning about its order: an fp16
    update the gradient scaler skipped is no misordered scheduler call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
        lr_scheduler.step()


def optimization_summary(lr: float, batch_size: int, accumulate: int, world_size: int, lr_scale: str = "none",
                         lr_base_batch: int = 16, ema_decay: float = 0.0) -> dict:
    """The batch an optimizer step sees and its learning rate: ``global_batch`` = world size x ``--batch-size`` x
    ``--accumulate``; ``lr`` = ``--lr``, or with ``--lr-scale linear`` ``--lr`` x global batch / ``--lr-base-batch``
    (the linear scaling rule of Goyal et al. 2017, as detectron2's ``REFERENCE_WORLD_SIZE``). Saved in meta.json."""
    if lr_scale not in ("none", "linear"):
        raise ValueError(f"--lr-scale: 'none' or 'linear', got {lr_scale!r}")
    global_batch = int(world_size) * int(batch_size) * int(accumulate)
    lr = lr * global_batch / lr_base_batch if lr_scale == "linear" else lr
    return {"global_batch": global_batch, "accumulate": int(accumulate), "lr_scale": lr_scale,
            "lr_base_batch": int(lr_base_batch), "lr": lr, "ema_decay": float(ema_decay)}


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """The exponential moving average of ``model``'s weights and buffers (BatchNorm statistics too, as
    torchvision's references keep it), updated after every optimizer step (:meth:`update_parameters`:
    ``ema = decay * ema + (1 - decay) * weights``, the first step copying); None when ``decay`` is 0."""
    if not 0.0 <= decay < 1.0:
        raise ValueError(f"--ema-decay must be in [0, 1), got {decay}")
    if decay == 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


__all__ = ["build_optimizer", "lr_factor_fn", "milestone_steps", "build_lr_scheduler", "step_scheduler",
           "optimization_summary", "make_ema"]
