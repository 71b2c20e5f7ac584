"""One prepared GPU check: stock-vs-ours step ratios and the whole pipeline on CUDA, one JSON + a table.

Needs no network. On a GPU box whose python3 has torch/torchvision/timm/OpenCV/pandas/pyarrow, bring
segmentation-models-pytorch and pycocotools as wheels if they are missing, then::

    python bench/gpu_check.py --out work/gpu_check            # GPU mode (about 5-6 minutes on one H200)
    python bench/gpu_check.py --cpu --out work/gpu_check_cpu  # tiny CPU mode: the same code path, seconds

What it measures, each against its baseline in the same run:

1. Train step, random data already on the device (8 instances per image, bf16 autocast on CUDA,
   ``cudnn.benchmark = False``): stock torchvision ``maskrcnn_resnet50_fpn`` vs our Mask R-CNN (R50-FPN)
   and our DeepMAC, with our engine's optimizer; stock smp ``Unet(resnet34)`` vs our UNet wrapper.
2. Inference: stock ``maskrcnn_resnet50_fpn`` forward (eval, 100 detections, masks pasted) vs ours.
3. The pipeline on CUDA: synthetic data at 1024 px -> 01 -> 02/03/04 (short) -> 05 (flip TTA) -> 06,
   timing each stage and recording the local scores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def random_batch(n: int, size: int, n_inst: int, device, seed: int = 0):
    """n images (3, size, size) in 0..1 and torchvision targets with n_inst box-shaped masks each."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for _ in range(n):
        img = torch.rand(3, size, size, generator=g)
        xy = torch.randint(0, size // 2, (n_inst, 2), generator=g)
        wh = torch.randint(size // 16, size // 2, (n_inst, 2), generator=g)
        boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor(size))], 1).float()
        masks = torch.zeros(n_inst, size, size, dtype=torch.uint8)
        for k, (x1, y1, x2, y2) in enumerate(boxes.int().tolist()):
            masks[k, y1:y2, x1:x2] = 1
        labels = torch.randint(1, 47, (n_inst,), generator=g)
        images.append(img.to(device))
        targets.append({"boxes": boxes.to(device), "labels": labels.to(device), "masks": masks.to(device)})
    return images, targets


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_train(model, images, targets, device, steps: int, warmup: int, dtype, optimizer) -> float:
    """Images/s of forward+backward+step on one fixed batch."""
    model.train()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            losses = model(images, targets)
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return len(images) * steps / (time.perf_counter() - t0)


@torch.inference_mode()
def time_infer(model, images, device, steps: int, warmup: int, dtype) -> float:
    model.eval()
    for _ in range(warmup):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(images)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model(images)
    sync(device)
    return len(images) * steps / (time.perf_counter() - t0)


def step_benchmarks(cfg: dict, device, dtype) -> dict:
    import segmentation_models_pytorch as smp
    import torchvision

    from lib import models as lmodels
    from lib.engine import build_optimizer

    torch.backends.cudnn.benchmark = False
    res = {}
    bs, size, steps, warm = cfg["batch"], cfg["size"], cfg["steps"], cfg["warmup"]
    images, targets = random_batch(bs, size, 8, device)
    opt_args = argparse.Namespace(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=1e-4)

    def det_kwargs():
        return dict(min_size=size, max_size=size)

    stock = torchvision.models.detection.maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=47,
                                                               **det_kwargs()).to(device)
    opt = torch.optim.SGD(stock.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    res["stock_maskrcnn_train_img_s"] = time_train(stock, images, targets, device, steps, warm, dtype, opt)
    res["stock_maskrcnn_infer_img_s"] = time_infer(stock, images, device, steps, warm, dtype)
    del stock, opt
    for arch in ("maskrcnn", "deepmac"):
        try:
            conf = lmodels.default_config(arch, backbone="resnet50", **det_kwargs())
            model = lmodels.build_model(conf).to(device)
            opt = build_optimizer(model, opt_args, device)
            res[f"ours_{arch}_train_img_s"] = time_train(model, images, targets, device, steps, warm, dtype, opt)
            res[f"ours_{arch}_infer_img_s"] = time_infer(model, images, device, steps, warm, dtype)
            res[f"{arch}_train_ratio"] = res[f"ours_{arch}_train_img_s"] / res["stock_maskrcnn_train_img_s"]
            res[f"{arch}_infer_ratio"] = res[f"ours_{arch}_infer_img_s"] / res["stock_maskrcnn_infer_img_s"]
            del model, opt
        except Exception as e:  # keep measuring the rest
            res[f"{arch}_error"] = f"{type(e).__name__}: {e}"

    usize, ubs = cfg["unet_size"], cfg["unet_batch"]
    uimages, utargets = random_batch(ubs, usize, 8, device, seed=1)
    stock_u = smp.Unet("resnet34", encoder_weights=None, classes=47).to(device).to(memory_format=torch.channels_last)
    x = torch.stack(uimages).to(memory_format=torch.channels_last)
    y = torch.randint(0, 47, (ubs, usize, usize), device=device)
    opt = torch.optim.AdamW(stock_u.parameters(), lr=1e-4)

    class Wrap(torch.nn.Module):  # stock smp step: plain CE on a ready tensor batch
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, images, targets=None):
            return {"ce": torch.nn.functional.cross_entropy(self.net(x), y)}

    res["stock_unet_train_img_s"] = time_train(Wrap(stock_u), uimages, utargets, device, steps, warm, dtype, opt)
    del stock_u, opt
    conf = lmodels.default_config("unet", encoder="resnet34", min_size=usize, max_size=usize)
    model = lmodels.build_model(conf).to(device)
    opt = build_optimizer(model, argparse.Namespace(optimizer="adamw", lr=1e-4, momentum=0.9, weight_decay=1e-4),
                          device)
    res["ours_unet_train_img_s"] = time_train(model, uimages, utargets, device, steps, warm, dtype, opt)
    res["unet_train_ratio"] = res["ours_unet_train_img_s"] / res["stock_unet_train_img_s"]
    return res


