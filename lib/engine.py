"""Training loop shared by ``02_train_unet.py``, ``03_train_maskrcnn.py`` and ``04_train_deepmac.py``.

``run(arch, model_overrides, settings)`` (:class:`TrainSettings`: the flags of :mod:`lib.cli`) trains
a ``lib.models`` model on a prepared set, as torchvision's references do: :func:`train_one_epoch` then
validation (:func:`evaluate`) and checkpoints at each epoch's end (:func:`end_epoch`), over a small :class:`Run`
state. The optimizer, the learning-rate schedule and the moving average of the weights come from
:mod:`lib.optim`; an epoch's meters (losses, step and data time, images/s) are a
:class:`lib.monitor.MetricLogger`. It writes to ``out_dir``:

* ``checkpoint.pth`` - rolling checkpoint (every epoch; also every ``--checkpoint-every-steps`` steps);
* ``best.pth``       - the checkpoint with the best validation Kaggle score so far;
* ``model_<epoch>.pth`` - the checkpoints of the epochs named by ``--keep-epochs`` (e.g. a checkpoint ensemble);
* ``metrics.jsonl``  - ``{"kind": "train", ...}`` every ``--log-every`` steps (loss and its parts, lr,
  grad norm, step time, images/s) and ``{"kind": "epoch", ...}`` per epoch (means, ``val_*`` scores);
* ``curves.png``     - training curves (``lib.viz.plot_curves``), redrawn every epoch;
* ``val_scores.json`` - latest and best validation scores (Kaggle metric, COCO mask AP, per class);
* ``meta.json``      - stage, arch, model config, args, data summary, final metrics, checkpoint paths.

Checkpoints hold only plain Python types and tensors, so ``torch.load(path, weights_only=True)`` reads
them; :func:`lib.checkpoint.load_checkpoint` rebuilds the model from the saved config alone. Their keys (what
:func:`make_checkpoint` saves), with types and meanings, are listed where the format lives: :mod:`lib.checkpoint`
(``CHECKPOINT_KEYS``, ``CHECKPOINT_FORMAT``).

Determinism: every epoch reseeds torch/numpy/random from ``(seed, epoch, rank)`` and the sampler's order
depends only on ``(seed, epoch)``, so a run split by ``--stop-after-epoch`` + ``--resume`` gives the same
weights as an uninterrupted one (exactly on CPU with ``--workers 0``); a mid-epoch checkpoint restores each
rank's generators, so resuming from it is exact too.

Crashes: checkpoints, ``val_scores.json`` and ``meta.json`` are written atomically, a killed run's temporary
files are deleted at the next start, and a resume drops the ``metrics.jsonl`` records logged after its
checkpoint (they are logged again), so a killed-and-resumed run ends with the files of an uninterrupted one.

Multi-GPU: launched by ``torchrun`` (env ``WORLD_SIZE`` > 1) the model is wrapped in DDP (nccl on CUDA,
gloo on CPU; ``find_unused_parameters`` off by default: every trainable parameter gets a gradient), each
rank reads its shard via ``DistributedSampler``, every rank validates its contiguous share of the val split
(:func:`evaluate`; rank 0 merges the shards: the scores of a single-process evaluation), and rank 0 alone
logs and saves while the others wait at a barrier. ``--batch-size`` is per process; scale ``--lr`` with the
world size yourself if you want the linear rule.

Mixed precision (``--amp``, :func:`lib.runtime.amp_dtype`): bf16 autocast, or fp16 autocast with
``torch.amp.GradScaler`` (its state in every checkpoint; an update it skips for inf/NaN gradients is counted
as ``skipped_steps`` in ``metrics.jsonl`` and the progress bar, and only :data:`MAX_CONSECUTIVE_SKIPS` in a
row stop the run). Boxes and masks stay float32 under both (lib/models/maskrcnn.py).

Live monitoring: the train and epoch records also go to TensorBoard event files in ``tensorboard/``
(:mod:`lib.monitor`; ``--no-tensorboard``), with a few validation overlays per epoch.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from . import prepared as lprepared
from . import files as lfiles
from . import labels as llabels
from . import models as lmodels
from . import runtime
from . import weights as lweights
from .attribute_refit import refit_checkpoint, refit_steps
from .checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from .mask_paste import crops_from, masks_in_frame
from .models.unet import without_semantic
from .monitor import MetricLogger, TrainMonitor, tensorboard_dir
from .optim import build_lr_scheduler, build_optimizer, make_ema, optimization_summary, step_scheduler
from .training_data import PreparedDataset, attribute_counts, build_transforms, checked_batches, make_loader, set_epoch
from .viz import plot_curves


# --------------------------------------------------------------------------------------------- data helpers
def _to_device(images, targets, device):
    images = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
    targets = [{k: t[k].as_subclass(torch.Tensor).to(device, non_blocking=True)
                for k in ("boxes", "labels", "masks", "attributes") if k in t} for t in targets]
    return images, targets


def _autocast(device: torch.device, dtype):
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


def shard_indices(n: int, batch_size: int, rank: int, world: int) -> list[int]:
    """Rank ``rank``'s share of ``n`` items for a distributed evaluation: a contiguous run of whole batches of
    ``batch_size``, so every image is in the batch it has in a single-process run (padding and batch size
    then equal: the same predictions), and the shards in rank order are ``0 .. n-1``."""
    n_batches = -(-n // max(1, batch_size))
    lo, hi = (n_batches * rank) // world, (n_batches * (rank + 1)) // world
    return list(range(min(n, lo * batch_size), min(n, hi * batch_size)))


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, device: torch.device, dtype=None, batch_size: int = 2,
             score_thresh: float = 0.5, mask_thresh: float = 0.5, progress: bool = True, workers: int = 0,
             distributed: bool = False, examples: int = 0) -> dict | None:
    """Validate on ``dataset`` (a :class:`PreparedDataset` with eval transforms).

    Predicted masks are ``prob >= mask_thresh`` at the image's size (detectors' crops pasted in one batch per
    image, :func:`lib.mask_paste.masks_in_frame`, binarised on the device), classes are categories
    (label - 1). The Kaggle metric uses detections with ``score >= score_thresh``; COCO mask AP uses all of
    them. ``workers``: loader processes decoding the val images.

    ``distributed`` (every rank calls it): each rank evaluates its :func:`shard_indices` and rank 0 merges
    the shards in order, so the scores equal a single-process evaluation's; the other ranks return None.

    Returns ``dict(kaggle, kaggle_all, num_images, per_class, coco, attr, examples)`` (``kaggle_all``: Kaggle
    metric with every detection; ``attr``: :class:`lib.attribute_metric.AttributeEvaluator` summary of the kept
    detections when the model predicts attributes, else None; ``examples``: the first ``examples`` images as
    ``(image (3, H, W) float, {"masks" (N, H, W) bool, "labels", "scores"})`` with the kept detections, for
    overlays).
    """
    from .evaluator import Evaluator

    was_training = model.training
    model.eval()
    evs = {"kaggle": Evaluator(coco=False), "all": Evaluator(coco=True), "attr": None}
    shown = []
    if distributed:
        rank, world = dist.get_rank(), dist.get_world_size()
        dataset = torch.utils.data.Subset(dataset, shard_indices(len(dataset), batch_size, rank, world))
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False, workers=workers)
    for images, targets in tqdm(loader, desc="val", unit="batch", disable=not progress, leave=False):
        images = [im.as_subclass(torch.Tensor).to(device, non_blocking=True) for im in images]
        with _autocast(device, dtype), crops_from(model), without_semantic(model):
            outs = model(images)
        for im, out, t in zip(images, outs, targets):
            kept = _score_image(evs, out, t, tuple(im.shape[-2:]), score_thresh, mask_thresh)
            if len(shown) < examples:
                shown.append((im.cpu(), kept))
    if was_training:
        model.train()
    if distributed:
        evs, shown = _gather_evaluators(evs, shown, examples)
        if evs is None:
            return None
    s_k, s_all = evs["kaggle"].summary(), evs["all"].summary()
    return {"kaggle": s_k["kaggle"], "kaggle_all": s_all["kaggle"], "num_images": s_k["num_images"],
            "per_class": s_k["per_class"], "coco": s_all["coco"], "score_thresh": score_thresh,
            "attr": evs["attr"].summary() if evs["attr"] is not None else None, "examples": shown}


def _score_image(evs: dict, out: dict, t: dict, hw: tuple[int, int], score_thresh: float,
                 mask_thresh: float) -> dict:
    """Add one image's predictions to the evaluators of :func:`evaluate`; returns the kept detections."""
    from .attribute_metric import AttributeEvaluator

    gt_masks = t["masks"].as_subclass(torch.Tensor).numpy()
    gt_cls = (t["labels"] - 1).numpy()
    pm = (masks_in_frame(out, hw, hw) >= mask_thresh).cpu().numpy()
    pc = (out["labels"] - 1).cpu().numpy()
    ps = out["scores"].float().cpu().numpy()
    evs["all"].add(t["image_id"], gt_masks, gt_cls, pm, pc, ps)
    keep = ps >= score_thresh
    evs["kaggle"].add(t["image_id"], gt_masks, gt_cls, pm[keep], pc[keep], ps[keep])
    if out.get("attr_scores") is not None and "attributes" in t:
        evs["attr"] = evs["attr"] or AttributeEvaluator()
        evs["attr"].add(gt_masks, gt_cls, t["attributes"].as_subclass(torch.Tensor).numpy(), pm[keep], pc[keep],
                        ps[keep], out["attr_scores"].float().cpu().numpy()[keep])
    return {"masks": torch.from_numpy(pm[keep]), "labels": torch.from_numpy(pc[keep] + 1),
            "scores": torch.from_numpy(ps[keep])}


