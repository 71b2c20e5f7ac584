"""Shared pieces of the ``bench/`` scripts: device choice, timing, random batches, the training step, output.

Every benchmark measures its baseline in the same run and reports ``ours / baseline`` ratios (> 1 = ours is
faster). Throughputs are images per second; a timed loop synchronises the device before reading the clock.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- device
def pick_device(cpu: bool) -> torch.device:
    """``cpu`` -> the CPU; otherwise CUDA, or exit with a clear message when there is none.

    On CUDA it sets the backend flags of the training and prediction stages (``lib.runtime.set_backend_flags``:
    ``cudnn.benchmark`` off, as detectors see new shapes every step and cuDNN would re-tune each; TF32 on).
    """
    if cpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise SystemExit("GPU mode needs a CUDA device (torch.cuda.is_available() is False); "
                         "run with --cpu for the small CPU mode")
    from lib import runtime

    runtime.check_cuda_kernels(torch.device("cuda"))  # a GPU this torch build has no kernels for: stop here
    runtime.set_backend_flags()
    return torch.device("cuda")


def mode_config(modes: dict, args, flags: dict[str, str]) -> dict:
    """``modes["cpu" | "gpu"]`` (by ``args.cpu``) updated with each flag of ``flags`` (config key -> args
    attribute) that was given (not None)."""
    cfg = dict(modes["cpu" if args.cpu else "gpu"])
    cfg.update({k: getattr(args, a) for k, a in flags.items() if getattr(args, a, None) is not None})
    return cfg


def bench_dtype(device: torch.device):
    """Autocast dtype of the benchmarks: bf16 on CUDA (as the training scripts' ``--amp auto``), fp32 on CPU."""
    return torch.bfloat16 if device.type == "cuda" else None


def sync(device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def autocast(device, dtype):
    return torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None)


def report_header(benchmark: str, cpu: bool, device, dtype, cfg: dict) -> dict:
    """The common head of a benchmark's JSON report: name, mode, :func:`env_info`, precision and config."""
    return {"benchmark": benchmark, "mode": "cpu" if cpu else "gpu", **env_info(device),
            "precision": str(dtype).replace("torch.", "") if dtype else "fp32", "config": cfg}


def env_info(device) -> dict:
    """Date, machine and library versions for the JSON reports."""
    import torchvision

    device = torch.device(device)
    info = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "host": socket.gethostname(),
            "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": str(device)}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = _cpu_name()
    return info


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512_BF16 or AMX: AMD Zen 4+, Intel Cooper Lake / Sapphire
    Rapids+), where torch's CPU autocast to bf16 trains faster than fp32; elsewhere bf16 is emulated, slower."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


# --------------------------------------------------------------------------------------------- data
def random_batch(n: int, size: int, n_inst: int, device, seed: int = 0):
    """``n`` images ``(3, size, size)`` float32 in 0..1 and torchvision targets with ``n_inst`` box-shaped
    masks each (``boxes (n_inst, 4)`` float32 x1y1x2y2, ``labels`` int64 in 1..46, ``masks (n_inst, size,
    size)`` uint8), on ``device``. Deterministic for a given ``seed``."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=g)
        xy = torch.randint(0, size // 2, (n_inst, 2), generator=g)
        wh = torch.randint(max(1, size // 16), max(2, size // 2), (n_inst, 2), generator=g)
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor(size))], 1).float()
        masks = torch.zeros(n_inst, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, 47, (n_inst,), generator=g)
        images.append(img.to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


# --------------------------------------------------------------------------------------------- steps
def stock_step(model, images, targets, optimizer, dtype) -> None:
    """The stock torchvision reference step: forward under autocast, sum of the losses, backward, step."""
    with autocast(images[0].device, dtype):
        losses = model(images, targets)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def engine_step(model, images, targets, optimizer, dtype, clip_grad: float = 0.0) -> dict:
    """One step of training as ``lib/engine.py`` runs it (its ``train_step``: forward under autocast,
    backward, clipping, optimizer step, two host reads), without the scheduler and logging.
    Returns the loss parts (floats)."""
    from lib.engine import train_step

    params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    _, parts, _, _ = train_step(model, [(images, targets)], optimizer, params, clip_grad, images[0].device, dtype)
    return parts


def time_calls(fn: Callable[[], object], device, steps: int, warmup: int) -> float:
    """Seconds per call of ``fn`` (mean over ``steps`` calls after ``warmup`` untimed ones)."""
    for _ in range(warmup):
        fn()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / max(1, steps)


def time_interleaved(fns: dict[str, Callable[[], object]], device, steps: int, warmup: int) -> dict[str, float]:
    """Median seconds per call of each function in ``fns``, timed in turns (a, b, a, b, ...) after ``warmup``
    untimed rounds, so that a change of the machine's load hits every side alike."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(max(1, steps)):
        for k, f in fns.items():
            sync(device)
            t0 = time.perf_counter()
            f()
            sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: float(statistics.median(v)) for k, v in times.items()}


