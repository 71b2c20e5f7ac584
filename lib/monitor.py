"""Watching a training run live: the meters of an epoch, and TensorBoard event files beside ``metrics.jsonl``.

:class:`MetricLogger` keeps the meters of one training epoch (loss sums and means, step time, data time,
images/s), as torchvision's references' ``MetricLogger`` does: the training loop (``lib/engine.py``) updates it
every optimizer step and makes its ``metrics.jsonl`` records from it.

:class:`TrainMonitor` writes the records the training loop (``lib/engine.py``) logs to ``metrics.jsonl`` as
TensorBoard scalars, and a few validation overlays as images, into ``<out_dir>/tensorboard/``
(:func:`tensorboard_dir`), so ``tensorboard --logdir work`` shows every run's curves while it trains, as
detectron2's ``TensorboardXWriter`` does. ``metrics.jsonl`` stays the record the pipeline reads;
the event files are only for watching.

Tags (``step`` is the global optimiser step, the ``step`` of the ``metrics.jsonl`` records):

* train records (:meth:`TrainMonitor.log_train`): ``train/loss``, ``train/loss_<part>``, ``train/lr``,
  ``train/grad_norm``, ``time/step``, ``time/data``, ``time/images_per_s``, ``amp/skipped_steps``,
  ``memory/max_gb``; any other number ``<key>`` as ``train/<key>``;
* epoch records (:meth:`TrainMonitor.log_epoch`): ``val_<name>`` as ``val/<name>`` (``val/kaggle``,
  ``val/kaggle_all``, ``val/AP``, ``val/AP50``, ``val/AP75``, ``val/attr_micro_f1``, ...), ``val_time`` as
  ``time/val``, ``epoch_time`` as ``time/epoch``, any other number ``<key>`` as ``epoch/<key>``
  (``epoch/train_loss``, ``epoch/train_loss_<part>``, ``epoch/images_per_s``, ``epoch/lr``, ``epoch/max_mem_gb``);
* overlays (:meth:`TrainMonitor.log_overlays`): ``val/overlay/<i>``, ``i`` = 0, 1, ... per image.

The bookkeeping keys ``kind``, ``epoch``, ``iter``, ``step``, ``steps`` and ``val_images`` are not plotted;
None, text, booleans and non-finite numbers are skipped.

Resuming: ``TrainMonitor(..., resume_step=S)`` (S = the resumed checkpoint's ``global_step``) marks the new
event file so TensorBoard drops the events an earlier process logged at steps after S (they are logged
again), as the engine drops those ``metrics.jsonl`` records: a killed-and-resumed run shows one curve.
"""
from __future__ import annotations

import math
import numbers
import time
from pathlib import Path

import numpy as np
import torch

TENSORBOARD_SUBDIR = "tensorboard"
_NOT_PLOTTED = frozenset({"kind", "epoch", "iter", "step", "steps", "val_images"})
_TRAIN_TAGS = {"step_time": "time/step", "data_time": "time/data", "images_per_s": "time/images_per_s",
               "skipped_steps": "amp/skipped_steps", "max_mem_gb": "memory/max_gb"}
_EPOCH_TAGS = {"val_time": "time/val", "epoch_time": "time/epoch"}


def tensorboard_dir(out_dir: str | Path) -> Path:
    """Where a training run in ``out_dir`` writes its TensorBoard event files: ``<out_dir>/tensorboard``."""
    return Path(out_dir) / TENSORBOARD_SUBDIR


def scalar_value(v) -> float | None:
    """``v`` as a float when it is a finite real number (int, float, numpy scalar, one-element tensor), else
    None (None, text, bool, NaN/inf, lists)."""
    if isinstance(v, torch.Tensor):
        v = v.item() if v.numel() == 1 else None
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def train_tag(key: str) -> str:
    """The TensorBoard tag of a train-record key (``"loss_mask"`` -> ``"train/loss_mask"``)."""
    return _TRAIN_TAGS.get(key, f"train/{key}")


def epoch_tag(key: str) -> str:
    """The TensorBoard tag of an epoch-record key (``"val_AP50"`` -> ``"val/AP50"``,
    ``"train_loss"`` -> ``"epoch/train_loss"``)."""
    if key in _EPOCH_TAGS:
        return _EPOCH_TAGS[key]
    return f"val/{key[4:]}" if key.startswith("val_") else f"epoch/{key}"


def record_scalars(record: dict, tag_of) -> dict[str, float]:
    """``{tag: value}`` of the plottable entries of a metrics record; ``tag_of`` maps a key to its tag."""
    out = {}
    for k, v in record.items():
        x = scalar_value(v)
        if k not in _NOT_PLOTTED and x is not None:
            out[tag_of(str(k))] = x
    return out