def _gather_evaluators(evs: dict, shown: list, examples: int):
    """Every rank's evaluators merged in rank order on rank 0, with the first ``examples`` examples of the
    merged shards; ``(None, None)`` elsewhere."""
    rank, world = dist.get_rank(), dist.get_world_size()
    parts = [None] * world if rank == 0 else None
    dist.gather_object((evs, shown), parts, dst=0)
    if rank != 0:
        return None, None
    merged, shown = parts[0]
    for other, more in parts[1:]:
        shown = shown + more
        merged["kaggle"].merge(other["kaggle"])
        merged["all"].merge(other["all"])
        if other["attr"] is not None:
            merged["attr"] = other["attr"] if merged["attr"] is None else merged["attr"].merge(other["attr"])
    return merged, shown[:examples]


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(float(x)) else None


# --------------------------------------------------------------------------------------------- training step
class NonFiniteLossError(FloatingPointError):
    """Raised when a loss or gradient norm is NaN/inf; checkpoint.pth keeps the last good state."""


class StepResult(NamedTuple):
    """What :func:`train_step` reports, as Python floats: the total loss, each loss part, the (unscaled)
    gradient norm, and whether fp16's gradient scaler skipped the update (inf/NaN gradients)."""

    loss: float
    parts: dict
    grad_norm: float
    skipped: bool


