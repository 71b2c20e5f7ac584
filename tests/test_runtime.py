"""lib/runtime.py: devices, backend flags, autocast dtype, output folders, random generators."""
import random

import numpy as np
import torch

from lib import runtime


def test_amp_dtype():
    assert runtime.amp_dtype("auto", torch.device("cpu")) is None
    assert runtime.amp_dtype("off", torch.device("cpu")) is None
    assert runtime.amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16


def test_backend_flags_and_single_process_setup():
    torch.backends.cudnn.benchmark = True
    runtime.set_backend_flags()
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.allow_tf32 is True
    env = runtime.setup_distributed("cpu")
    assert env["distributed"] is False and env["world_size"] == 1 and env["device"] == torch.device("cpu")


def test_rng_state_round_trip():
    runtime.seed_everything(3)
    state = runtime.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    runtime.seed_everything(99)
    runtime.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