def overlay_image(image: torch.Tensor, prediction: dict, class_names=None, score_thresh: float = 0.5,
                  mask_thresh: float = 0.5) -> torch.Tensor:
    """One image with its predicted instances drawn (``lib.viz.draw_overlay``: colour per class, contour, label).

    Args:
        image: (3, H, W) float in 0..1 (a model input), or uint8 0..255.
        prediction: a model output (``lib.models`` / torchvision convention): ``masks`` (N, 1, H, W) or
            (N, H, W) at the image's size, float probabilities or bool / 0-1 integers, ``scores`` (N,), and
            either ``labels`` (N,) int64 with 0 = background (category = label - 1) or ``categories`` (N,)
            0-based category indices.
        class_names: category names indexed by category; None labels instances by category number.
        score_thresh: instances with a lower score are not drawn.
        mask_thresh: a pixel belongs to a mask where its probability is >= this.
    Returns:
        (3, H, W) uint8 tensor (CHW, RGB) on the CPU.
    """
    from .viz import draw_overlay

    img = image.detach().cpu()
    if img.dtype != torch.uint8:
        img = (img.float().clamp(0, 1) * 255).round().to(torch.uint8)
    hwc = img.permute(1, 2, 0).numpy()
    scores = prediction["scores"].detach().float().cpu().numpy().reshape(-1)
    cats = torch.as_tensor(prediction["categories"]) if "categories" in prediction else prediction["labels"] - 1
    cats = cats.detach().cpu().numpy().reshape(-1)
    masks = prediction["masks"].detach()
    masks = masks.reshape(masks.shape[0], *masks.shape[-2:])
    keep = np.flatnonzero(scores >= score_thresh)
    binary = (masks[torch.as_tensor(keep, dtype=torch.long)].float() >= mask_thresh).cpu().numpy()
    names = [class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(int(c))
             for c in cats[keep]]
    drawn = draw_overlay(hwc, binary, names, scores[keep])
    return torch.from_numpy(drawn).permute(2, 0, 1).contiguous()


class MetricLogger:
    """The meters of one training epoch, updated once per optimizer step (:meth:`update`).

    * ``sums``: the sum of ``"loss"`` and of each loss part over the steps whose loss is finite (an fp16 step
      the gradient scaler skipped may have an inf loss: it stays out of the means), ``finite_steps`` their
      count, :meth:`means` the means;
    * ``steps``, ``images``: the steps and the images (all ranks together) of the epoch so far;
    * ``step_time``: seconds of the last step, since the previous step ended (its wait for data included);
      ``data_time``: the part of it spent waiting for the loader (batches fetched through :meth:`timed`);
      ``step_images``: its images;
    * ``seconds``: from the start to :meth:`stop`.

    Args:
        state: what :meth:`state` returned, e.g. in a mid-epoch checkpoint: a resumed epoch goes on with its
            sums and counts (``finite_steps`` defaults to ``steps``); None starts at zero.
        clock: seconds now (``time.time``).
    """

    def __init__(self, state: dict | None = None, clock=time.time):
        state = state or {}
        self.clock = clock
        self.sums = {str(k): float(v) for k, v in (state.get("sums") or {}).items()}
        self.steps, self.images = int(state.get("steps", 0)), int(state.get("images", 0))
        self.finite_steps = int(state.get("finite_steps", self.steps))
        self.step_time = self.data_time = 0.0
        self.step_images, self.seconds = 0, None
        self._waited = 0.0  # waiting for data since the last step
        self.t_start = self.t_step = clock()

    def timed(self, batches):
        """Yield the items of ``batches``, counting the wait for each as data time of the coming step."""
        batches = iter(batches)
        while True:
            t = self.clock()
            try:
                item = next(batches)
            except StopIteration:
                return
            self._waited += self.clock() - t
            yield item

    def update(self, loss: float, parts: dict, images: int) -> None:
        """One optimizer step done: its total ``loss``, ``{name: value}`` loss ``parts`` and ``images``."""
        now = self.clock()
        self.step_time, self.t_step = now - self.t_step, now
        self.data_time, self._waited = self._waited, 0.0
        self.steps += 1
        self.images += images
        self.step_images = images
        if math.isfinite(loss):
            self.finite_steps += 1
            for k, v in (("loss", loss), *parts.items()):
                self.sums[k] = self.sums.get(k, 0.0) + v

    def step_meters(self) -> dict:
        """``{"step_time", "data_time", "images_per_s"}`` of the last step (seconds to 4 decimals)."""
        return {"step_time": round(self.step_time, 4), "data_time": round(self.data_time, 4),
                "images_per_s": round(self.step_images / max(self.step_time, 1e-9), 3)}

    def means(self) -> dict:
        """``{name: sum / finite_steps}`` of the loss and its parts, in the order they first came."""
        return {k: v / max(self.finite_steps, 1) for k, v in self.sums.items()}

    def stop(self) -> None:
        """The epoch's training ends: fixes ``seconds`` (later work, e.g. validation, is not counted)."""
        self.seconds = self.clock() - self.t_start

    def epoch_meters(self) -> dict:
        """``{"steps", "epoch_time", "images_per_s"}`` of the epoch, after :meth:`stop`."""
        return {"steps": self.steps, "epoch_time": round(self.seconds, 2),
                "images_per_s": round(self.images / max(self.seconds, 1e-9), 3)}

    def state(self) -> dict:
        """The sums and counts (plain types) that a :class:`MetricLogger` of a resumed epoch starts from."""
        return {"sums": dict(self.sums), "steps": self.steps, "images": self.images,
                "finite_steps": self.finite_steps}