def train_step(net, batches, optimizer, params, clip_grad: float, device: torch.device, dtype=None,
               distributed: bool = False, scaler: torch.amp.GradScaler | None = None) -> StepResult:
    """One optimisation step: forward under autocast and backward for each micro-batch, gradient clipping,
    ``optimizer.step()``.

    ``batches``: ``[(images, targets)]``, already on ``device``; with several (``--accumulate``) each loss is
    divided by their number before its backward, so the gradients add up to those of the mean loss over them
    (DDP averages the gradients once, on the last: ``no_sync`` before it), and the reported losses are their
    means. ``clip_grad`` 0 = no clipping (the norm is still computed). The losses and the gradient norm are read
    together after the last ``backward``: one device-to-host copy per step.

    ``scaler``: fp16's ``torch.amp.GradScaler`` (:func:`lib.runtime.make_grad_scaler`). Enabled, it scales
    the loss, unscales the gradients before clipping, and skips the update when a gradient is inf/NaN
    (``StepResult.skipped``; it then lowers its scale): an fp16 overflow is normal, not an error. Without an
    enabled scaler (fp32, bf16) a non-finite loss (on any rank, under DDP) or gradient norm raises
    :class:`NonFiniteLossError` (``"non-finite loss: ..."`` / ``"non-finite gradient norm: ..."``) before
    the weights change.
    """
    scaling = scaler is not None and scaler.is_enabled()
    n = len(batches)
    optimizer.zero_grad(set_to_none=True)
    sums = None
    for k, (images, targets) in enumerate(batches):
        quiet = distributed and k < n - 1 and hasattr(net, "no_sync")  # DDP: reduce the gradients once, at the end
        with net.no_sync() if quiet else contextlib.nullcontext():
            with _autocast(device, dtype):
                loss_dict = net(images, targets)
            loss = sum(loss_dict.values())
            part = loss / n if n > 1 else loss
            (scaler.scale(part) if scaling else part).backward()
        values = torch.stack([loss.detach().float(), *(v.detach().float().reshape(()) for v in loss_dict.values())])
        sums = values if sums is None else sums + values
    if scaling:
        scaler.unscale_(optimizer)
    gn = torch.nn.utils.clip_grad_norm_(params, clip_grad if clip_grad > 0 else float("inf"))
    values = torch.cat([sums / n if n > 1 else sums, gn.detach().float().reshape(1)])
    share = distributed and not scaling  # with the scaler every rank skips together: DDP averaged the gradients
    if share:  # every rank must stop together: share the "some value is not finite" flag
        bad = (~torch.isfinite(values[:-1])).any().float().reshape(1)
        dist.all_reduce(bad)
        values = torch.cat([values, bad])
    values = values.tolist()  # the step's one host sync
    bad_anywhere = share and values.pop() > 0
    total, gn = values[0], values[-1]
    parts = dict(zip(loss_dict, values[1:-1]))
    if scaling:
        scaler.step(optimizer)  # skipped by the scaler when a gradient is inf/NaN
        scaler.update()
        return StepResult(total, parts, gn, not math.isfinite(gn))
    bad_here = not all(math.isfinite(v) for v in values[:-1])
    if bad_here or bad_anywhere:
        detail = ", ".join(f"{k}={v:.6g}" for k, v in parts.items())
        raise NonFiniteLossError(f"non-finite loss: loss={total:.6g} ({detail or 'no loss parts'})"
                                 f"{'' if bad_here else ' on some rank'}")
    if not math.isfinite(gn):
        raise NonFiniteLossError(f"non-finite gradient norm: grad_norm={gn}, loss={total:.6g}")
    optimizer.step()
    return StepResult(total, parts, gn, False)


# --------------------------------------------------------------------------------------------- a run
@dataclass
class TrainSettings:
    """What a training run is told: the flags of :func:`lib.cli.add_training_args`, same names (see their
    ``--help``), whose defaults are these (the scripts change a few: lr, clip_grad, ...);
    :func:`lib.cli.train_settings` builds it from the parsed flags. ``record`` is every flag of the script (its
    model flags too), as saved in checkpoints and meta.json."""

    prepared_dir: Path
    out_dir: Path
    workers: int = 4
    max_steps_per_epoch: int = 0
    max_val_images: int = 0
    epochs: int = 12
    batch_size: int = 4
    lr: float = 1e-4
    optimizer: str = "adamw"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    warmup_steps: int = 500
    schedule: str = "cosine"
    lr_milestones: str = ""
    lr_gamma: float = 0.1
    clip_grad: float = 0.0
    accumulate: int = 1
    lr_scale: str = "none"
    lr_base_batch: int = 16
    ema_decay: float = 0.0
    amp: str = "auto"
    channels_last: bool = False
    device: str = "auto"
    seed: int = 0
    threads: int = 0
    sync_bn: bool = False
    ddp_find_unused: bool = False
    aspect_ratio_group_factor: int = 0
    tensorboard: bool = True
    log_every: int = 20
    val_every: int = 1
    val_score_thresh: float = 0.5
    checkpoint_every_steps: int = 0
    stop_after_epoch: int = 0
    resume: str = ""
    keep_epochs: list = field(default_factory=list)
    attr_refit_steps: int | None = None  # None: lib.attribute_refit.DEFAULT_STEPS with an attribute head, else 0
    scale_range: list | None = None
    no_hflip: bool = False
    color_jitter: float = 0.2
    lsj: int = 0
    copy_paste: float = 0.0
    mask_categories: str | None = None
    weights_backbone: str | None = None
    weights: str | None = None
    record: dict = field(default_factory=dict)


@dataclass
class StepCounters:
    """What :func:`train_one_epoch` counts across epochs (saved in checkpoints): optimizer steps so far, fp16
    updates the gradient scaler skipped so far, and the skips in a row up to the last step."""

    global_step: int = 0
    skipped_steps: int = 0
    consecutive_skips: int = 0


@dataclass
class StepSettings:
    """How :func:`train_one_epoch` steps: ``steps_per_epoch`` optimizer steps of ``accumulate`` batches each,
    gradients clipped to ``clip_grad`` (0 = not), a train record every ``log_every`` steps (0 = none), a mid-epoch
    checkpoint every ``checkpoint_every_steps`` (0 = none); ``world_size`` processes (``distributed``: under DDP).
    ``epochs`` (of the run) is shown by the progress bar; ``checkpoint_path`` is named by the errors that stop the
    run (it keeps the last good state)."""

    steps_per_epoch: int
    epochs: int = 1
    accumulate: int = 1
    clip_grad: float = 0.0
    log_every: int = 0
    checkpoint_every_steps: int = 0
    world_size: int = 1
    distributed: bool = False
    checkpoint_path: Path = Path("checkpoint.pth")


@dataclass
class Run:
    """The state of one training run, outside the epoch loop: what :func:`run` hands to
    :func:`train_one_epoch` and what the epoch end (:func:`end_epoch`) works on.

    ``model`` is the bare model (saved, validated); ``net`` is what trains (``model`` or its DDP wrapper).
    ``resume``: the checkpoint being resumed (weights already loaded; its RNG states and epoch sums are
    used by the first epoch), else None. ``counters``: steps and fp16 skips so far.
    """

    arch: str
    stage: str
    settings: TrainSettings
    env: dict
    dtype: object
    out_dir: Path
    label_names: list
    train_ds: object
    val_ds: object
    loader: object
    steps_per_epoch: int
    config: dict
    model: torch.nn.Module
    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    lr_scheduler: object
    init_report: dict | None
    resume: dict | None
    run_args: dict
    data_summary: dict
    scaler: torch.amp.GradScaler | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None
    optimization: dict = field(default_factory=dict)
    monitor: TrainMonitor | None = None
    counters: StepCounters = field(default_factory=StepCounters)
    start_epoch: int = 0
    start_iter: int = 0
    best_score: float = -math.inf
    last_metrics: dict = field(default_factory=dict)
    val_history: list = field(default_factory=list)
    epochs_done: int = 0
    attr_refit: dict | None = None  # what lib.attribute_refit did to best.pth (--attr-refit-steps)
    t_start: float = field(default_factory=time.time)

    @property
    def main(self) -> bool:
        return self.env["rank"] == 0

    @property
    def device(self) -> torch.device:
        return self.env["device"]

    @property
    def eval_model(self) -> torch.nn.Module:
        """What validation scores and best.pth is chosen by: the EMA of the weights when kept, else the model."""
        return self.ema.module if self.ema is not None else self.model

    def path(self, name: str) -> Path:
        return self.out_dir / name


