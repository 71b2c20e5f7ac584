"""Run start-up shared by the stages that run models (02/03/04 training, 05 prediction, the benchmarks); the
output folder is claimed by :func:`lib.io.claim_dir` (01 and 06's writers use it too, without torch).

- :func:`setup_distributed`: torchrun's process group (``WORLD_SIZE`` > 1) and the device of this rank;
- :func:`set_backend_flags`: cuDNN autotuning off (detectors see new shapes every step: with it on, Mask R-CNN
  trains 3-4x slower), TF32 matmuls and convolutions on;
- :func:`amp_dtype`: the autocast dtype of ``--amp``;
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
    else:
        device = torch.device("cpu")
    distributed = world > 1
    if distributed and not dist.is_initialized():
        # Long timeout: ranks > 0 wait at a barrier while rank 0 validates on the whole val split.
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


def amp_dtype(amp: str, device: torch.device):
    """torch dtype for autocast, or None for full precision.

    ``auto`` = bf16 on a CUDA device with native bf16 (Ampere and newer); full precision on CPU and on
    older GPUs (a T4 or P100 only emulates bf16, which is slower than fp32).
    """
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        try:
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch without the argument: native bf16 starts at compute capability 8.0
            native = torch.cuda.get_device_capability(device)[0] >= 8
        return torch.bfloat16 if native else None
    return None


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
