"""Training checkpoints: save atomically with a content digest, read with ``weights_only=True``, rebuild.

A checkpoint is a dict of plain Python types and tensors (see :mod:`lib.engine` for its keys), so
``torch.load(path, weights_only=True)`` reads it; :func:`load_checkpoint` rebuilds the model from the saved
``config`` alone (``lib.models.build_model``: no download, the weights come from the file).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from . import io as lio
from . import models as lmodels

CHECKPOINT_FORMAT = "imat-train-checkpoint/2"  # /2: carries a "digest", which is then required
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
        with lio.atomic_path(path, suffix=".pth") as tmp:
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