def run(arch: str, model_overrides: dict, s: TrainSettings, stage: str | None = None) -> dict:
    """Train ``arch`` (a ``lib.models.ARCHS`` name) as the settings ``s`` say.

    ``model_overrides``: config keys from the script's model flags (None values are ignored, so the
    model's defaults apply). Returns the final summary (also in ``out_dir/meta.json``). Rank 0 holds the
    lock of ``out_dir`` (:func:`lib.files.lock_dir`) until it returns.
    """
    if not s.resume:  # a resumed run's head is in its checkpoint's config: checked once start_run read it
        refit_steps(s.attr_refit_steps, bool(model_overrides.get("attr_head")))
    with contextlib.ExitStack() as held:
        state = start_run(arch, model_overrides, s, stage or f"train_{arch}", held)
        steps = refit_steps(s.attr_refit_steps, bool(state.config.get("attr_head")))  # before anything trains
        last_epoch = s.epochs - 1
        if s.stop_after_epoch:
            last_epoch = min(last_epoch, s.stop_after_epoch - 1)
        if state.main:
            write_meta(state, "running")
        for epoch in range(state.start_epoch, last_epoch + 1):
            metric_logger = _train_epoch(state, epoch)
            end_epoch(state, epoch, metric_logger)
        done = state.epochs_done >= s.epochs
        runtime.teardown_distributed(state.env["distributed"], barrier=True)
        if not state.main:
            return {}
        if steps and done:  # rank 0 alone, the other ranks released: no collective waits on it
            refit_attribute_head(state, steps)
        return write_meta(state, "done" if done else "stopped")


def _train_epoch(run: Run, epoch: int) -> MetricLogger:
    """Epoch ``epoch`` of ``run``: its generators and the loader's order, then :func:`train_one_epoch`. The
    resumed epoch starts at its checkpoint's step, with the generators and loss sums saved there."""
    s, env = run.settings, run.env
    start_iter = run.start_iter if epoch == run.start_epoch else 0
    resumed = run.resume if start_iter else None
    if resumed is not None and resumed.get("rng"):
        per_rank = resumed.get("rng_ranks") or []
        runtime.set_rng_state(per_rank[env["rank"]] if len(per_rank) == env["world_size"] else resumed["rng"])
    else:
        runtime.seed_everything(s.seed + 1000 * (epoch + 1) + env["rank"])
    set_epoch(run.loader, epoch, start_iter * s.accumulate)
    run.loader.generator.manual_seed(s.seed + epoch)
    cfg = StepSettings(steps_per_epoch=run.steps_per_epoch, epochs=s.epochs, accumulate=s.accumulate,
                       clip_grad=s.clip_grad, log_every=s.log_every, checkpoint_every_steps=s.checkpoint_every_steps,
                       world_size=env["world_size"], distributed=env["distributed"],
                       checkpoint_path=run.path("checkpoint.pth"))
    return train_one_epoch(run.net, run.optimizer, run.lr_scheduler, run.loader, run.device, epoch, cfg, run.counters,
                           dtype=run.dtype, scaler=run.scaler, ema=run.ema, start_iter=start_iter,
                           metric_logger=MetricLogger(resumed.get("epoch_sums") if resumed is not None else None),
                           log=partial(_log_train, run) if run.main else None,
                           save_mid_epoch=partial(_save_mid_epoch, run, epoch))


def _log_train(run: Run, rec: dict) -> None:
    """A ``{"kind": "train", ...}`` record into metrics.jsonl and TensorBoard (rank 0)."""
    lfiles.append_jsonl(run.path("metrics.jsonl"), rec)
    run.monitor.log_train(rec["step"], rec)


def start_run(arch: str, model_overrides: dict, s: TrainSettings, stage: str, held: contextlib.ExitStack) -> Run:
    """Devices, output folder, data, model config, starting or resumed weights, optimizer: a :class:`Run`."""
    env = runtime.setup_distributed(s.device)
    device, main = env["device"], env["rank"] == 0
    if device.type == "cpu" and s.threads > 0:
        torch.set_num_threads(s.threads)
    runtime.set_backend_flags()
    out_dir = Path(s.out_dir)
    if main:
        lfiles.claim_dir(out_dir, "training run", held)
    label_names, meta = _prepared_labels(s.prepared_dir)
    train_ds, val_ds, loader = _datasets(s, env["distributed"])
    if s.accumulate < 1 or len(loader) < s.accumulate:
        raise ValueError(f"--accumulate {s.accumulate}: needs 1 to {len(loader)} (the batches of an epoch per "
                         f"process)")
    steps_per_epoch = len(loader) // s.accumulate  # optimizer steps; the last batches short of a step are left
    if s.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, s.max_steps_per_epoch)

    config, overrides = _model_config(arch, model_overrides, s, len(label_names))
    resume = _read_resume(arch, s, out_dir)
    if resume is not None:
        saved = dict(resume["config"])  # the run continues with the model it started with
        changed = sorted(k for k in set(saved) | set(config) if saved.get(k) != config.get(k))
        if changed and main:
            print(f"resume: keeping the checkpoint's model config; ignoring new values of {changed}")
        config, init_plan = saved, None
    else:  # a resumed run has its weights in the checkpoint
        config, init_plan = lweights.plan_init(arch, config, overrides, s.weights, s.weights_backbone)

    runtime.seed_everything(s.seed)
    model = lmodels.build_model(config)
    if resume is None and config.get("attr_prior"):  # before the weights a file may hold for the head
        _start_attribute_prior(model, train_ds, config["num_classes"], s.workers, main)
    init_report = resume.get("init") if resume is not None else None
    if init_plan is not None:
        init_report = lweights.apply_init(model, arch, config, init_plan)
        del init_plan
        if main:
            print(lweights.describe(init_report))
    model = model.to(device)
    if s.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimization = optimization_summary(s.lr, s.batch_size, s.accumulate, env["world_size"], s.lr_scale,
                                        s.lr_base_batch, s.ema_decay)
    optimizer = build_optimizer(model, s.optimizer, optimization["lr"], s.weight_decay, s.momentum, device)
    lr_scheduler = build_lr_scheduler(optimizer, s.schedule, s.epochs, steps_per_epoch, s.warmup_steps,
                                      s.lr_milestones, s.lr_gamma)
    dtype = runtime.amp_dtype(s.amp, device)
    run = Run(arch=arch, stage=stage, settings=s, env=env, dtype=dtype, scaler=runtime.make_grad_scaler(dtype, device),
              out_dir=out_dir, label_names=label_names, train_ds=train_ds, val_ds=val_ds, loader=loader,
              steps_per_epoch=steps_per_epoch, config=config, model=model, net=model, optimizer=optimizer,
              optimization=optimization, ema=make_ema(model, s.ema_decay),
              lr_scheduler=lr_scheduler, init_report=init_report, resume=resume,
              run_args=s.record,
              data_summary={"prepared_dir": str(s.prepared_dir), "num_train": len(train_ds),
                            "num_val": len(val_ds), "long_side": meta.get("long_side"),
                            "num_categories": len(label_names), "prepared_counts": meta.get("counts")})
    if resume is not None:
        _restore(run)
    run.monitor = held.enter_context(TrainMonitor(tensorboard_dir(out_dir), enabled=main and s.tensorboard,
                                                  resume_step=run.counters.global_step))
    _wrap_distributed(run)
    return run


