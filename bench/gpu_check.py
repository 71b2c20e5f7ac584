"""One prepared GPU check: the speed ratios of the bench/ scripts and the whole pipeline on CUDA, one JSON + a table.

Needs no network. On a GPU box whose python3 has torch/torchvision/timm/OpenCV/pandas/pyarrow: when
segmentation-models-pytorch or pycocotools is missing it is installed from the wheels in ``--wheels``
(default ``.whl/`` at the repo root; bring that folder along), then::

    python bench/gpu_check.py --out work/gpu_check            # GPU mode (estimated 7-8 minutes on one H200)
    python bench/gpu_check.py --cpu --out work/gpu_check_cpu  # tiny CPU mode: the same code path, ~2 minutes

Sections, in this order, each measured against its baseline in the same run (``--budget-s`` skips the
sections that would start after the budget is spent):

1. ``train``: ``bench/train_bench.py`` - our 03/04/02 training step vs the stock torchvision
   ``maskrcnn_resnet50_fpn`` / smp ``Unet(resnet34)`` step, random batch on the device, batch 8 at 1024 px
   (UNet 32 at 512), bf16 autocast, host-device syncs per step counted.
2. ``infer``: ``bench/infer_bench.py`` - stock forward vs our forward vs 05's prediction path (flip TTA,
   512 x 512 masks) and 06 (post-processing + RLE) on synthetic 3000 x 2000 JPEGs at 1024 px, the
   projected 05 + 06 time for 3,200 test images (target 90 s), and 05's batched mask paste vs torchvision's.
3. ``input``: ``bench/input_bench.py`` - the training DataLoader (8 workers) on a 1024 px prepared set vs our
   Mask R-CNN step: loader / model and end-to-end / model-only (target >= 0.95).
4. ``pipeline``: synthetic data at 1024 px -> 01 -> 02/03/04 (short) -> 05 (flip TTA) -> 06, the time of
   each stage and the local scores (the accuracy check of a short synthetic training run).

5. ``box_precision`` (run first): a Mask R-CNN's output under bf16 and fp16 autocast on the device: boxes, anchors
   and masks float32, the share of box coordinates on the bf16 grid (~0 expected; torchvision's own decoding
   would put all of them there).
6. ``amp``: one short 03 epoch (50 steps, batch 8, 1024 px) with ``--amp auto`` and with ``--amp off`` on the
   pipeline's prepared set: val AP75 / Kaggle and the epoch time of each.

Writes ``gpu_check.json`` (everything) and ``gpu_check.md`` (the short table) into ``--out``.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from bench import common as bc  # noqa: E402

SECTIONS = ("box_precision", "train", "infer", "input", "pipeline", "amp")


def ensure_packages(wheels: Path) -> dict:
    """Install segmentation-models-pytorch / pycocotools from ``wheels`` (no index, no deps) if missing."""
    missing = []
    for mod, dist in (("segmentation_models_pytorch", "segmentation-models-pytorch"), ("pycocotools", "pycocotools")):
        try:
            importlib.import_module(mod)
        except ImportError:
            missing.append(dist)
    if not missing:
        return {"installed": []}
    if not Path(wheels).is_dir():
        raise SystemExit(f"{', '.join(missing)} missing and no wheel folder {wheels}: bring the wheels "
                         f"(--wheels DIR) or install them")
    cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(wheels), *missing]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"installing {missing} from {wheels} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    importlib.invalidate_caches()
    return {"installed": missing}


# --------------------------------------------------------------------------------------------- configs
def configs(cpu: bool) -> dict:
    """Per-section settings: the bench scripts' own modes, trimmed to fit the budget."""
    from bench import infer_bench, input_bench, train_bench

    if cpu:
        return {
            "box_precision": dict(size=128, backbone="resnet18"),
            "amp": dict(steps=2, batch=2, det_size=128, backbone="resnet18", val_images=4, workers=0),
            "train": dict(train_bench.MODES["cpu"], steps=1, warmup=1, channels_last=True),
            "infer": dict(infer_bench.MODES["cpu"], steps=1, warmup=1, rows_threads=1, channels_last=True),
            "input": dict(input_bench.MODES["cpu"], n_train=8, batches=3, steps=2, warmup=1),
            "pipeline": dict(n_train=8, n_test=2, data_side=192, det_size=128, train_steps=2, train_batch=2,
                             workers=0, encoder="resnet18", backbone="resnet18"),
        }
    return {
        "box_precision": dict(size=1024, backbone="resnet50"),
        "amp": dict(steps=50, batch=8, det_size=1024, backbone="resnet50", val_images=32, workers=8),
        "train": dict(train_bench.MODES["gpu"], steps=12, warmup=4),
        "infer": dict(infer_bench.MODES["gpu"], steps=1, warmup=1, rows_threads=4),
        "input": dict(input_bench.MODES["gpu"], n_train=64, batches=16, steps=8, warmup=3),
        "pipeline": dict(n_train=96, n_test=32, data_side=1024, det_size=1024, train_steps=30, train_batch=8,
                         workers=8, encoder="resnet34", backbone="resnet50"),
    }


