"""Benchmark: does the training input pipeline keep up with the model?

The training DataLoader (``lib.training_data``: ``PreparedDataset`` over a prepared set with the training transforms of
``lib/engine.py`` - JPEG decode, RLE decode of every mask, random flip, colour jitter, box sanitising -
collated, pinned on CUDA, moved to the device like the engine does) against the model's own consumption:

- ``sample_ms``: one ``dataset[i]`` (decode + augmentation) in this process, one core;
- ``loader_img_s``: images/s the DataLoader delivers with ``--workers`` workers (moved to the device);
- ``model_img_s``: our training step (``bench/common.py`` ``engine_step``, the step of ``lib/engine.py``)
  on the batches of the end-to-end run (same order), loaded onto the device beforehand;
- ``end_to_end_img_s``: the training loop: next batch from the loader, to the device, step.

``loader_ratio`` = loader / model (>= 1: the loader can feed the model); ``end_to_end_ratio`` = end to end /
model only (the issue's target: >= 0.95, i.e. the pipeline hides); ``workers_needed`` = model images/s x
sample seconds (cores of decode + augmentation the model's pace needs). The prepared set is generated from the
synthetic dataset at ``--data-side`` unless ``--prepared-dir`` names one. On a 2-core CPU the workers and
the model share the cores, so the CPU ratios say little about a GPU box.

Examples::

    OMP_NUM_THREADS=1 python bench/input_bench.py --cpu                 # tiny CPU mode (resnet18 Mask R-CNN, 128 px)
    python bench/input_bench.py --cpu --arch unet --workers 0
    python bench/input_bench.py --out work/bench/input.json             # GPU mode: 1024 px prepared set, batch 8, 8 workers
    python bench/input_bench.py --prepared-dir work/prepared --arch deepmac
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench import common as bc  # noqa: E402

ARCHS = ("maskrcnn", "deepmac", "unet")
MODES = {
    "cpu": dict(arch="maskrcnn", backbone="resnet18", encoder="resnet18", n_train=12, data_side=192, long_side=128,
                batch=2, workers=1, batches=6, steps=3, warmup=1,
                detector=dict(rpn_post_nms_top_n_train=300, box_batch_size_per_image=64),
                deepmac=dict(mask_roi_size=16, mask_head_width=32, mask_head_depth=2, mask_head_stacks=1)),
    "gpu": dict(arch="maskrcnn", backbone="resnet50", encoder="resnet34", n_train=64, data_side=1024,
                long_side=1024, batch=8, workers=8, batches=24, steps=10, warmup=3, detector={}, deepmac={}),
}
OURS_OPT = {"maskrcnn": ("adamw", 1e-4, 10.0), "deepmac": ("adamw", 1e-4, 10.0), "unet": ("adamw", 3e-4, 5.0)}


def ensure_cache(work_dir: Path, n_train: int, data_side: int, long_side: int, workers: int = 1) -> Path:
    """A prepared set of ``n_train`` synthetic images (long side ``data_side``, prepared at ``long_side``) under
    ``work_dir``; reused when it is there."""
    from lib import prepared as lprepared
    from lib import synthetic

    data, prepared = Path(work_dir) / "data", Path(work_dir) / "prepared"
    synthetic.generate_dataset(data, n_train=n_train, n_test=1, seed=0, min_side=max(64, data_side * 2 // 3),
                               max_side=data_side, progress=False)
    try:
        meta = lprepared.load_meta(prepared)
        if meta.get("long_side") == long_side and meta.get("num_images") == n_train:
            return prepared
    except FileNotFoundError:
        pass
    lprepared.run(lprepared.PrepareSettings(
        data_dir=data, out_dir=prepared, long_side=long_side, val_fraction=0.0, seed=0, processes=workers,
        progress=False))  # every image in the train split
    return prepared


def model_for(arch: str, cfg: dict, long_side: int):
    from lib import models as lmodels

    if arch == "unet":
        conf = lmodels.default_config("unet", encoder=cfg["encoder"], min_size=long_side, max_size=long_side)
    else:
        extra = dict(cfg.get("detector", {}), **(cfg.get("deepmac", {}) if arch == "deepmac" else {}))
        conf = lmodels.default_config(arch, backbone=cfg["backbone"], min_size=long_side, max_size=long_side,
                                      **extra)
    return lmodels.build_model(conf)


def measure(prepared: Path, cfg: dict, device, dtype) -> dict:
    """The four figures of the module docstring on the train split of ``prepared``."""

    from lib import prepared as lprepared
    from lib.training_data import PreparedDataset, build_transforms, make_loader
    from lib.engine import _to_device, build_optimizer

    arch, bs, workers = cfg["arch"], cfg["batch"], cfg["workers"]
    long_side = int(lprepared.load_meta(prepared).get("long_side") or cfg["long_side"])
    ds = PreparedDataset(prepared, "train", build_transforms(True, hflip=0.5, color_jitter=0.2))  # as lib/engine.py
    if len(ds) < bs:
        raise ValueError(f"{prepared}: {len(ds)} training images, fewer than the batch size {bs}")
    res = {"arch": arch, "batch": bs, "workers": workers, "images": len(ds), "long_side": long_side}

    # one sample, this process (after a first pass over the images it times)
    n = min(len(ds), 4 * bs)
    for i in range(n):
        ds[i]
    t0 = time.perf_counter()
    for i in range(n):
        ds[i]
    res["sample_ms"] = (time.perf_counter() - t0) / n * 1e3

    def batches(loader):
        epoch = 0
        while True:
            loader.sampler.set_epoch(epoch)
            for b in loader:
                yield b
            epoch += 1

    # loader alone (to the device, as the engine's loop)
    loader = make_loader(ds, bs, shuffle=True, workers=workers, seed=0, drop_last=True)
    it = batches(loader)
    next(it)  # worker start-up
    bc.sync(device)
    t0 = time.perf_counter()
    for _ in range(cfg["batches"]):
        images, targets = next(it)
        images, targets = _to_device(images, targets, device)
    bc.sync(device)
    res["loader_img_s"] = cfg["batches"] * bs / (time.perf_counter() - t0)
    del it, loader

    # model alone: the batches of the end-to-end run below (same seed, same order), loaded beforehand
    opt_name, lr, clip = OURS_OPT[arch]
    torch.manual_seed(0)
    model = model_for(arch, cfg, long_side).to(device).train()
    opt = build_optimizer(model, opt_name, lr, weight_decay=1e-4, momentum=0.9, device=device)
    n_warm, n_steps = max(1, cfg["warmup"]), cfg["steps"]

    def step(images, targets):
        bc.engine_step(model, images, targets, opt, dtype, clip_grad=clip)

    it = batches(make_loader(ds, bs, shuffle=True, workers=0, seed=1, drop_last=True))
    ready = [_to_device(*next(it), device) for _ in range(n_warm + n_steps)]
    for b in ready[:n_warm]:
        step(*b)
    bc.sync(device)
    t0 = time.perf_counter()
    for b in ready[n_warm:]:
        step(*b)
    bc.sync(device)
    res["model_img_s"] = n_steps * bs / (time.perf_counter() - t0)
    del ready, it

    # end to end: the training loop (next batch, to the device, step)
    loader = make_loader(ds, bs, shuffle=True, workers=workers, seed=1, drop_last=True)
    it = batches(loader)
    for _ in range(n_warm):
        step(*_to_device(*next(it), device))
    bc.sync(device)
    t0 = time.perf_counter()
    for _ in range(n_steps):
        step(*_to_device(*next(it), device))
    bc.sync(device)
    res["end_to_end_img_s"] = n_steps * bs / (time.perf_counter() - t0)
    del it, loader
    res["loader_ratio"] = bc.ratio(res["loader_img_s"], res["model_img_s"])
    res["end_to_end_ratio"] = bc.ratio(res["end_to_end_img_s"], res["model_img_s"])
    res["workers_needed"] = res["model_img_s"] * res["sample_ms"] / 1e3
    if device.type == "cuda":
        res["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return res


COLUMNS = [("arch", "arch"), ("batch", "batch"), ("long_side", "size"), ("workers", "workers"),
           ("sample_ms", "sample ms (1 core)"), ("loader_img_s", "loader img/s"), ("model_img_s", "model img/s"),
           ("end_to_end_img_s", "end-to-end img/s"), ("loader_ratio", "loader/model"),
           ("end_to_end_ratio", "end-to-end/model"), ("workers_needed", "workers needed")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cpu", action="store_true", help="small CPU mode (default: GPU mode, needs CUDA)")
    p.add_argument("--arch", choices=ARCHS, default=None, help="model whose step is the consumer (maskrcnn)")
    p.add_argument("--prepared-dir", type=Path, default=None,
                   help="an existing prepared set (default: a synthetic one generated under --work-dir)")
    p.add_argument("--work-dir", type=Path, default=Path("work/bench/input"), help="synthetic data and prepared set")
    p.add_argument("--n-train", type=int, default=None, help="synthetic training images (default 12 CPU, 64 GPU)")
    p.add_argument("--data-side", type=int, default=None, help="synthetic image long side (default 192 / 1024)")
    p.add_argument("--long-side", type=int, default=None, help="prepared long side = model size (default 128 / 1024)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 2 CPU, 8 GPU)")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers (default 1 CPU, 8 GPU)")
    p.add_argument("--batches", type=int, default=None, help="timed loader batches")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (model only and end to end)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first")
    p.add_argument("--out", type=Path, default=Path("work/bench/input_bench.json"), help="JSON file to write")
    return p


def config_from_args(args) -> dict:
    return bc.mode_config(MODES, args, {"arch": "arch", "n_train": "n_train", "data_side": "data_side",
                                        "long_side": "long_side", "batch": "batch_size", "workers": "workers",
                                        "batches": "batches", "steps": "steps", "warmup": "warmup"})


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    device = bc.pick_device(args.cpu)
    dtype = bc.bench_dtype(device)
    cfg = config_from_args(args)
    print(f"input pipeline, {'CPU' if args.cpu else 'GPU'} mode: {cfg}", flush=True)
    t0 = time.time()
    prepared = args.prepared_dir or ensure_cache(args.work_dir, cfg["n_train"], cfg["data_side"], cfg["long_side"],
                                                 workers=max(1, min(8, os.cpu_count() or 1)))
    prepare_s = time.time() - t0
    res = measure(prepared, cfg, device, dtype)
    report = {**bc.report_header("input_pipeline", args.cpu, device, dtype, cfg),
              "prepared_dir": str(prepared), "prepare_seconds": round(prepare_s, 1), **res}
    print()
    print(bc.table([res], COLUMNS))
    bc.write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