def _start_attribute_prior(model: torch.nn.Module, train_ds, num_classes: int, workers: int, main: bool) -> None:
    """The attribute head's per-category logits started at the train split's attribute frequencies."""
    counts, totals = attribute_counts(train_ds, num_classes, workers)
    model.roi_heads.attr_predictor.init_prior(counts, totals)
    if main:
        print(f"attribute prior: {int(totals.sum())} training instances of {int((totals > 0).sum())} categories")


def _prepared_labels(prepared_dir) -> tuple[list[str], dict]:
    """The category names of a prepared set, and its meta.json."""
    meta = lprepared.load_meta(prepared_dir)
    cats = meta.get("labels", {}).get("categories")
    if not cats:
        raise ValueError(f"{Path(prepared_dir) / 'meta.json'}: no labels.categories (rerun 01_prepare_data.py)")
    return [c["name"] if isinstance(c, dict) else str(c) for c in cats], meta


def _datasets(s: TrainSettings, distributed: bool):
    """Train and val datasets of the prepared set and the training loader.

    Multi-scale training happens in the model's own resize (config train_scale_range): scaling the image
    here would be undone by it. Large-scale jitter (``--lsj SIZE``) is the exception: it hands the model
    SIZE x SIZE images, which a model resizing to SIZE keeps. ``--copy-paste`` pastes in the loader's collate.
    """
    if s.lsj < 0:
        raise ValueError(f"--lsj: a size >= 1, or 0 = off, got {s.lsj}")
    if s.lsj and s.scale_range is not None:
        raise ValueError("--lsj and --scale-range are alternative scale augmentations: give one of them")
    if not 0.0 <= s.copy_paste <= 1.0:
        raise ValueError(f"--copy-paste: a probability in [0, 1], got {s.copy_paste}")
    if s.copy_paste and s.batch_size < 2:
        raise ValueError("--copy-paste pastes instances from another image of the batch: it needs --batch-size >= 2")
    train_ds = PreparedDataset(s.prepared_dir, "train", build_transforms(
        True, hflip=0.0 if s.no_hflip else 0.5, color_jitter=s.color_jitter, lsj_size=s.lsj))
    if len(train_ds) == 0:
        raise ValueError(f"{s.prepared_dir}: the train split is empty")
    val_ds = PreparedDataset(s.prepared_dir, "val", build_transforms(False))
    if s.max_val_images and len(val_ds) > s.max_val_images:
        val_ds = PreparedDataset(s.prepared_dir, "val", build_transforms(False),
                              image_ids=val_ds.image_ids[: s.max_val_images])
    loader = make_loader(train_ds, s.batch_size, shuffle=True, workers=s.workers, distributed=distributed,
                         seed=s.seed, aspect_ratio_group_factor=s.aspect_ratio_group_factor,
                         copy_paste=s.copy_paste)
    return train_ds, val_ds, loader


def _model_config(arch: str, model_overrides: dict, s: TrainSettings, n_categories: int) -> tuple[dict, dict]:
    """The model config from the script's overrides and the common flags, and the keys the flags set."""
    from .models.common import train_scale_range

    overrides = {k: v for k, v in (model_overrides or {}).items() if v is not None}
    overrides["num_classes"] = n_categories + 1
    if s.mask_categories:
        overrides["mask_categories"] = list(llabels.resolve_category_spec(s.mask_categories, n_categories))
    if s.lsj:  # the model's own resize must keep the SIZE x SIZE crops LSJ hands it
        clash = {k: overrides[k] for k in ("min_size", "max_size") if k in overrides and overrides[k] != s.lsj}
        if clash:
            raise ValueError(f"--lsj {s.lsj}: the model would resize its {s.lsj} x {s.lsj} crops to {clash} "
                             f"(--min-size / --max-size, 02's --image-size): leave them out (--lsj sets them) or "
                             f"give {s.lsj}")
        overrides.update(min_size=s.lsj, max_size=s.lsj)
    config = lmodels.default_config(arch, **overrides)
    if s.scale_range is not None:
        overrides["train_scale_range"] = config["train_scale_range"] = train_scale_range(s.scale_range,
                                                                                         config["min_size"])
    return config, overrides


def _read_resume(arch: str, s: TrainSettings, out_dir: Path) -> dict | None:
    """The checkpoint named by ``--resume`` (``auto``: ``checkpoint.pth`` if there), checked for ``arch``."""
    from .checkpoint import read_checkpoint

    if not s.resume:
        return None
    path = out_dir / "checkpoint.pth" if s.resume == "auto" else Path(s.resume)
    if s.resume == "auto" and not path.exists():
        return None
    ckpt = read_checkpoint(path)
    if ckpt["config"].get("arch") != arch:
        raise ValueError(f"{path}: checkpoint is for arch {ckpt['config'].get('arch')!r}, not {arch!r}")
    ckpt["path"] = str(path)
    return ckpt