def count_syncs(fn: Callable[[], object], device) -> int | None:
    """Host-device synchronisations in one call of ``fn`` (CUDA only: ``torch.cuda.set_sync_debug_mode``
    warnings are counted); None on the CPU, where nothing runs asynchronously."""
    if torch.device(device).type != "cuda":
        return None
    sync(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
            sync(device)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def profile_table(fn: Callable[[], object], device, rows: int = 25, sort_by: str | None = None) -> str:
    """``torch.profiler`` table (the ``rows`` most expensive ops) of one call of ``fn`` after one warm-up."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    sync(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.device(device).type == "cuda" else [])
    with profile(activities=acts) as prof:
        fn()
        sync(device)
    keys = [sort_by] if sort_by else (["device_time_total", "cuda_time_total"]
                                      if torch.device(device).type == "cuda" else ["cpu_time_total"])
    for key in keys:
        try:
            return prof.key_averages().table(sort_by=key, row_limit=rows)
        except (AttributeError, KeyError, ValueError):
            continue  # older/newer torch name of the device-time column
    return prof.key_averages().table(row_limit=rows)


# --------------------------------------------------------------------------------------------- output
def ratio(ours: float | None, base: float | None) -> float | None:
    """``ours / base`` or None when either is missing or the base is 0."""
    if ours is None or base is None or not base:
        return None
    return float(ours) / float(base)


def fmt(v, spec: str = ".3g") -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return format(v, spec)
    return str(v)


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A Markdown table of ``rows`` (dicts) with ``columns`` = ``[(key, header), ...]``."""
    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: str | Path, obj) -> Path:
    """Write ``obj`` as indented JSON (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    return path


__all__ = ["REPO", "pick_device", "bench_dtype", "sync", "autocast", "env_info", "random_batch", "stock_step",
           "engine_step", "mode_config", "report_header", "time_calls", "time_interleaved", "count_syncs",
           "profile_table", "ratio", "fmt", "table", "write_json"]


# --------------------------------------------------------------------------------------------- process-tree memory
def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    return kids


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc)."""
    kids, out, todo = _children(), [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _kb(text: str, key: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(key):
            return int(line.split()[1])
    return None


def tree_memory(root: int) -> tuple[int, int, int]:
    """(sum of VmRSS, sum of PSS, largest VmHWM) in bytes over ``root`` and its descendants; PSS from
    ``smaps_rollup`` (its RSS where that cannot be read)."""
    rss = pss = hwm = 0
    for p in tree_pids(root):
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        r = _kb(status, "VmRSS:") or 0
        try:
            ps = _kb(Path(f"/proc/{p}/smaps_rollup").read_text(), "Pss:")
        except OSError:
            ps = None
        rss, pss, hwm = rss + r, pss + (r if ps is None else ps), max(hwm, _kb(status, "VmHWM:") or 0)
    return rss * 1024, pss * 1024, hwm * 1024


def run_measured(cmd: list[str], env: dict | None = None, poll: float = 0.05, tail: int = 4000) -> dict:
    """Run ``cmd`` from the repo root; ``rc``, ``wall_s``, the peaks ``tree_rss_mb``, ``tree_pss_mb``,
    ``max_hwm_mb`` (:func:`tree_memory` sampled every ``poll`` s in a thread) and the last ``tail`` characters
    of its output."""
    with tempfile.TemporaryFile("w+") as log:
        own = Path("/proc/self/cmdline").read_bytes()
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        peak, done = [0, 0, 0], threading.Event()

        def sample():
            while not done.is_set():
                try:  # between fork and exec the child still shows this process's memory: not sampled
                    if Path(f"/proc/{p.pid}/cmdline").read_bytes() == own:
                        done.wait(0.001)
                        continue
                except OSError:
                    pass
                peak[:] = [max(a, b) for a, b in zip(peak, tree_memory(p.pid))]
                done.wait(poll)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        rc = p.wait()
        wall = time.perf_counter() - t0
        done.set()
        th.join()
        log.seek(0)
        output = log.read()
    return {"rc": rc, "wall_s": wall, "tree_rss_mb": peak[0] / 2**20, "tree_pss_mb": peak[1] / 2**20,
            "max_hwm_mb": peak[2] / 2**20, "output": output[-tail:]}
