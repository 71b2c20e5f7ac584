"""Training checkpoints: save atomically with a content digest, read with ``weights_only=True``, rebuild.

A checkpoint is a dict of plain Python types and tensors, so ``torch.load(path, weights_only=True)`` reads it;
:func:`load_checkpoint` rebuilds the model from the saved ``config`` alone (``lib.models.build_model``: no
download, the weights come from the file). ``lib/engine.py`` (``make_checkpoint``) writes ``checkpoint.pth``
every epoch (and every ``--checkpoint-every-steps`` steps), ``best.pth`` and ``model_<epoch>.pth``.

Format ``CHECKPOINT_FORMAT`` (``"imat-train-checkpoint/2"``). The keys of every training checkpoint
(``CHECKPOINT_KEYS``):

* ``format`` (str): ``CHECKPOINT_FORMAT``;
* ``stage`` (str): the script that trained, e.g. ``"03_train_maskrcnn"``;
* ``arch`` (str): the ``lib.models`` architecture (``"unet"``, ``"maskrcnn"``, ``"deepmac"``);
* ``config`` (dict): the model config, ``config["arch"]`` included; ``lib.models.build_model(config)``
  rebuilds the model;
* ``model`` (dict[str, Tensor]): the trained weights, ``state_dict()`` of the bare model (no DDP ``module.``);
* ``optimizer`` (dict): ``optimizer.state_dict()`` (SGD or AdamW, :func:`lib.optim.build_optimizer`);
* ``lr_scheduler`` (dict; ``scheduler`` in checkpoints written before 2026-12-05): the ``LambdaLR``'s ``state_dict()`` (:func:`lib.optim.build_lr_scheduler`;
  ``last_epoch`` = optimizer steps taken, as it steps once per step);
* ``scaler`` (dict | None): fp16's ``torch.amp.GradScaler`` ``state_dict()`` (loss scale, growth tracker);
  None in fp32 and bf16, which need no scaler;
* ``model_ema`` (dict[str, Tensor] | None): the moving average of the weights (``--ema-decay``,
  :func:`lib.optim.make_ema`), an ``AveragedModel`` ``state_dict()`` (``module.<name>`` keys and
  ``n_averaged``); None when the run keeps none; :func:`ema_weights` gives it as model weights;
* ``skipped_steps`` (int): fp16 updates the gradient scaler skipped (inf/NaN gradients) so far;
* ``consecutive_skips`` (int): of them, the ones in a row up to this checkpoint (a resumed run goes on
  counting towards ``lib.engine.MAX_CONSECUTIVE_SKIPS``);
* ``epoch`` (int): epochs finished;
* ``iter_in_epoch`` (int): optimizer steps done in the next epoch (0 at an epoch's end);
* ``global_step`` (int): optimizer steps done in the whole run;
* ``rng`` (dict): the saving process's generator states, ``lib.runtime.rng_state()``: ``torch`` (uint8
  Tensor), ``cuda`` (list of uint8 Tensors, one per GPU; empty without CUDA), ``numpy`` (dict: ``keys`` int64
  Tensor (624,), ``pos``, ``has_gauss``, ``cached_gaussian``);
* ``args`` (dict): every flag of the script, resolved (``TrainSettings.record``), as in meta.json;
* ``labels`` (list[str]): the category names; category ``i`` is model label ``i + 1`` (0 = background);
* ``best_score`` (float): the best validation Kaggle metric so far (``-inf`` before any validation);
* ``metrics`` (dict): the last ``{"kind": "epoch", ...}`` record of ``metrics.jsonl`` (``{}`` before the
  first epoch's end);
* ``world_size`` (int): the processes that trained (torchrun / DDP; 1 alone);
* ``init`` (dict | None): what the run's weights started from, ``lib.weights.apply_init``'s report
  (``flag``, ``source``, ``kind``, what was loaded and left out); None when neither ``--weights`` nor
  ``--weights-backbone`` was given.

Mid-epoch checkpoints (``iter_in_epoch`` > 0) also hold (``MID_EPOCH_KEYS``):

* ``epoch_sums`` (dict): the epoch's meters so far, ``lib.monitor.MetricLogger.state()``: ``sums``
  (dict[str, float]: ``loss`` and each loss part summed over the steps with a finite loss), ``steps``,
  ``images`` (all ranks), ``finite_steps``; the resumed epoch's record then means the whole epoch;
* ``rng_ranks`` (list[dict], under DDP only): every rank's ``rng``, in rank order, so each resumes with its own.

``best.pth`` of a run with ``--attr-refit-steps`` (03 / 04) also holds (``REFIT_KEYS``):

* ``attr_refit`` (dict): the attribute head was refit alone on the frozen detector's features
  (:func:`lib.attribute_refit.refit_checkpoint`): ``steps``, ``batch``, ``lr``, ``weight_decay``, ``seed``, ``rows``.

:func:`save_checkpoint` adds ``digest`` (str): :func:`state_digest` (SHA-256 hex) of all the rest, checked by
:func:`read_checkpoint` and removed from what it returns; required from format ``/2`` on (files of format ``/1``,
or without ``format``, load without it).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from . import files as lfiles
from . import models as lmodels

CHECKPOINT_FORMAT = "imat-train-checkpoint/2"  # /2: carries a "digest", which is then required
CHECKPOINT_KEYS = ("format", "stage", "arch", "config", "model", "optimizer", "lr_scheduler", "scaler", "model_ema",
                   "skipped_steps", "consecutive_skips", "epoch", "iter_in_epoch", "global_step", "rng", "args",
                   "labels", "best_score", "metrics", "world_size", "init")  # every training checkpoint (above)
MID_EPOCH_KEYS = ("epoch_sums", "rng_ranks")  # added by mid-epoch checkpoints (rng_ranks: under DDP only)
REFIT_KEYS = ("attr_refit",)  # added to best.pth by the attribute head's refit (lib/attribute_refit.py)
_FORMATS_WITHOUT_DIGEST = (None, "imat-train-checkpoint/1")


def state_digest(obj) -> str:
    """SHA-256 of a checkpoint's content: every tensor's dtype, shape and bytes, and every other value,
    walked in a fixed order (dict keys sorted). Stored under ``"digest"`` by :func:`save_checkpoint` and
    checked by :func:`read_checkpoint`, so a corrupted or edited file is refused instead of loading wrong
    weights (``torch.load`` does not check the zip CRCs). It detects damage, not a deliberate forger."""
    h = hashlib.sha256()

    def walk(o):
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            if t.numel():
                h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(o, dict):
            h.update(f"D{len(o)};".encode())
            for k in sorted(o, key=lambda k: (type(k).__name__, str(k))):
                walk(k)
                walk(o[k])
        elif isinstance(o, (list, tuple)):
            h.update(f"{type(o).__name__[0]}{len(o)};".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}:{o!r};".encode())

    walk(obj)
    return h.hexdigest()


def save_checkpoint(path: str | Path, ckpt: dict) -> None:
    """``torch.save`` to a temporary file, then rename over ``path`` (never a half-written checkpoint).

    Adds ``"digest"`` (:func:`state_digest` of the rest). A failed write (full disk, read-only directory)
    raises ``OSError`` naming the file; the previous ``path`` is left as it was.
    """
    path = Path(path)
    ckpt = {k: v for k, v in ckpt.items() if k != "digest"}
    ckpt["digest"] = state_digest(ckpt)
    try:
        with lfiles.atomic_path(path, suffix=".pth") as tmp:
            with open(tmp, "wb") as f:  # a Python file: torch then chains the OSError of a failed write
                torch.save(ckpt, f)
                f.flush()
                os.fsync(f.fileno())
    except (OSError, RuntimeError) as e:  # torch reports a failed write as RuntimeError
        cause = e
        while cause is not None and not isinstance(cause, OSError):
            cause = cause.__cause__ or cause.__context__
        reason = f"[Errno {cause.errno}] {cause.strerror}" if cause is not None and cause.errno else str(e)[:300]
        kept = f"the previous {path.name} is kept" if path.exists() else f"no {path.name} was written"
        raise OSError(getattr(cause, "errno", None), f"cannot write checkpoint {path}: {reason} (disk full or "
                                                     f"output directory not writable?); {kept}") from e


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a training checkpoint with ``weights_only=True``; clear errors for missing/foreign files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError (truncated zip), ...
        raise ValueError(f"{path}: not a loadable training checkpoint ({type(e).__name__}: {str(e)[:300]})") from None
    return check_checkpoint(ckpt, path)


def check_checkpoint(ckpt, path: str | Path) -> dict:
    """``ckpt`` (what ``torch.load`` read from ``path``) as a training checkpoint, its digest checked and
    removed; ValueError naming ``path`` when it is not one, or was corrupted or modified."""
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: not a training checkpoint (a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in ("config", "model") if k not in ckpt]
    if missing or not isinstance(ckpt.get("config"), dict) or "arch" not in ckpt["config"]:
        raise ValueError(f"{path}: not a training checkpoint (missing {missing or ['config.arch']}; "
                         f"keys: {sorted(map(str, ckpt))[:12]})")
    if "digest" not in ckpt and ckpt.get("format") not in _FORMATS_WITHOUT_DIGEST:
        raise ValueError(f"{path}: checkpoint of format {str(ckpt.get('format'))[:40]!r} has no digest (the file "
                         f"is corrupted or was modified); not loading it")
    if "digest" in ckpt:
        stored = ckpt.pop("digest")
        if state_digest(ckpt) != stored:
            raise ValueError(f"{path}: checkpoint content does not match its digest (the file is corrupted or was "
                             f"modified); not loading it")
    return ckpt


def ema_weights(ckpt: dict) -> dict | None:
    """The model state dict of a checkpoint's moving average of the weights (``model_ema``: a
    ``torch.optim.swa_utils.AveragedModel`` state, ``module.`` keys), or None when the run kept none."""
    ema = ckpt.get("model_ema")
    if not ema:
        return None
    return {k[len("module."):]: v for k, v in ema.items() if k.startswith("module.")}


def load_checkpoint(path: str | Path, map_location="cpu", ema: bool = True) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the checkpoint's own config and load its weights: the moving average of them when
    the run kept one (``--ema-decay``; what its validation scored) and ``ema``, else the trained weights.

    Returns ``(model in eval mode, checkpoint dict)``. Raises ``ValueError`` naming the file when it is not
    a training checkpoint or its weights do not fit the config.
    """
    ckpt = read_checkpoint(path, map_location)
    model = lmodels.build_model(dict(ckpt["config"]))  # builds never download: the weights come from the file
    weights = (ema_weights(ckpt) if ema else None) or ckpt["model"]
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not match the saved config: {str(e)[:500]}") from None
    model.eval()
    return model, ckpt