def _restore(run: Run) -> None:
    """Weights, optimizer, schedule and counters from ``run.resume``; drops log records made after it."""
    ck = run.resume
    run.model.load_state_dict(ck["model"])
    if ck.get("optimizer") is not None:
        run.optimizer.load_state_dict(ck["optimizer"])
    saved = ck.get("lr_scheduler", ck.get("scheduler"))  # "scheduler": checkpoints before the key's rename
    if saved is not None:
        run.lr_scheduler.load_state_dict(saved)
    if ck.get("scaler") and run.scaler.is_enabled():  # fp16: the loss scale and its growth counter
        run.scaler.load_state_dict(ck["scaler"])
    if run.ema is not None and ck.get("model_ema") is not None:
        run.ema.load_state_dict(ck["model_ema"])
    elif run.ema is not None:
        run.ema.update_parameters(run.model)  # resumed without an average (EMA turned on now): start it here
    run.counters.skipped_steps = int(ck.get("skipped_steps", 0))
    run.counters.consecutive_skips = int(ck.get("consecutive_skips", 0))
    run.start_epoch = int(ck.get("epoch", 0))
    run.start_iter = int(ck.get("iter_in_epoch", 0))
    run.counters.global_step = int(ck.get("global_step", 0))
    run.best_score = float(ck.get("best_score", -math.inf))
    run.last_metrics = dict(ck.get("metrics") or {})
    if run.start_iter >= run.steps_per_epoch:
        run.start_epoch, run.start_iter = run.start_epoch + 1, 0
    run.epochs_done = run.start_epoch
    if run.main:
        _drop_records_after(run.path("metrics.jsonl"), run.counters.global_step)  # logged after it: redone
        lfiles.append_jsonl(run.path("metrics.jsonl"), {"kind": "resume", "from": ck["path"], "epoch": run.start_epoch,
                                                        "iter_in_epoch": run.start_iter,
                                                        "step": run.counters.global_step})
        if run.path("val_scores.json").exists():
            run.val_history = [h for h in lfiles.read_json(run.path("val_scores.json")).get("history", [])
                               if h.get("epoch", 0) <= run.start_epoch]  # later epochs are redone
    del ck["model"], ck["optimizer"]


def _drop_records_after(log_path: Path, step: int) -> None:
    """Rewrite a metrics log without the records past ``step`` (atomically); torn lines are dropped too."""
    if not log_path.exists():
        return
    recs = lfiles.read_jsonl(log_path)
    keep = [r for r in recs if not (isinstance(r.get("step"), (int, float)) and r["step"] > step
                                    and r.get("kind") in ("train", "epoch"))]
    text = "".join(lfiles.to_json(r, indent=None) + "\n" for r in keep)
    if text != log_path.read_text(encoding="utf-8", errors="replace"):
        lfiles.atomic_write_text(log_path, text)


def _wrap_distributed(run: Run) -> None:
    """SyncBatchNorm / DDP under torchrun."""
    s, env = run.settings, run.env
    if env["distributed"] and s.sync_bn:
        if run.device.type == "cuda":
            run.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(run.model)
            run.net = run.model
        elif run.main:
            print("--sync-bn needs CUDA; keeping per-process BatchNorm")
    if env["distributed"]:
        run.net = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[run.device.index] if run.device.type == "cuda" else None,
            find_unused_parameters=s.ddp_find_unused)


# --------------------------------------------------------------------------------------------- an epoch
def train_one_epoch(net: torch.nn.Module, optimizer: torch.optim.Optimizer, lr_scheduler, data_loader,
                    device: torch.device, epoch: int, cfg: StepSettings, counters: StepCounters, dtype=None,
                    scaler: torch.amp.GradScaler | None = None, ema: torch.optim.swa_utils.AveragedModel | None = None,
                    start_iter: int = 0, metric_logger: MetricLogger | None = None,
                    log: Callable[[dict], None] | None = None,
                    save_mid_epoch: Callable[[int, dict], None] | None = None) -> MetricLogger:
    """Train epoch ``epoch`` (0-based) from its step ``start_iter``: ``cfg.steps_per_epoch`` optimizer steps
    (:func:`train_step`) of ``cfg.accumulate`` batches of ``data_loader`` each, each followed by ``lr_scheduler``,
    the moving average ``ema`` (None: none kept) and ``counters``.

    ``net``: the model (or its DDP wrapper), trained under autocast to ``dtype`` (None: fp32) with fp16's gradient
    ``scaler``. ``metric_logger``: the epoch's meters so far (a resumed epoch's), None: a new one. ``log`` takes a
    ``{"kind": "train", ...}`` record every ``cfg.log_every`` steps and at the epoch's last step (None on ranks > 0:
    no records, no progress bar); ``save_mid_epoch(steps done in the epoch, metric_logger.state())`` runs every
    ``cfg.checkpoint_every_steps`` steps but the epoch's last, on every rank. Returns the epoch's stopped
    :class:`MetricLogger`.
    """
    net.train()
    model = net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net
    params = [p for p in model.parameters() if p.requires_grad]
    metric_logger = MetricLogger() if metric_logger is None else metric_logger
    bar = tqdm(total=cfg.steps_per_epoch, initial=start_iter, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="step",
               disable=log is None, dynamic_ncols=True)
    it, group = start_iter, []
    for images, targets in metric_logger.timed(checked_batches(data_loader)):  # a dead worker: error naming the image
        if it >= cfg.steps_per_epoch:
            break
        group.append(_to_device(images, targets, device))
        if len(group) < cfg.accumulate:  # --accumulate: this step's micro-batches
            continue
        try:
            step = train_step(net, group, optimizer, params, cfg.clip_grad, device, dtype, cfg.distributed, scaler)
        except NonFiniteLossError as e:
            what, _, detail = str(e).partition(": ")
            raise NonFiniteLossError(
                f"{what} at epoch {epoch + 1}, step {it + 1} of the epoch (global step {counters.global_step + 1}): "
                f"{detail}; stopped without saving - {cfg.checkpoint_path} keeps the last good state") from None
        if ema is not None and not step.skipped:
            ema.update_parameters(model)
        n_images, group = sum(len(ims) for ims, _ in group) * cfg.world_size, []
        _count_skip(counters, step.skipped, epoch, it, scaler, cfg.checkpoint_path)
        step_scheduler(lr_scheduler)
        counters.global_step += 1
        it += 1
        metric_logger.update(step.loss, step.parts, n_images)
        if log is not None:
            lr = optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{step.loss:.3f}", lr=f"{lr:.2e}", **({"skipped": counters.skipped_steps}
                                                                        if counters.skipped_steps else {}))
            bar.update(1)
            if cfg.log_every and (counters.global_step % cfg.log_every == 0 or it == cfg.steps_per_epoch):
                log(_train_record(epoch, it, counters, step, lr, metric_logger, device))
        if save_mid_epoch is not None and cfg.checkpoint_every_steps \
                and counters.global_step % cfg.checkpoint_every_steps == 0 and it < cfg.steps_per_epoch:
            save_mid_epoch(it, metric_logger.state())
    bar.close()
    metric_logger.stop()
    return metric_logger