def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    dt = time.time() - t0
    print(f"  {name:<10} rc={p.returncode} {dt:7.1f} s", flush=True)
    return {"stage": name, "rc": p.returncode, "seconds": round(dt, 1)}


def pipeline(cfg: dict, out: Path, device_flag: str) -> dict:
    py = sys.executable
    data, work = out / "data", out / "work"
    log = out / "pipeline.log"
    common = ["--prepared-dir", str(work / "prepared"), "--device", device_flag, "--workers", str(cfg["workers"]),
              "--epochs", "1", "--max-steps-per-epoch", str(cfg["train_steps"]), "--batch-size",
              str(cfg["train_batch"]), "--log-every", "5", "--max-val-images", "8"]
    det = ["--min-size", str(cfg["det_size"]), "--max-size", str(cfg["det_size"])]
    stages = [
        ("01", [py, "01_prepare_data.py", "--synthetic", "--data-dir", str(data), "--out-dir", str(work / "prepared"),
                "--synthetic-train", str(cfg["n_train"]), "--synthetic-test", str(cfg["n_test"]),
                "--synthetic-max-side", str(cfg["data_side"]), "--synthetic-min-side", str(cfg["data_side"] // 2),
                "--long-side", str(cfg["data_side"]), "--no-progress"]),
        ("02_unet", [py, "02_train_unet.py", "--out-dir", str(work / "unet"), "--encoder", cfg["encoder"],
                     "--image-size", str(cfg["det_size"]), *common]),
        ("03_maskrcnn", [py, "03_train_maskrcnn.py", "--out-dir", str(work / "maskrcnn"), "--backbone",
                         cfg["backbone"], *det, *common]),
        ("04_deepmac", [py, "04_train_deepmac.py", "--out-dir", str(work / "deepmac"), "--backbone",
                        cfg["backbone"], *det, *common]),
        ("05", [py, "05_predict.py", "--checkpoints", str(work / "unet"), str(work / "maskrcnn"),
                str(work / "deepmac"), "--data-dir", str(data), "--out-dir", str(work / "predictions"),
                "--device", device_flag, "--tta-flip", "--batch-size", str(cfg["train_batch"]), "--workers",
                str(cfg["workers"]), "--no-progress"]),
        ("06", [py, "06_make_submission.py", "--predictions", str(work / "predictions"), "--data-dir", str(data),
                "--out", str(work / "submission" / "submission.csv"), "--no-progress"]),
    ]
    results = []
    t0 = time.time()
    for name, cmd in stages:
        if time.time() - t0 > cfg.get("pipeline_budget_s", 1e9):
            results.append({"stage": name, "rc": None, "skipped": "time budget"})
            continue
        r = run_stage(name, cmd, log)
        results.append(r)
        if r["rc"] != 0:
            break
    scores = work / "submission" / "scores.json"
    return {"stages": results, "scores": json.loads(scores.read_text()) if scores.exists() else None}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="work/gpu_check", help="output folder (JSON, table, logs)")
    p.add_argument("--cpu", action="store_true", help="tiny CPU mode (same code path, small sizes)")
    p.add_argument("--skip-pipeline", action="store_true", help="only the step benchmarks")
    p.add_argument("--skip-steps", action="store_true", help="only the pipeline")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.cpu:
        device = torch.device("cpu")
        cfg = dict(batch=2, size=128, steps=2, warmup=1, unet_size=128, unet_batch=2, n_train=8, n_test=2,
                   data_side=192, det_size=128, train_steps=2, train_batch=2, workers=0, encoder="resnet18",
                   backbone="resnet18")
        dtype = None
    else:
        device = torch.device("cuda")
        cfg = dict(batch=8, size=1024, steps=15, warmup=5, unet_size=512, unet_batch=32, n_train=96, n_test=32,
                   data_side=1024, det_size=1024, train_steps=30, train_batch=8, workers=8, encoder="resnet34",
                   backbone="resnet50", pipeline_budget_s=200)
        dtype = torch.bfloat16
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "cpu" if args.cpu else "gpu",
              "device": torch.cuda.get_device_name(0) if device.type == "cuda" else platform.processor() or "cpu",
              "torch": torch.__version__, "config": cfg}
    if not args.skip_steps:
        print("step benchmarks ...", flush=True)
        t0 = time.time()
        try:
            report["steps"] = step_benchmarks(cfg, device, dtype)
        except Exception as e:
            report["steps"] = {"error": f"{type(e).__name__}: {e}"}
        report["steps_seconds"] = round(time.time() - t0, 1)
        for k, v in report["steps"].items():
            print(f"  {k:<32} {v:9.2f}" if isinstance(v, float) else f"  {k:<32} {v}", flush=True)
        if device.type == "cuda":
            report["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            torch.cuda.empty_cache()
    if not args.skip_pipeline:
        print("pipeline ...", flush=True)
        report["pipeline"] = pipeline(cfg, out, "cpu" if args.cpu else "cuda")
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps({k: report[k] for k in report if k != "config"}, indent=1, default=str)[:6000])
    return report


if __name__ == "__main__":
    main()