class TrainMonitor:
    """TensorBoard writer of one training run (``torch.utils.tensorboard.SummaryWriter``).

    Args:
        log_dir: the folder of the event files; :func:`tensorboard_dir` of the run's ``out_dir``.
        enabled: False makes every method a no-op and writes nothing (DDP ranks > 0, ``--no-tensorboard``);
            the ``tensorboard`` package is then not needed.
        resume_step: the ``global_step`` of the checkpoint this run resumes from (0 for a fresh run in a
            folder that may hold an earlier run's events), or None: events an earlier process wrote at later
            steps are hidden (``SummaryWriter(purge_step=resume_step + 1)``).
        flush_secs: the most seconds an event waits before it is written to disk (a live TensorBoard sees
            it then); :meth:`log_epoch` and :meth:`log_overlays` flush at once.

    Use as a context manager, or call :meth:`close`. Raises ImportError with what to do when enabled and
    ``tensorboard`` is not installed.
    """

    def __init__(self, log_dir: str | Path, enabled: bool = True, resume_step: int | None = None,
                 flush_secs: int = 10):
        self.log_dir = Path(log_dir)
        self.enabled = bool(enabled)
        self.writer = None
        if not self.enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise ImportError(
                "TensorBoard logging needs the 'tensorboard' package: pip install 'tensorboard>=2.14' "
                "(it is in requirements.txt), or pass --no-tensorboard to train without it") from e
        purge = None if resume_step is None else int(resume_step) + 1
        self.writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=purge, flush_secs=flush_secs)

    def log_scalars(self, step: int, scalars: dict[str, float]) -> None:
        """Write ``{tag: value}`` at global step ``step``."""
        if self.writer is None:
            return
        for tag, v in scalars.items():
            self.writer.add_scalar(tag, v, global_step=int(step))

    def log_train(self, step: int, record: dict) -> None:
        """A ``{"kind": "train", ...}`` record of ``metrics.jsonl`` (loss, loss_<part>, lr, grad_norm,
        step_time, data_time, images_per_s, skipped_steps, max_mem_gb, ...) at global step ``step``."""
        self.log_scalars(step, record_scalars(record, train_tag))

    def log_epoch(self, step: int, record: dict) -> None:
        """A ``{"kind": "epoch", ...}`` record (train_* means, val_* scores, epoch_time, ...) at global step
        ``step`` (the step at the epoch's end); flushes."""
        self.log_scalars(step, record_scalars(record, epoch_tag))
        self.flush()

    def log_overlays(self, step: int, images, predictions, class_names=None, max_images: int = 4,
                     score_thresh: float = 0.5, mask_thresh: float = 0.5) -> None:
        """The first ``max_images`` images with their predictions drawn (:func:`overlay_image`) as
        ``val/overlay/<i>`` at global step ``step``; flushes.

        ``images``: (3, H, W) float 0..1 tensors; ``predictions``: one model output dict per image.
        """
        if self.writer is None:
            return
        for i, (image, pred) in enumerate(list(zip(images, predictions))[:max_images]):
            drawn = overlay_image(image, pred, class_names, score_thresh, mask_thresh)
            self.writer.add_image(f"val/overlay/{i}", drawn, global_step=int(step), dataformats="CHW")
        self.flush()

    def flush(self) -> None:
        """Write the pending events to disk."""
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file (idempotent)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    def __enter__(self) -> TrainMonitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["MetricLogger", "TrainMonitor", "tensorboard_dir", "overlay_image", "record_scalars", "scalar_value",
           "train_tag", "epoch_tag", "TENSORBOARD_SUBDIR"]