def _train_record(epoch: int, it: int, counters: StepCounters, step: StepResult, lr: float,
                  metric_logger: MetricLogger, device: torch.device) -> dict:
    """The ``{"kind": "train", ...}`` record of the step just taken (step ``it`` of ``epoch``)."""
    rec = {"kind": "train", "epoch": epoch + 1, "iter": it, "step": counters.global_step,
           "loss": _finite_or_none(step.loss)}  # an fp16 step the scaler skipped: null, not Infinity
    rec.update({k if k.startswith("loss") else f"loss_{k}": _finite_or_none(v) for k, v in step.parts.items()})
    rec.update({"lr": lr, "grad_norm": _finite_or_none(step.grad_norm), **metric_logger.step_meters(),
                "skipped_steps": counters.skipped_steps, **_device_memory(device)})
    return rec


MAX_CONSECUTIVE_SKIPS = 25  # fp16 steps in a row without an update: the scale fell from 2**16 to below 2**-8


def _count_skip(counters: StepCounters, skipped: bool, epoch: int, it: int, scaler, checkpoint_path) -> None:
    """Count a step fp16's gradient scaler skipped; a long run of them (the loss itself is not finite, not an
    overflow the scale can cure) stops training like a non-finite fp32 loss."""
    counters.consecutive_skips = counters.consecutive_skips + 1 if skipped else 0
    if not skipped:
        return
    counters.skipped_steps += 1
    if counters.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
        raise NonFiniteLossError(
            f"non-finite gradients in {counters.consecutive_skips} fp16 steps in a row up to epoch {epoch + 1}, step "
            f"{it + 1} (loss scale now {scaler.get_scale():.3g}); stopped without saving - "
            f"{checkpoint_path} keeps the last good state (try --amp bf16 or off, a lower --lr)")