# --------------------------------------------------------------------------------------------- pipeline
def run_stage(name: str, cmd: list[str], log: Path) -> dict:
    t0 = time.time()
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        p = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    dt = time.time() - t0
    print(f"  {name:<12} rc={p.returncode} {dt:7.1f} s", flush=True)
    return {"stage": name, "rc": p.returncode, "seconds": round(dt, 1)}


def pipeline(cfg: dict, out: Path, device_flag: str, budget_s: float = 1e9) -> dict:
    """01 -> 02/03/04 -> 05 -> 06 on synthetic data as subprocesses; stages starting after ``budget_s`` are
    skipped. Returns the stage times and 06's scores."""
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
                str(cfg["workers"]), "--restart", "--no-progress"]),
        ("06", [py, "06_make_submission.py", "--predictions", str(work / "predictions"), "--data-dir", str(data),
                "--out-dir", str(work / "submission"), "--no-progress"]),
    ]
    results = []
    t0 = time.time()
    for name, cmd in stages:
        if time.time() - t0 > budget_s:
            results.append({"stage": name, "rc": None, "skipped": "time budget"})
            continue
        r = run_stage(name, cmd, log)
        results.append(r)
        if r["rc"] != 0:
            break
    scores = work / "submission" / "scores.json"
    val = {}
    for name in ("unet", "maskrcnn", "deepmac"):
        meta = work / name / "meta.json"
        if meta.is_file():
            m = json.loads(meta.read_text()).get("final_metrics") or {}
            val[name] = {k: m.get(k) for k in ("val_kaggle", "val_AP", "train_loss")}
    return {"stages": results, "val": val, "scores": json.loads(scores.read_text()) if scores.exists() else None}


# --------------------------------------------------------------------------------------------- precision
@torch.no_grad()
def precision_check(cfg: dict, device: torch.device) -> dict:
    """Output dtypes of an untrained Mask R-CNN under bf16 / fp16 autocast and in fp32 on ``device``."""
    from lib.models import build_model

    torch.manual_seed(0)
    size = cfg["size"]
    model = build_model({"arch": "maskrcnn", "backbone": cfg["backbone"], "min_size": size, "max_size": size,
                         "box_score_thresh": 0.0}).to(device).eval()
    image = torch.rand(3, size, size, device=device)
    rows = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", None)):
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model([image])[0]
            image_list, _ = model.transform([image])
            anchors = model.rpn.anchor_generator(image_list, list(model.backbone(image_list.tensors).values()))
        b = out["boxes"]
        on_grid = (b.bfloat16().float() == b).float().mean().item() if len(b) else None
        rows[name] = {"boxes": str(b.dtype), "anchors": str(anchors[0].dtype), "masks": str(out["masks"].dtype),
                      "detections": len(b), "share_on_bf16_grid": on_grid}
    rows["ok"] = all(r["boxes"] == r["anchors"] == r["masks"] == "torch.float32" for r in rows.values())
    return rows


def amp_compare(cfg: dict, out: Path, device_flag: str) -> dict:
    """03 for one short epoch with --amp auto and --amp off on the pipeline's prepared set (made if missing)."""
    py, prepared = sys.executable, out / "work" / "prepared"
    log = out / "amp.log"
    if not (prepared / "meta.json").is_file():
        run_stage("01", [py, "01_prepare_data.py", "--synthetic", "--data-dir", str(out / "data"), "--out-dir",
                         str(prepared), "--synthetic-train", "96", "--synthetic-test", "8", "--long-side",
                         str(cfg["det_size"]), "--no-progress"], log)
    res = {}
    for amp in ("auto", "off"):
        run_dir = out / "work" / f"amp_{amp}"
        r = run_stage(f"03 amp {amp}", [py, "03_train_maskrcnn.py", "--prepared-dir", str(prepared), "--out-dir",
                                        str(run_dir), "--device", device_flag, "--amp", amp, "--backbone",
                                        cfg["backbone"], "--min-size", str(cfg["det_size"]), "--max-size",
                                        str(cfg["det_size"]), "--epochs", "1", "--max-steps-per-epoch",
                                        str(cfg["steps"]), "--batch-size", str(cfg["batch"]), "--workers",
                                        str(cfg["workers"]), "--max-val-images", str(cfg["val_images"]),
                                        "--warmup-steps", "10", "--lr", "2e-4", "--log-every", "10"], log)
        meta = run_dir / "meta.json"
        m = json.loads(meta.read_text()) if meta.is_file() else {}
        fm = m.get("final_metrics") or {}
        res[amp] = {"rc": r["rc"], "seconds": r["seconds"], "amp": m.get("amp"),
                    **{k: fm.get(k) for k in ("val_AP75", "val_AP", "val_kaggle", "epoch_time", "skipped_steps",
                                              "max_mem_gb")}}
    return res


