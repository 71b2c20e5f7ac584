"""Run start-up shared by the stages that run models (02/03/04 training, 05 prediction, the benchmarks); the
output folder is claimed by :func:`lib.files.claim_dir` (01 and 06's writers use it too, without torch).

- :func:`setup_distributed`: torchrun's process group (``WORLD_SIZE`` > 1) and the device of this rank;
- :func:`set_backend_flags`: cuDNN autotuning off (detectors see new shapes every step: with it on, Mask R-CNN
  trains 3-4x slower), TF32 matmuls and convolutions on;
- :func:`check_cuda_kernels` (called by :func:`setup_distributed`): stop at start, with a clear message, when this
  torch build has no kernels for the GPU (:func:`cuda_arch_problem`), not at the first kernel launch;
- :func:`amp_dtype`: the autocast dtype of ``--amp``; :func:`make_grad_scaler`: fp16's gradient scaler;
- :func:`seed_everything`, :func:`rng_state`, :func:`gather_rng_states`, :func:`set_rng_state`: the random
  generators (torch, CUDA, numpy, random) a checkpoint saves and restores.
"""
from __future__ import annotations

import datetime
import os
import random

import numpy as np
import torch
import torch.distributed as dist

AMP_CHOICES = ("auto", "bf16", "fp16", "off")


def set_backend_flags() -> None:
    """cuDNN benchmark off (shapes vary: RoI counts, image sizes), TF32 on for matmuls and convolutions."""
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def setup_distributed(device_arg: str = "auto") -> dict:
    """Init torch.distributed when launched by torchrun (``WORLD_SIZE`` > 1); pick the device.

    Returns dict(distributed, rank, world_size, local_rank, device).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device_arg == "auto" else device_arg == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda requested but CUDA is not available")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        check_cuda_kernels(device)
    else:
        device = torch.device("cpu")
    distributed = world > 1
    if distributed and not dist.is_initialized():
        # Long timeout: ranks > 0 wait at a barrier while rank 0 scores the merged validation (COCO AP) and saves.
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(hours=2),
                                **({"device_id": device} if use_cuda else {}))
    return dict(distributed=distributed, rank=rank, world_size=world, local_rank=local_rank, device=device)


def gather_counts(n: int, distributed: bool, world: int) -> list[int]:
    """Every rank's ``n`` (``[n]`` when not distributed); returns once every rank has sent its count."""
    if not distributed:
        return [n]
    counts = [None] * world
    dist.all_gather_object(counts, n)
    dist.barrier()
    return counts


def teardown_distributed(distributed: bool, barrier: bool = False) -> None:
    """End torch.distributed (after a barrier when ``barrier``); nothing when not distributed."""
    if distributed:
        if barrier:
            dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and random."""
    seed = int(seed) % 2**31
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def cuda_arch_problem(capability: tuple[int, int], arch_list: list[str], device_name: str = "this GPU",
                      torch_version: str = torch.__version__) -> str | None:
    """Why a torch build whose kernels are ``arch_list`` (``torch.cuda.get_arch_list()``: ``"sm_75"``,
    ``"compute_90"``, ...) cannot run on a GPU of compute ``capability`` ``(major, minor)``; None when it can.

    A GPU runs binary code built for its own major version and a minor version up to its own (``sm_80`` code
    runs on an 8.6 GPU), or PTX (``compute_XY``) of an older or equal capability, compiled on first use.
    An empty ``arch_list`` (a build that does not say) or one without ``sm_``/``compute_`` entries (a ROCm
    build: ``gfx90a``, ...) is taken as compatible.
    """
    major, minor = int(capability[0]), int(capability[1])
    if not arch_list or not any(a.startswith(("sm_", "compute_")) for a in arch_list):
        return None  # a build that does not say, or not NVIDIA's (ROCm lists gfx90a, ...)
    for arch in arch_list:
        kind, _, num = arch.partition("_")
        num = num.rstrip("abcdefghijklmnopqrstuvwxyz")  # sm_90a, sm_100f
        if not num.isdigit() or len(num) < 2:
            continue
        a_major, a_minor = int(num[:-1]), int(num[-1])
        if kind == "sm" and a_major == major and a_minor <= minor:
            return None
        if kind == "compute" and (a_major, a_minor) <= (major, minor):
            return None
    return (f"{device_name} has compute capability {major}.{minor} (sm_{major}{minor}), but this torch build "
            f"({torch_version}) has kernels only for {' '.join(arch_list)}. Install a torch build for this GPU "
            f"(README: 'Which torch for which GPU': builds for an older CUDA, e.g. cu126, still carry the P100's "
            f"and V100's kernels; in a Kaggle notebook use the torch the image brings) or run with --device cpu.")


def check_cuda_kernels(device: torch.device) -> None:
    """Raise RuntimeError (see :func:`cuda_arch_problem`) when torch cannot run kernels on ``device``."""
    problem = cuda_arch_problem(torch.cuda.get_device_capability(device), torch.cuda.get_arch_list(),
                                torch.cuda.get_device_name(device))
    if problem:
        raise RuntimeError(problem)


def amp_dtype(amp: str, device: torch.device):
    """torch dtype for autocast, or None for full precision.

    ``auto``: bf16 on a CUDA device with native bf16 (Ampere and newer: A100, H100, L4, RTX 30xx+); fp16 on
    older CUDA GPUs (T4, V100, P100: they only emulate bf16, slower than fp32; fp16 trains with
    :func:`make_grad_scaler`); full precision on CPU. ``bf16`` / ``fp16`` force that dtype (on CPU too: torch's
    CPU autocast runs both), ``off`` is full precision.
    """
    if amp not in AMP_CHOICES:
        raise ValueError(f"--amp {amp!r}: choose one of {AMP_CHOICES}")
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the argument: native bf16 starts at compute capability 8.0
            native = torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native else torch.float16
    return None


def make_grad_scaler(dtype, device: torch.device) -> torch.amp.GradScaler:
    """``torch.amp.GradScaler`` for ``device``, enabled for fp16 autocast only (bf16 has fp32's exponent range:
    no scaling; a disabled scaler's ``scale``/``step``/``update`` are plain pass-throughs)."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def rng_state() -> dict:
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
    }


def gather_rng_states(world: int) -> list[dict]:
    """The :func:`rng_state` of every rank (all ranks must call it), in rank order."""
    out = [None] * world
    dist.all_gather_object(out, rng_state())
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