def _device_memory(device: torch.device) -> dict:
    """``{"max_mem_gb": peak allocated GiB}`` on CUDA, ``{}`` elsewhere."""
    if device.type != "cuda":
        return {}
    return {"max_mem_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 3)}


def _save_mid_epoch(run: Run, epoch: int, it: int, epoch_sums: dict) -> None:
    """checkpoint.pth at step ``it`` of ``epoch`` with the epoch's sums and every rank's RNG states."""
    check_params_finite(run, f"at global step {run.counters.global_step}")
    rng_ranks = runtime.gather_rng_states(run.env["world_size"]) if run.env["distributed"] else None
    if run.main:
        ck = make_checkpoint(run, epoch, it)
        ck["epoch_sums"] = epoch_sums
        if rng_ranks is not None:
            ck["rng_ranks"] = rng_ranks  # each rank resumes with its own generator states
        save_checkpoint(run.path("checkpoint.pth"), ck)
    if run.env["distributed"]:
        dist.barrier()


OVERLAY_IMAGES = 4  # validation images drawn into TensorBoard each validated epoch


def end_epoch(run: Run, epoch: int, metric_logger: MetricLogger) -> None:
    """The epoch's end: validation on every rank (each over its shard), then on rank 0 the epoch record (from
    the epoch's ``metric_logger``: steps, time, images/s, mean losses), TensorBoard, best.pth /
    model_<epoch>.pth / checkpoint.pth, curves, meta."""
    s = run.settings
    check_params_finite(run, f"after epoch {epoch + 1}")
    run.epochs_done = epoch + 1
    do_val = len(run.val_ds) > 0 and s.val_every > 0 and ((epoch + 1) % s.val_every == 0 or epoch == s.epochs - 1)
    t_val = time.time()
    res = evaluate(run.eval_model, run.val_ds, run.device, run.dtype, batch_size=s.batch_size,
                   score_thresh=s.val_score_thresh, progress=run.main, workers=s.workers,
                   distributed=run.env["distributed"], examples=OVERLAY_IMAGES) if do_val else None
    if run.main:
        rec = {"kind": "epoch", "epoch": epoch + 1, "step": run.counters.global_step, **metric_logger.epoch_meters(),
               "lr": run.optimizer.param_groups[0]["lr"]}
        rec.update(_device_memory(run.device))
        if run.scaler.is_enabled():
            rec["skipped_steps"] = run.counters.skipped_steps
        for k, v in metric_logger.means().items():
            rec[f"train_{k}" if k == "loss" or k.startswith("loss") else f"train_loss_{k}"] = v
        improved = record_validation(run, epoch, rec, res, time.time() - t_val) if res is not None else False
        run.last_metrics = lfiles.json_safe(rec)
        # Order matters when the process is killed in between: the log record and best.pth come before
        # checkpoint.pth, so a resume from the previous checkpoint redoes this epoch (dropping its record)
        # and never continues from a state whose record or best.pth is missing.
        lfiles.append_jsonl(run.path("metrics.jsonl"), rec)
        run.monitor.log_epoch(run.counters.global_step, rec)
        if res is not None:
            run.monitor.log_overlays(run.counters.global_step, [im for im, _ in res["examples"]],
                                     [p for _, p in res["examples"]], class_names=run.label_names)
        ck = make_checkpoint(run, epoch + 1, 0)
        if improved:
            save_checkpoint(run.path("best.pth"), ck)
        if epoch + 1 in (s.keep_epochs or ()):
            save_checkpoint(run.path(f"model_{epoch + 1}.pth"), ck)
        save_checkpoint(run.path("checkpoint.pth"), ck)
        plot_curves(run.path("metrics.jsonl"), run.path("curves.png"), title=f"{run.stage} ({run.arch})")
        write_meta(run, "running")
    if run.env["distributed"]:
        dist.barrier()


def record_validation(run: Run, epoch: int, rec: dict, res: dict, seconds: float) -> bool:
    """:func:`evaluate`'s scores into ``rec`` and ``val_scores.json``; True when the Kaggle metric improved."""
    coco = res["coco"] or {}
    rec.update({"val_kaggle": res["kaggle"], "val_kaggle_all": res["kaggle_all"],
                "val_AP": _finite_or_none(coco.get("AP")), "val_AP50": _finite_or_none(coco.get("AP50")),
                "val_AP75": _finite_or_none(coco.get("AP75")), "val_images": res["num_images"],
                "val_time": round(seconds, 2)})
    if res["attr"] is not None:
        rec.update({"val_attr_micro_f1": _finite_or_none(res["attr"].get("micro_f1")),
                    "val_attr_macro_f1": _finite_or_none(res["attr"].get("macro_f1"))})
    score = res["kaggle"]
    improved = math.isfinite(score) and score > run.best_score
    if improved:
        run.best_score = score
    entry = {"epoch": epoch + 1, "step": run.counters.global_step, **{k: v for k, v in res.items() if k != "examples"}}
    run.val_history.append({"epoch": epoch + 1, "kaggle": res["kaggle"], "AP": rec["val_AP"]})
    path = run.path("val_scores.json")
    old = lfiles.read_json(path) if path.exists() else {}
    vs = {"latest": entry, "history": run.val_history, "best": entry if improved else old.get("best")}
    lfiles.atomic_write_json(path, lfiles.json_safe(vs))
    return improved


# --------------------------------------------------------------------------------------------- saving
def make_checkpoint(run: Run, epoch_done: int, iter_in_epoch: int) -> dict:
    """The checkpoint dict of ``run`` after ``iter_in_epoch`` steps of epoch ``epoch_done`` (0 at epoch ends):
    the keys of ``lib.checkpoint.CHECKPOINT_KEYS``, as :mod:`lib.checkpoint`'s docstring describes them
    (:func:`_save_mid_epoch` adds the ``MID_EPOCH_KEYS``; :func:`lib.checkpoint.save_checkpoint` the ``digest``)."""
    return {"format": CHECKPOINT_FORMAT, "stage": run.stage, "arch": run.arch, "config": run.config,
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "lr_scheduler": run.lr_scheduler.state_dict(),
            "scaler": run.scaler.state_dict() if run.scaler.is_enabled() else None,
            "model_ema": run.ema.state_dict() if run.ema is not None else None,
            "skipped_steps": run.counters.skipped_steps, "consecutive_skips": run.counters.consecutive_skips,
            "epoch": epoch_done, "iter_in_epoch": iter_in_epoch, "global_step": run.counters.global_step,
            "rng": runtime.rng_state(),
            "args": run.run_args, "labels": run.label_names, "best_score": run.best_score,
            "metrics": run.last_metrics, "world_size": run.env["world_size"], "init": run.init_report}


def check_params_finite(run: Run, where: str) -> None:
    """Raise :class:`NonFiniteLossError` naming the first non-finite weights (nothing is saved then)."""
    bad = [n for n, p in run.model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise NonFiniteLossError(f"non-finite weights {where} ({', '.join(bad[:5])}); not saving - "
                                 f"{run.path('checkpoint.pth')} keeps the last good state")


def refit_attribute_head(run: Run, steps: int) -> None:
    """After the last epoch: the attribute head of ``best.pth`` (``checkpoint.pth`` without one) refit alone on
    the frozen model's features at the train split's ground-truth boxes, ``steps`` steps (:mod:`lib.attribute_refit`,
    rank 0)."""
    path = run.path("best.pth") if run.path("best.pth").exists() else run.path("checkpoint.pth")
    t0 = time.time()
    run.attr_refit = {"checkpoint": str(path), **refit_checkpoint(path, run.settings.prepared_dir, steps,
                                                                    run.device, run.settings.workers)}
    print(f"attribute head refit on {run.attr_refit['rows']} training instances, {run.attr_refit['steps']} steps "
          f"({time.time() - t0:.0f} s) -> {path}")


def write_meta(run: Run, status: str) -> dict:
    """meta.json of the run (atomically); returns it."""
    best = run.path("best.pth")
    kept = {str(e): str(run.path(f"model_{e}.pth")) for e in sorted(run.settings.keep_epochs or ())
            if run.path(f"model_{e}.pth").exists()}
    m = {"stage": run.stage, "arch": run.arch, "status": status, "config": run.config, "init": run.init_report,
         "args": run.run_args, "data": run.data_summary, "optimization": run.optimization,
         "world_size": run.env["world_size"],
         "device": str(run.device), "amp": str(run.dtype).replace("torch.", "") if run.dtype else "off",
         "epochs_done": run.epochs_done, "global_step": run.counters.global_step,
         "best_val_kaggle": run.best_score if math.isfinite(run.best_score) else None,
         "final_metrics": run.last_metrics,
         "checkpoints": {"last": str(run.path("checkpoint.pth")), "best": str(best) if best.exists() else None,
                         "epochs": kept},
         "files": {"metrics": str(run.path("metrics.jsonl")), "curves": str(run.path("curves.png")),
                   "val_scores": str(run.path("val_scores.json")),
                   "tensorboard": str(tensorboard_dir(run.out_dir)) if run.settings.tensorboard else None},
         "attr_refit": run.attr_refit, "time_s": round(time.time() - run.t_start, 1)}
    m = lfiles.json_safe(m)
    lfiles.atomic_write_json(run.path("meta.json"), m)
    return m


__all__ = ["Run", "StepCounters", "StepSettings", "run", "start_run", "train_one_epoch", "end_epoch",
           "record_validation", "evaluate", "shard_indices", "train_step", "StepResult", "make_checkpoint",
           "write_meta", "NonFiniteLossError",
           "build_optimizer"]  # lib.optim's, still imported from here by bench/train_bench.py and bench/input_bench.py
