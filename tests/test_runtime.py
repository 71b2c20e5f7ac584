"""lib/runtime.py: devices, backend flags, autocast dtype, output folders, random generators."""
import random

import numpy as np
import pytest
import torch

from lib import runtime


def test_amp_dtype():
    assert runtime.amp_dtype("auto", torch.device("cpu")) is None
    assert runtime.amp_dtype("off", torch.device("cpu")) is None
    assert runtime.amp_dtype("bf16", torch.device("cpu")) is torch.bfloat16
    assert runtime.amp_dtype("fp16", torch.device("cpu")) is torch.float16
    with pytest.raises(ValueError, match="--amp 'fp8'"):
        runtime.amp_dtype("fp8", torch.device("cpu"))


@pytest.mark.parametrize("native_bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_amp_auto_on_cuda_is_bf16_where_native_else_fp16(native_bf16, expected, monkeypatch):
    """--amp auto: bf16 on an A100/H100, fp16 (with the gradient scaler) on a T4/V100/P100."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16)
    dtype = runtime.amp_dtype("auto", torch.device("cuda", 0))
    assert dtype is expected
    assert runtime.make_grad_scaler(dtype, torch.device("cpu")).is_enabled() == (expected is torch.float16)


TORCH_2_14_CU130 = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]


@pytest.mark.parametrize("capability, arch_list, runs", [
    ((6, 0), TORCH_2_14_CU130, False),  # P100
    ((7, 0), TORCH_2_14_CU130, False),  # V100
    ((7, 5), TORCH_2_14_CU130, True),  # T4
    ((8, 0), TORCH_2_14_CU130, True),  # A100
    ((8, 9), TORCH_2_14_CU130, True),  # L4: sm_86 code runs on 8.9
    ((9, 0), TORCH_2_14_CU130, True),  # H100 / H200
    ((6, 0), ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"], True),  # a cu126 build
    ((7, 0), ["sm_80", "compute_70"], True),  # PTX of an older or equal capability is compiled on first use
    ((7, 0), ["sm_80", "compute_75"], False),
    ((8, 6), ["sm_90a"], False),
    ((8, 0), [], True),  # a build that does not say
])
def test_cuda_arch_problem(capability, arch_list, runs):
    problem = runtime.cuda_arch_problem(capability, arch_list, "Tesla X", "2.14.1+cu130")
    assert (problem is None) == runs
    if not runs:
        assert f"compute capability {capability[0]}.{capability[1]}" in problem and "Tesla X" in problem
        assert "Which torch for which GPU" in problem and "--device cpu" in problem


def test_setup_stops_at_start_on_a_gpu_this_torch_cannot_run(monkeypatch):
    """Every script with --device goes through setup_distributed: a P100 under a cu130 build stops there."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(TORCH_2_14_CU130))
    with pytest.raises(RuntimeError, match=r"Tesla P100-PCIE-16GB has compute capability 6\.0 \(sm_60\)"):
        runtime.setup_distributed("cuda")


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