# --------------------------------------------------------------------------------------------- report
def summary_table(report: dict) -> str:
    """The short Markdown table of the headline ratios (the JSON has everything)."""
    lines = ["| measurement | ours | baseline | ratio | target |", "|---|---|---|---|---|"]
    prec = report.get("box_precision") or {}
    for name in ("bf16", "fp16", "fp32"):
        if name in prec:
            r = prec[name]
            lines.append(f"| {name}: boxes / anchors / masks dtype, share of boxes on the bf16 grid | {r['boxes']} / "
                         f"{r['anchors']} / {r['masks']}, {bc.fmt(r['share_on_bf16_grid'])} | | | float32 |")
    for amp, r in (report.get("amp") or {}).items():
        if isinstance(r, dict) and "rc" in r:
            lines.append(f"| 03 short epoch --amp {amp} ({r.get('amp')}): val AP75 / Kaggle, epoch s | "
                         f"{bc.fmt(r.get('val_AP75'))} / {bc.fmt(r.get('val_kaggle'))}, {bc.fmt(r.get('epoch_time'))} "
                         f"| | | rc={r['rc']} |")
    for r in (report.get("train") or {}).get("rows", []):
        if "error" in r:
            lines.append(f"| train step {r['arch']} | error: {r['error'][:80]} | | | |")
            continue
        target = ">= 1.5" if r["arch"] in ("maskrcnn", "deepmac") else ""
        lines.append(f"| train step {r['arch']} (img/s, batch {r['batch']}, {r['size']} px) | "
                     f"{bc.fmt(r['ours_img_s'])} | {bc.fmt(r['stock_img_s'])} (stock) | {bc.fmt(r['ratio'])} | "
                     f"{target} |")
        if r.get("cl_ratio") is not None:
            lines.append(f"| train step {r['arch']}, --channels-last (img/s) | {bc.fmt(r['ours_cl_img_s'])} | "
                         f"{bc.fmt(r['stock_img_s'])} (stock) | {bc.fmt(r['cl_ratio'])} | {target} |")
    inf = report.get("infer") or {}
    for r in inf.get("rows", []):
        if "error" in r:
            lines.append(f"| inference {r['arch']} | error: {r['error'][:80]} | | | |")
            continue
        lines.append(f"| forward {r['arch']} (img/s) | {bc.fmt(r['ours_forward_img_s'])} | {bc.fmt(r['stock_img_s'])} "
                     f"(stock) | {bc.fmt(r['forward_ratio'])} | |")
        if r.get("cl_forward_ratio") is not None:
            lines.append(f"| forward {r['arch']}, --channels-last (img/s) | {bc.fmt(r['ours_cl_forward_img_s'])} | "
                         f"{bc.fmt(r['stock_img_s'])} (stock) | {bc.fmt(r['cl_forward_ratio'])} | |")
        lines.append(f"| 05 path {r['arch']}, {r['views']} views (img/s) | {bc.fmt(r['predict_img_s'])} | "
                     f"{bc.fmt(r['stock_img_s'])} (stock fwd) | {bc.fmt(r['predict_ratio'])} | |")
        if r.get("fusion_ratio") is not None:
            lines.append(f"| TTA fusion {r['arch']} (ms/img) | {bc.fmt(r['fusion_device_ms'])} (device) | "
                         f"{bc.fmt(r['fusion_host_ms'])} (host) | {bc.fmt(r['fusion_ratio'])} | |")
        lines.append(f"| 05 + 06 {r['arch']}, {inf.get('project_images')} images (s, projected) | "
                     f"{bc.fmt(r['projected_total_s'])} (05 {bc.fmt(r['projected_05_s'])} + 06 "
                     f"{bc.fmt(r['projected_06_s'])}) | | | <= {bc.fmt(inf.get('target_s'))} |")
    paste = inf.get("paste") or {}
    if "error" in paste:
        lines.append(f"| mask paste | error: {paste['error'][:80]} | | | |")
    elif paste:
        lines.append(f"| mask paste, {paste['detections']} masks into 512 x 512 (ms) | "
                     f"{bc.fmt(paste['paste_ours_ms'])} | {bc.fmt(paste['paste_stock_ms'])} (stock + resize) | "
                     f"{bc.fmt(paste['paste_ratio'])} | |")
    for name in SECTIONS:
        sec = report.get(name) or {}
        if "skipped" in sec:
            lines.append(f"| {name} | skipped ({sec['skipped']}) | | | |")
        elif "error" in sec and name in ("train", "infer", "pipeline"):
            lines.append(f"| {name} | error: {sec['error'][:80]} | | | |")
    inp = report.get("input") or {}
    if "skipped" in inp:
        pass
    elif "error" in inp:
        lines.append(f"| input pipeline | error: {inp['error'][:80]} | | | |")
    elif inp:
        lines.append(f"| input: loader vs model (img/s, {inp['workers']} workers) | {bc.fmt(inp['loader_img_s'])} | "
                     f"{bc.fmt(inp['model_img_s'])} (model) | {bc.fmt(inp['loader_ratio'])} | >= 1 |")
        lines.append(f"| input: end to end vs model only (img/s) | {bc.fmt(inp['end_to_end_img_s'])} | "
                     f"{bc.fmt(inp['model_img_s'])} | {bc.fmt(inp['end_to_end_ratio'])} | >= 0.95 |")
    pipe = report.get("pipeline") or {}
    for s in pipe.get("stages", []):
        lines.append(f"| pipeline {s['stage']} (s) | {s.get('seconds', s.get('skipped'))} | | | rc={s.get('rc')} |")
    for name, v in (pipe.get("val") or {}).items():
        lines.append(f"| short run {name}: val Kaggle / AP | {bc.fmt(v.get('val_kaggle'))} / {bc.fmt(v.get('val_AP'))} "
                     f"| | | |")
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--out", type=Path, default=Path("work/gpu_check"), help="output folder (JSON, table, logs)")
    p.add_argument("--cpu", action="store_true", help="tiny CPU mode (same code path, small sizes)")
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to run")
    p.add_argument("--budget-s", type=float, default=480.0,
                   help="skip the sections (and pipeline stages) that would start after this many seconds")
    p.add_argument("--wheels", type=Path, default=REPO / ".whl",
                   help="wheels of segmentation-models-pytorch / pycocotools, installed when they are missing")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    t_start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"check": "gpu_check", "mode": "cpu" if args.cpu else "gpu"}
    report["packages"] = ensure_packages(args.wheels)
    from bench import infer_bench, input_bench, train_bench

    device = bc.pick_device(args.cpu)
    dtype = bc.bench_dtype(device)
    report.update(bc.env_info(device))
    report["precision"] = str(dtype).replace("torch.", "") if dtype else "fp32"
    cfgs = configs(args.cpu)
    report["config"] = cfgs

    def left() -> float:
        return args.budget_s - (time.time() - t_start)

    def section(name: str, fn):
        if name not in args.sections:
            return
        if left() <= 0:
            report[name] = {"skipped": "time budget"}
            print(f"{name}: skipped (time budget)", flush=True)
            return
        print(f"{name} ...", flush=True)
        t0 = time.time()
        try:
            report[name] = fn()
        except Exception as e:  # keep the rest of the check
            report[name] = {"error": f"{type(e).__name__}: {e}"}
            print(f"  {name}: {report[name]['error']}", flush=True)
        report[name]["seconds"] = round(time.time() - t0, 1)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        bc.write_json(out / "gpu_check.json", report)  # partial results survive a kill

    section("box_precision", lambda: precision_check(cfgs["box_precision"], device))
    section("train", lambda: train_bench.run(cfgs["train"], device, dtype))
    section("infer", lambda: infer_bench.run(cfgs["infer"], device, dtype, work_dir=out / "infer"))

    def input_section():
        c = cfgs["input"]
        prepared = input_bench.ensure_cache(out / "input", c["n_train"], c["data_side"], c["long_side"],
                                            workers=max(1, min(8, os.cpu_count() or 1)))
        return input_bench.measure(prepared, c, device, dtype)

    section("input", input_section)
    section("pipeline", lambda: pipeline(cfgs["pipeline"], out, "cpu" if args.cpu else "cuda",
                                         budget_s=max(0.0, left())))
    section("amp", lambda: amp_compare(cfgs["amp"], out, "cpu" if args.cpu else "cuda"))
    report["total_seconds"] = round(time.time() - t_start, 1)
    table = summary_table(report)
    head = (f"gpu_check {report['date']} on {report.get('gpu', report.get('cpu'))}, torch {report['torch']}, "
            f"{report['precision']}, {report['total_seconds']} s")
    (out / "gpu_check.md").write_text(f"{head}\n\n{table}\n")
    bc.write_json(out / "gpu_check.json", report)
    print(f"\n{head}\n\n{table}\n\nwrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    return report


if __name__ == "__main__":
    main()
