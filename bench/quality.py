"""Model quality on the Kaggle-format synthetic benchmark: UNet, Mask R-CNN, DeepMAC and their ensemble,
DeepMAC's novel-class mask claim, and the attribute head. One JSON + Markdown tables.

Real-data accuracy cannot be measured offline (no Kaggle data, no pretrained weights), so this trains the
three models from scratch, for a fixed step budget each, on synthetic data in the competition's layout and
scores them on unseen synthetic images, through the same scripts a user runs:

1. data: four synthetic Kaggle-layout sets from different seeds (``lib.synthetic.generate_dataset``, the
   realistic images): train (prepared by ``01_prepare_data.py``; its val split gives the learning curves
   and picks ``best.pth``), val (prepared with ``--val-fraction 1``: the images 06 tunes on), test (scored)
   and pretrain (the fine-tuning comparison's starting run);
2. training (``02/03/04``, two or three runs at a time, validated every epoch or two: the learning curves,
   val Kaggle metric against step): ``unet``; ``maskrcnn`` (all masks, with ``--attr-head``: the attribute
   run); ``deepmac`` (all masks); the DeepMAC claim runs, masks of one group only (``--mask-categories
   garments``): ``maskrcnn_garments`` (stock per-class mask head), ``maskrcnn_agnostic_garments``
   (class-agnostic mask head: the paper's baseline) and ``deepmac_garments``; and the fine-tuning
   comparison on another seed's images (the pretrain set, its own val split): ``maskrcnn_finetune``
   (``--weights`` the ``maskrcnn`` run's best.pth, trained on the train seed) vs ``maskrcnn_scratch``,
   the same steps;
3. ``05_predict.py`` (flip TTA, plus scales in GPU mode) on the val images and the test images;
   ``06_make_submission.py --tune-on`` chooses the combination and thresholds on val and scores on test;
4. in-process scoring (``lib.scoring.score_table`` with the winning recipe's post-processing,
   ``lib.postprocess.Params()``): Kaggle metric and COCO mask AP of every model, of the three
   main models fused with equal weights (``ensemble``) and of 06's val-tuned combination (``submission``), on
   all classes and per class group (garments 0-26, parts 27-45: ground truth and predictions restricted
   to the group, scored on the test images that contain it; COCO AP per group = mean of its categories'
   AP, ``lib.evaluator.group_scores``);
5. oracle boxes: each detector's mask branch run at the ground-truth boxes of the test images
   (``lib.models.maskrcnn.masks_for_boxes``), mean mask IoU and the fraction with IoU >= 0.5 per group:
   the mask head alone, which is what the DeepMAC claim is about (Birodkar et al., ICCV 2021: trained
   with masks of only some classes, a deep hourglass head trained on ground-truth boxes segments the
   other classes far better; COCO VOC -> non-VOC, ResNet-50 with the default head 25.9 mask AP,
   Hourglass-52 33.1). The box itself as the mask (``box_fill``) is the floor a head has to beat, and
   each config freshly initialised (``init``) shows how far training moved the head;
6. attributes (``maskrcnn`` run): attribute F1 (``lib.attribute_metric.AttributeEvaluator``) of the post-processed
   test predictions, of the head at the ground-truth boxes (its box-head features there) against a prior
   (per category, the attributes present in at least half of its training instances) and against the head
   retrained alone on the frozen detector's features (``refit``: what the features hold that joint training
   did not take), and the Kaggle metric with attributes on (full ClassIds) vs off.

Commands (run from the repository root)::

    python bench/quality.py --cpu                     # CPU mode: 600 training images at 128 px, <= 60 min on 2 cores
    python bench/quality.py                           # GPU mode: 512-1024 px, sized for <= 6 min on one H200
    python bench/quality.py --cpu --reuse             # rescore existing runs (skips finished stages)
    python bench/quality.py --tiny --out /tmp/q       # smoke size (tests/test_bench_quality.py)
    python bench/quality.py --cpu --ablation '--ema-decay 0.99'   # one feature, with vs without (<= 25 min)
    python bench/quality.py --cpu --claim-curve 6     # DeepMAC's claim against steps (two claim runs, 300 steps)

Floors (:data:`FLOORS`, test Kaggle metric after post-processing): each model >= 0.10 and 06's val-tuned
submission >= the best single model; ``quality.json`` says which are met.

Writes ``OUT/quality.json`` (after every stage, so an interrupted run keeps what it measured),
``OUT/quality.md`` (the tables), ``OUT/learning_curves.png``, ``OUT/logs/*.log`` (one per subprocess) and the data, runs and
predictions under ``OUT/data`` and ``OUT/work``. Default ``OUT``: ``work/bench_quality[_cpu|_tiny]``.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from bench import common as bc  # noqa: E402

GROUPS = ("garments", "parts")
PAPER = {"source": "Birodkar et al., ICCV 2021, COCO VOC -> non-VOC mask AP",
         "resnet50_default_head": 25.9, "hourglass52": 33.1}

_LIGHT_RPN = ["--rpn-post-nms-train", "300", "--rpn-pre-nms-test", "300", "--rpn-post-nms-test", "100",
              "--detections-per-img", "50"]
MODES = {
    # Two cores: one thread per process, two processes side by side (as demo.sh). Light RoI settings. Sized for
    # <= 60 minutes: hundreds of training images and hundreds of steps per model, validated every epoch
    # (the learning curves). The recipe of the measurements: resnet18-FPN detectors at 128 px, batch 4,
    # AdamW 5e-4, cosine; resnet18 UNet, lr 3e-3. Detectors train under bf16 autocast (1.6x faster a step on a
    # CPU with native bf16, no loss at equal steps: bench/RESULTS.md; fp32 where the CPU lacks it), 800 steps;
    # an --ablation's pair 400 steps each (the first pair <= 25 minutes).
    "cpu": dict(
        sides=(128, 176), long_side=128, n_train=600, n_val=60, n_test=60, n_pretrain=300,
        seeds=(101, 202, 303, 404),
        det=["--backbone", "resnet18", "--min-size", "128", "--max-size", "128", "--amp", "bf16",
             "--anchor-sizes", "16", "32", "64", "128", "256", *_LIGHT_RPN, "--box-batch-size-per-image", "64"],
        deepmac=["--mask-roi-size", "16", "--mask-head-depth", "2", "--mask-head-width", "64",
                 "--mask-head-stacks", "2"],
        unet=["--encoder", "resnet18", "--image-size", "128", "--decoder-channels", "128", "64", "32", "16", "16",
              "--min-area", "8"],
        det_budget=dict(epochs=20, steps=40, batch=4, lr=5e-4, warmup=20, val_every=4),
        ablation_budget=dict(epochs=10, steps=40, batch=4, lr=5e-4, warmup=20, val_every=2),
        claim_budget=dict(epochs=3, steps=50, batch=4, lr=5e-4, warmup=20, val_every=3),
        unet_budget=dict(epochs=10, steps=45, batch=12, lr=3e-3, warmup=20, val_every=1),  # 540 images: 45 steps
        finetune_budget=dict(epochs=2, steps=50, batch=4, lr=5e-4, warmup=10, val_every=1),
        scale_range=("0.8", "1.0"), val_images=40, val_score_thresh=0.3, lanes=2, threads=1, workers=0,
        device="cpu", tta=["--tta-flip"], predict_batch=4, tune=[], score_workers=2, prepare_workers=2),
    # Smoke size for the test suite: every stage, a couple of steps each.
    "tiny": dict(
        sides=(96, 128), long_side=128, n_train=8, n_val=3, n_test=3, n_pretrain=8, seeds=(101, 202, 303, 404),
        det=["--backbone", "resnet18", "--min-size", "96", "--max-size", "128",
             "--anchor-sizes", "16", "32", "64", "128", "256", *_LIGHT_RPN, "--box-batch-size-per-image", "16"],
        deepmac=["--mask-roi-size", "8", "--mask-head-depth", "1", "--mask-head-width", "16",
                 "--mask-head-stacks", "1"],
        unet=["--encoder", "resnet18", "--image-size", "128", "--decoder-channels", "32", "16", "16", "8", "8",
              "--min-area", "4"],
        det_budget=dict(epochs=1, steps=2, batch=2, lr=5e-4, warmup=1, val_every=1),
        ablation_budget=dict(epochs=1, steps=2, batch=2, lr=5e-4, warmup=1, val_every=1),
        claim_budget=dict(epochs=1, steps=2, batch=2, lr=5e-4, warmup=1, val_every=1),
        unet_budget=dict(epochs=1, steps=2, batch=2, lr=1e-3, warmup=1, val_every=1),
        finetune_budget=dict(epochs=2, steps=1, batch=2, lr=5e-4, warmup=1, val_every=1),
        scale_range=("0.8", "1.0"), val_images=2, val_score_thresh=0.3, lanes=2, threads=1, workers=0, device="cpu",
        tta=[], predict_batch=4, tune=["--weight-choices", "1", "--refine", "1"], score_workers=2,
        prepare_workers=1),
    # One H200: R50-FPN detectors (the paper's backbone) and the default DeepMAC head (hourglass, crop 32),
    # three trainings at a time on the one GPU, bf16 (--amp auto). 100 steps of 8 images each.
    "gpu": dict(
        sides=(512, 1024), long_side=1024, n_train=256, n_val=24, n_test=32, n_pretrain=128,
        seeds=(101, 202, 303, 404),
        det=["--backbone", "resnet50", "--min-size", "640", "--max-size", "1024"],
        deepmac=[],
        unet=["--encoder", "resnet34", "--image-size", "512"],
        det_budget=dict(epochs=5, steps=20, batch=8, lr=3e-4, warmup=20, val_every=1),
        ablation_budget=dict(epochs=5, steps=20, batch=8, lr=3e-4, warmup=20, val_every=1),
        claim_budget=dict(epochs=5, steps=20, batch=8, lr=3e-4, warmup=20, val_every=5),
        unet_budget=dict(epochs=5, steps=20, batch=8, lr=1e-3, warmup=20, val_every=1),
        finetune_budget=dict(epochs=2, steps=10, batch=8, lr=3e-4, warmup=5, val_every=1),
        scale_range=("0.7", "1.0"), val_images=16, val_score_thresh=0.5, lanes=3, threads=4, workers=4,
        device="cuda",
        tta=["--tta-flip", "--tta-scales", "0.8", "1.0", "1.2"], predict_batch=8, tune=[], score_workers=12,
        prepare_workers=8),
}

# 03 without a class-agnostic flag: run 03's own parser and engine call with the config key added.
_AGNOSTIC_03 = (
    "import importlib.util, sys\n"
    "spec = importlib.util.spec_from_file_location('stage03', '03_train_maskrcnn.py')\n"
    "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
    "a = m.get_args_parser().parse_args(sys.argv[1:])\n"
    "from lib import cli, engine\n"
    "engine.run('maskrcnn', dict(m.model_overrides(a), class_agnostic_masks=True), cli.train_settings(a),"
    " stage='03_train_maskrcnn')\n")


# --------------------------------------------------------------------------------------------- small helpers
def _finite(x):
    """float(x), or None for None/nan/inf (JSON-friendly)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def script_flags(script: str) -> set[str]:
    """Option strings of a numbered script's ``get_args_parser()``."""
    spec = importlib.util.spec_from_file_location(f"_bench_{Path(script).stem}", REPO / script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return set(mod.get_args_parser()._option_string_actions)


class Jobs:
    """Runs subprocesses from the repository root, ``lanes`` at a time, one log file each; records commands."""

    def __init__(self, logs: Path, lanes: int, env: dict):
        self.logs, self.lanes, self.env = logs, max(1, int(lanes)), env
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands: list[str] = []
        self.results: dict[str, dict] = {}

    def run(self, jobs: list[tuple]) -> None:
        """Run ``[(name, argv) or (name, argv, after), ...]`` in order, a job starting only once the job named
        ``after`` has finished; raise RuntimeError (with the end of its log) when one fails."""
        pending, running = [tuple(j) + (None,) * (3 - len(j)) for j in jobs], {}
        failed, done = [], set()
        while pending or running:
            while len(running) < self.lanes and not failed:
                ready = [j for j in pending if j[2] is None or j[2] in done or j[2] not in
                         {p[0] for p in pending} | set(running)]
                if not ready:
                    break
                pending.remove(ready[0])
                name, cmd, _ = ready[0]
                log = self.logs / f"{name}.log"
                self.commands.append(" ".join(str(c) if "\n" not in str(c) else "'<03 with class_agnostic_masks>'"
                                              for c in cmd))
                f = open(log, "w")
                f.write("$ " + " ".join(map(str, cmd)) + "\n")
                f.flush()
                p = subprocess.Popen([str(c) for c in cmd], cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                                     env=self.env)
                running[name] = (p, f, time.time(), log)
                print(f"  {name}: started", flush=True)
            time.sleep(0.2)
            for name in list(running):
                p, f, t0, log = running[name]
                if p.poll() is None:
                    continue
                f.close()
                del running[name]
                dt = round(time.time() - t0, 1)
                self.results[name] = {"rc": p.returncode, "seconds": dt, "log": str(log)}
                print(f"  {name}: rc={p.returncode} in {dt} s", flush=True)
                if p.returncode != 0:
                    failed.append(name)
                else:
                    done.add(name)
            if failed and not running:
                break
        if failed:
            tail = "\n".join(Path(self.results[failed[0]]["log"]).read_text(errors="replace").splitlines()[-25:])
            raise RuntimeError(f"{failed} failed; the end of {self.results[failed[0]]['log']}:\n{tail}")


# --------------------------------------------------------------------------------------------- stages
def _generate(task):
    from lib import synthetic

    out, kw = task
    return synthetic.generate_dataset(out, progress=False, **kw)


def make_data(cfg: dict, data: Path, sets=("train", "val", "test", "pretrain")) -> dict:
    """Synthetic Kaggle-layout sets from different seeds: ``train``, ``val``, ``test``, ``pretrain`` (those of
    ``sets``)."""
    lo, hi = cfg["sides"]
    s_train, s_val, s_test, s_pretrain = cfg["seeds"]
    tasks = [(data / "train", dict(n_train=cfg["n_train"], n_test=0, seed=s_train, min_side=lo, max_side=hi)),
             # 01 --val-fraction 1 still keeps one image, and one of every category seen twice, in its train
             # split: of n_val + 1 images, fewer land in val (8 of 13 in the CPU mode)
             (data / "val", dict(n_train=cfg["n_val"] + 1, n_test=0, seed=s_val, min_side=lo, max_side=hi)),
             (data / "test", dict(n_train=1, n_test=cfg["n_test"], seed=s_test, min_side=lo, max_side=hi)),
             # another seed's images: the run that the fine-tuning comparison starts from
             (data / "pretrain", dict(n_train=cfg["n_pretrain"], n_test=0, seed=s_pretrain, min_side=lo,
                                      max_side=hi))]
    named = [(n, t) for n, t in zip(("train", "val", "test", "pretrain"), tasks) if n in sets]
    with ProcessPoolExecutor(2, mp_context=get_context("fork")) as pool:
        metas = list(pool.map(_generate, [t for _, t in named]))
    return {name: {"dir": str(t[0]), "seed": t[1]["seed"], "train_images": m["counts"]["train_images"],
                   "test_images": m["counts"]["test_images"], "train_rows": m["counts"]["train_rows"],
                   "test_rows": m["counts"]["test_rows"]}
            for (name, t), m in zip(named, metas)}


FINE_TUNE_RUNS = ("maskrcnn_finetune", "maskrcnn_scratch")


def train_args(cfg: dict, w: Path, run: str, budget: dict, prepared: str = "prepared") -> list:
    """The flags every training run of the benchmark shares: data, output, the step budget, validation."""
    val = ["--val-every", str(budget["val_every"]), "--max-val-images", str(cfg["val_images"]),
           "--val-score-thresh", str(cfg["val_score_thresh"])] if cfg["val_images"] else ["--val-every", "0"]
    return ["--prepared-dir", w / prepared, "--out-dir", w / run, "--epochs", str(budget["epochs"]),
            "--max-steps-per-epoch", str(budget["steps"]), "--batch-size", str(budget["batch"]),
            "--lr", str(budget["lr"]), "--warmup-steps", str(budget["warmup"]), "--workers",
            str(cfg["workers"]), "--device", cfg["device"], "--threads",
            str(cfg["threads"] if cfg["device"] == "cpu" else 0),
            "--log-every", "5", "--scale-range", *cfg["scale_range"], "--seed", "0", *val]


def finished(run_dir: Path) -> bool:
    """Whether the training or the 05 run in ``run_dir`` ran to its end (its meta.json says ``done``): what
    ``--reuse`` and the ablations keep."""
    meta = run_dir / "meta.json"
    return meta.is_file() and json.loads(meta.read_text()).get("status") == "done"


def training_jobs(cfg: dict, w: Path, agnostic_flag: bool, claim_group: str, reuse: bool) -> list:
    """``[(run name, argv[, after])]`` of the trainings, longest first (Mask R-CNN is the slowest on CPU).

    Every run validates every ``val_every`` epochs on the same ``val_images`` images of the train set's val
    split (the learning curves). The fine-tuning comparison, on the ``pretrain`` seed's images and their
    own val split: ``maskrcnn_finetune`` starts from the ``maskrcnn`` run's ``best.pth`` (``--weights``, a
    model of the train seed's images), ``maskrcnn_scratch`` from random weights, the same budget.
    """
    py = sys.executable

    def common(run, budget, prepared="prepared"):
        return train_args(cfg, w, run, budget, prepared)

    b, cb, ub = cfg["det_budget"], cfg["claim_budget"], cfg["unet_budget"]
    det = cfg["det"]
    dm = [*det, *cfg["deepmac"]]
    agn = [py, "03_train_maskrcnn.py", "--class-agnostic-masks"] if agnostic_flag else [py, "-c", _AGNOSTIC_03]
    unet = [py, "02_train_unet.py", *cfg["unet"]]
    runs = [
        ("maskrcnn", [py, "03_train_maskrcnn.py", *common("maskrcnn", b), *det, "--attr-head"]),
        ("deepmac", [py, "04_train_deepmac.py", *common("deepmac", b), *dm]),
        ("unet", [*unet, *common("unet", ub)]),
        (f"maskrcnn_{claim_group}", [py, "03_train_maskrcnn.py", *common(f"maskrcnn_{claim_group}", cb), *det,
                                     "--mask-categories", claim_group]),
        (f"maskrcnn_agnostic_{claim_group}", [*agn, *common(f"maskrcnn_agnostic_{claim_group}", cb), *det,
                                              "--mask-categories", claim_group]),
        (f"deepmac_{claim_group}", [py, "04_train_deepmac.py", *common(f"deepmac_{claim_group}", cb), *dm,
                                    "--mask-categories", claim_group]),
        ("maskrcnn_finetune", [py, "03_train_maskrcnn.py", *common("maskrcnn_finetune", cfg["finetune_budget"],
                                                                   "prepared_pretrain"), *det, "--attr-head",
                               "--weights", w / "maskrcnn" / "best.pth"], "train_maskrcnn"),
        ("maskrcnn_scratch", [py, "03_train_maskrcnn.py", *common("maskrcnn_scratch", cfg["finetune_budget"],
                                                                 "prepared_pretrain"), *det, "--attr-head"]),
    ]
    out = []
    for name, cmd, *after in runs:
        if reuse and finished(w / name):
            continue
        shutil.rmtree(w / name, ignore_errors=True)  # a fixed budget: every run starts from scratch
        out.append((f"train_{name}", cmd, *after))
    return out


def learning_curves(w: Path, runs: list[str]) -> dict:
    """``{run: [[step, val Kaggle], ...]}`` from each run's metrics.jsonl (:func:`lib.viz.learning_curve`)."""
    from lib.viz import learning_curve

    return {r: [[s, v] for s, v in learning_curve(w / r / "metrics.jsonl")] for r in runs}


def fine_tune_report(curves: dict, training: dict) -> dict:
    """Fine-tuning from our checkpoint vs training from scratch at equal steps (val Kaggle on the same images)."""
    ft, sc = curves.get("maskrcnn_finetune") or [], curves.get("maskrcnn_scratch") or []
    final = {k: (c[-1][1] if c else None) for k, c in (("fine_tuned", ft), ("scratch", sc))}
    better = None if None in final.values() else final["fine_tuned"] > final["scratch"]
    return {"start": "the maskrcnn run's best.pth (train seed), fine-tuned on the pretrain seed's images",
            "steps": (training.get("maskrcnn_finetune") or {}).get("steps"),
            "val_kaggle_final": final, "fine_tuned_beats_scratch": better,
            "val_AP_final": {k: (training.get(r) or {}).get("val_AP") for k, r in
                             (("fine_tuned", "maskrcnn_finetune"), ("scratch", "maskrcnn_scratch"))}}


def training_summary(w: Path, runs: list[str]) -> dict:
    out = {}
    for run in runs:
        meta = w / run / "meta.json"
        if not meta.is_file():
            continue
        m = json.loads(meta.read_text())
        fm = m.get("final_metrics") or {}
        out[run] = {"arch": m.get("arch"), "steps": m.get("global_step"), "seconds": m.get("time_s"),
                    "mask_categories": (m.get("config") or {}).get("mask_categories") is not None,
                    "class_agnostic_masks": (m.get("config") or {}).get("class_agnostic_masks"),
                    "attr_head": (m.get("config") or {}).get("attr_head"),
                    **{k: _finite(fm.get(k)) for k in ("train_loss", "train_loss_mask", "train_loss_attr",
                                                       "val_kaggle", "val_AP", "val_attr_micro_f1",
                                                       "val_attr_macro_f1") if k in fm}}
    return out


def prediction_jobs(cfg: dict, w: Path, data: Path, main_runs: list, claim_runs: list, reuse: bool) -> list:
    py = sys.executable
    common = ["--batch-size", str(cfg["predict_batch"]), "--workers", str(cfg["workers"]), "--device",
              cfg["device"], "--threads", str(cfg["threads"] if cfg["device"] == "cpu" else 0), "--restart",
              "--no-progress", *cfg["tta"]]
    jobs = [("predict_val", [py, "05_predict.py", "--checkpoints", *[w / r for r in main_runs], "--prepared-dir",
                             w / "prepared_val", "--split", "val", "--out-dir", w / "pred_val", *common]),
            ("predict_test", [py, "05_predict.py", "--checkpoints", *[w / r for r in main_runs], "--data-dir",
                              data / "test", "--out-dir", w / "pred_test", *common]),
            ("predict_claim", [py, "05_predict.py", "--checkpoints", *[w / r for r in claim_runs], "--data-dir",
                               data / "test", "--out-dir", w / "pred_claim", *common])]
    return [j for j in jobs if not (reuse and (w / j[0].replace("predict", "pred") / "predictions.parquet").is_file()
                                    and (w / j[0].replace("predict", "pred") / "meta.json").is_file())]


def group_gt(gt_csv: Path, out_dir: Path) -> dict[str, Path]:
    """The test ground truth restricted to each class group (train.csv format), plus ``all``."""
    from lib.labels import CATEGORY_GROUPS

    df = pd.read_csv(gt_csv, dtype=str, keep_default_na=False)
    cat = df["ClassId"].str.split("_").str[0].astype(int)
    out = {"all": gt_csv}
    for g in GROUPS:
        p = out_dir / f"test_gt_{g}.csv"
        df[cat.isin(CATEGORY_GROUPS[g])].to_csv(p, index=False)
        out[g] = p
    return out


def _score_task(task):
    from lib import scoring as lscoring

    key, table, gt, params, images, coco = task
    torch.set_num_threads(1)
    s = lscoring.score_table(table, gt, params=params, images=images, coco=coco, per_class=coco, progress=False)
    return key, s


def score_tables(tables: dict, params_of: dict, gts: dict, images: pd.DataFrame, workers: int) -> dict:
    """Per table: ``all`` (Kaggle, AP, AP50, AP75 on every test image) and, per group, the Kaggle metric of
    the group-restricted ground truth and predictions, and the group's COCO AP (mean over its categories)."""
    from lib.labels import CATEGORY_GROUPS
    from lib.evaluator import group_scores

    tasks = []
    for name, table in tables.items():
        params = params_of[name]
        tasks.append(((name, "all"), table, gts["all"], params, images, True))
        for g in GROUPS:
            tasks.append(((name, g), table, gts[g], params.replace(keep_categories=g), None, False))
    with ProcessPoolExecutor(max(1, workers), mp_context=get_context("fork")) as pool:
        done = dict(pool.map(_score_task, tasks))
    out = {}
    for name in tables:
        a = done[(name, "all")]
        ap = group_scores(a.get("per_category_AP") or {}, {g: CATEGORY_GROUPS[g] for g in GROUPS})
        out[name] = {"all": {k: _finite(a[k]) for k in ("kaggle", "AP", "AP50", "AP75")},
                     "num_images": a["num_images"], "params": a["params"]}
        for g in GROUPS:
            out[name][g] = {"kaggle": _finite(done[(name, g)]["kaggle"]), "AP": _finite(ap[g]),
                            "num_images": done[(name, g)]["num_images"]}
    return out


def load_sources(pred_dir: Path) -> dict[str, pd.DataFrame]:
    """model name -> its rows of ``pred_dir/predictions.parquet`` (every model 05 listed, even with no rows)."""
    from lib import prediction_table as lpred

    table = lpred.read_table(pred_dir / "predictions.parquet")
    names = [m["name"] for m in json.loads((pred_dir / "meta.json").read_text()).get("models", [])]
    names += [n for n in dict.fromkeys(table["model"]) if n not in names]
    return {n: table[table["model"] == n].reset_index(drop=True) for n in names}


# --------------------------------------------------------------------------------------------- oracle boxes
def load_test_instances(gt_csv: Path, image_dir: Path, image_ids=None, keep_masks: bool = True) -> list[dict]:
    """Per test image (those of ``image_ids``, None = all): ``path``, ``masks (N, H, W)`` uint8 (with
    ``keep_masks``), ``boxes (N, 4)`` x1y1x2y2 (x2/y2 exclusive), ``categories (N,)``, ``attributes`` (N tuples),
    from a train.csv-format ground truth."""
    from lib import kaggle_data as lkaggle
    from lib import rle as lrle
    from lib.boxes import mask_bbox

    groups, problems = lkaggle.index_csv(gt_csv)
    if problems:
        raise ValueError(f"{gt_csv}: {problems[:3]}")
    out = []
    for image_id in sorted(groups if image_ids is None else set(groups) & set(image_ids)):
        rows, probs = lkaggle.read_rows(gt_csv, groups[image_id])
        if probs:
            raise ValueError(f"{gt_csv}: {probs[:3]}")
        masks = [np.ascontiguousarray(lrle.decode(r.rle, (r.height, r.width))) for r in rows]
        keep = [i for i, m in enumerate(masks) if m.any()]
        out.append({"image_id": image_id, "path": image_dir / image_id,
                    "masks": (np.stack([masks[i] for i in keep]) if keep else np.zeros((0, 1, 1), np.uint8))
                    if keep_masks else None,
                    "boxes": np.array([mask_bbox(masks[i]) for i in keep], np.float32).reshape(-1, 4),
                    "categories": np.array([rows[i].category for i in keep], np.int64),
                    "attributes": [rows[i].attributes for i in keep]})
    return out


def train_split_items(data: Path, prepared: Path, split: str = "train") -> list[dict]:
    """The instances (boxes, categories, attributes; no masks) of the ``split`` (train or val) that 01 made of
    ``data`` (its train.csv and images) in ``prepared``, as :func:`load_test_instances` gives them."""
    idx = pd.read_parquet(prepared / "index.parquet", columns=["image_id", "split"])
    return load_test_instances(data / "train.csv", data / "train", set(idx.image_id[idx.split == split]),
                               keep_masks=False)


def _iou_stats(ious: np.ndarray) -> dict:
    return {"n": int(ious.size), "mean_iou": _finite(ious.mean()) if ious.size else None,
            "iou50": _finite((ious >= 0.5).mean()) if ious.size else None,
            "iou75": _finite((ious >= 0.75).mean()) if ious.size else None}


def group_iou_stats(ious: np.ndarray, cats: np.ndarray) -> dict:
    from lib.labels import CATEGORY_GROUPS

    out = {"all": _iou_stats(ious)}
    for g in GROUPS:
        out[g] = _iou_stats(ious[np.isin(cats, CATEGORY_GROUPS[g])])
    return out


def oracle_masks(run_dirs: dict[str, Path], items: list[dict], device: torch.device, init: bool = True) -> dict:
    """Mask IoU of each model's mask branch at the ground-truth boxes (prob >= 0.5), per group, of the
    trained model (``run_dirs``: name -> training out-dir or checkpoint file) and, with ``init``, of the same
    config freshly initialised with the run's seed (where the training started); and ``box_fill``: the box
    itself as the mask (IoU = mask area / box area)."""
    from lib import models as lmodels
    from lib.checkpoint import load_checkpoint
    from lib.runtime import seed_everything
    from lib.models.maskrcnn import masks_for_boxes
    from lib.predict import resolve_checkpoint

    cats = np.concatenate([it["categories"] for it in items]) if items else np.zeros(0, np.int64)
    fill = [it["masks"].reshape(len(it["masks"]), -1).sum(1) /
            np.maximum(1, (it["boxes"][:, 2] - it["boxes"][:, 0]) * (it["boxes"][:, 3] - it["boxes"][:, 1]))
            for it in items]
    out = {"box_fill": group_iou_stats(np.concatenate(fill) if fill else np.zeros(0), cats)}
    from lib import kaggle_data as lkaggle

    images = {}
    for it in items:
        images[it["image_id"]] = torch.from_numpy(lkaggle.read_image(it["path"])).permute(2, 0, 1).float() / 255

    def stats(model):
        model.to(device).eval()
        ious = []
        for it in items:
            if not len(it["boxes"]):
                continue
            boxes = torch.from_numpy(it["boxes"]).to(device)
            labels = torch.from_numpy(it["categories"] + 1).to(device)
            prob = masks_for_boxes(model, [images[it["image_id"]].to(device)], [boxes], [labels])[0]
            pred = (prob >= 0.5).flatten(1)
            gt = torch.from_numpy(it["masks"]).to(device).flatten(1).bool()
            inter = (pred & gt).sum(1).float()
            union = (pred | gt).sum(1).float()
            ious.append((inter / union.clamp(min=1)).cpu().numpy())
        return group_iou_stats(np.concatenate(ious) if ious else np.zeros(0), cats)

    for name, d in run_dirs.items():
        model, ckpt = load_checkpoint(resolve_checkpoint(d))
        out[name] = stats(model)
        if init:
            seed_everything(int((ckpt.get("args") or {}).get("seed", 0)))  # as lib.engine.start_run does
            out[name]["init"] = stats(lmodels.build_model(ckpt["config"]))
        del model
    return out


# --------------------------------------------------------------------------------------------- attributes
def attribute_prior(train_csv: Path, n_attr: int) -> dict[int, np.ndarray]:
    """Per category: each attribute's frequency among its training instances."""
    from lib.labels import parse_class_id

    counts: dict[int, np.ndarray] = {}
    totals: dict[int, int] = {}
    for cid in pd.read_csv(train_csv, usecols=["ClassId"], dtype=str)["ClassId"]:
        c, attrs = parse_class_id(cid)
        counts.setdefault(c, np.zeros(n_attr))[list(attrs)] += 1
        totals[c] = totals.get(c, 0) + 1
    return {c: counts[c] / totals[c] for c in counts}


def _multi_hot(attrs, n_attr: int) -> np.ndarray:
    """``(n_attr,)`` 0/1 vector of the attribute ids ``attrs``."""
    v = np.zeros(n_attr)
    v[list(attrs)] = 1
    return v


def _attr_summary(s: dict) -> dict:
    return {k: _finite(s[k]) if isinstance(s[k], float) else s[k]
            for k in ("micro_f1", "macro_f1", "precision", "recall", "tp", "fp", "fn", "num_instances")}


def _attribute_samples(items: list[dict], n_attr: int):
    """:func:`lib.attribute_refit.attribute_rows`'s samples from :func:`load_test_instances` items."""
    from lib import kaggle_data as lkaggle

    for it in items:
        img = torch.from_numpy(lkaggle.read_image(it["path"])).permute(2, 0, 1).float().div(255)
        attrs = np.stack([_multi_hot(a, n_attr) for a in it["attributes"]]) if it["attributes"] else \
            np.zeros((0, n_attr))
        yield (img, torch.from_numpy(it["boxes"]), torch.from_numpy(np.asarray(it["categories"]) + 1),
               torch.from_numpy(attrs))


def oracle_attributes(run_dir: Path, items: list[dict], train_csv: Path, device: torch.device,
                      train_items: list[dict] | None = None, val_items: list[dict] | None = None) -> dict:
    """The attribute head of ``run_dir``'s model at the ground-truth boxes (and labels) of the attribute-category
    test instances (``oracle_boxes``), against the per-category prior of ``train_csv`` (``prior``: each
    attribute predicted where its frequency in the instance's category is >= 0.5): micro / macro F1. With
    ``train_items`` (the training split's instances) and a head the run did not refit itself
    (``refit_in_checkpoint`` otherwise) also ``refit``: the head retrained alone on the frozen
    detector's features at those instances' boxes (``lib.attribute_refit.refit_head``, its ``DEFAULT_STEPS``,
    as 03 / 04 ``--attr-refit-steps`` do to best.pth), at the same test boxes. With ``val_items`` (the val
    split's instances) also ``tuned`` and ``prior_tuned``: the refit head (else the run's) and the prior with one
    threshold per attribute tuned on the val split's ground-truth boxes (``lib.attribute_metric.tune_thresholds``,
    as 06 tunes them), at the test boxes."""
    from lib.attribute_refit import DEFAULT_STEPS, REFIT_DEFAULTS, attribute_rows, refit_head
    from lib.checkpoint import load_checkpoint
    from lib.labels import N_ATTRIBUTES
    from lib.attribute_metric import multilabel_f1, tune_thresholds
    from lib.predict import resolve_checkpoint

    model, ckpt = load_checkpoint(resolve_checkpoint(run_dir))
    model.to(device).eval()
    head = model.roi_heads.attr_predictor
    try:
        feats, labels, g = attribute_rows(model, _attribute_samples(items, N_ATTRIBUTES), device)
    except ValueError:  # no attribute-category instance among the test items
        return {}
    g = g.numpy()
    prior = attribute_prior(train_csv, N_ATTRIBUTES)

    def prior_scores(cats):
        return np.stack([prior.get(int(c) - 1, np.zeros(N_ATTRIBUTES)) for c in cats])

    def scores(h, f=feats, cats=labels):
        with torch.no_grad():
            return torch.sigmoid(h(f.to(device), cats.to(device)).float()).cpu().numpy()

    out = {"oracle_boxes": _attr_summary(multilabel_f1(g, scores(head))),
           "prior": _attr_summary(multilabel_f1(g, prior_scores(labels)))}
    best = head
    if ckpt.get("attr_refit"):  # the run refit its head already (03 / 04 --attr-refit-steps)
        out["refit_in_checkpoint"] = ckpt["attr_refit"]
    elif train_items:
        best = refit_head(head, *attribute_rows(model, _attribute_samples(train_items, N_ATTRIBUTES), device),
                          steps=DEFAULT_STEPS, **REFIT_DEFAULTS).to(device)
        out["refit"] = _attr_summary(multilabel_f1(g, scores(best)))
    try:
        vf, vl, vg = attribute_rows(model, _attribute_samples(val_items, N_ATTRIBUTES), device) if val_items else ()
    except ValueError:  # no attribute-category instance among the val items
        vf = ()
    if len(vf):
        out["tuned"] = _attr_summary(multilabel_f1(g, scores(best), tune_thresholds(vg.numpy(), scores(best, vf, vl))))
        out["prior_tuned"] = _attr_summary(multilabel_f1(g, prior_scores(labels),
                                                         tune_thresholds(vg.numpy(), prior_scores(vl))))
        out["val_instances"] = int(len(vl))
    del model
    return out


def attributes_report(run_dir: Path, table: pd.DataFrame, items: list[dict], gt_csv: Path, train_csv: Path,
                      images: pd.DataFrame, device: torch.device, kaggle_off: float | None,
                      train_items: list[dict] | None = None, val_items: list[dict] | None = None) -> dict:
    from lib import postprocess as lpost
    from lib import scoring as lscoring
    from lib.labels import ATTRIBUTE_CATEGORIES, N_ATTRIBUTES, parse_class_id
    from lib.attribute_metric import AttributeEvaluator

    out = {"run": run_dir.name, "categories": list(ATTRIBUTE_CATEGORIES)}
    # 1. oracle boxes: the head at the ground-truth boxes of attribute categories, against the prior
    out.update(oracle_attributes(run_dir, items, train_csv, device, train_items, val_items))
    # 2. the pipeline: post-processed test predictions with attributes on, matched at mask IoU >= 0.5
    params_on = lpost.Params(attributes="on")
    gt = lscoring.load_ground_truth(gt_csv, 512, full_class_ids=True, progress=False)
    ev = AttributeEvaluator()
    by_image = table.groupby("image_id").indices if len(table) else {}
    for image_id, (gmasks, keys) in gt.items():
        parsed = [parse_class_id(k) for k in keys]
        rows = table.iloc[by_image[image_id]] if image_id in by_image else table.iloc[:0]
        insts = lpost.postprocess_image(rows, params_on, (512, 512))
        pc = [parse_class_id(cid) for cid, _, _ in insts]
        ev.add(gmasks, [c for c, _ in parsed],
               np.stack([_multi_hot(a, N_ATTRIBUTES) for _, a in parsed]) if parsed else None,
               np.stack([m for _, m, _ in insts]) if insts else np.zeros((0, 512, 512), np.uint8),
               [c for c, _ in pc], [s for _, _, s in insts],
               np.stack([_multi_hot(a, N_ATTRIBUTES) for _, a in pc]) if pc else None)
    out["pipeline"] = dict(_attr_summary(ev.summary()), num_gt=ev.num_gt, num_pred=ev.num_pred)
    on = lscoring.score_table(table, gt_csv, params=params_on, class_keys="class_id", coco=False, per_class=False,
                          images=images, progress=False)
    out["kaggle_attributes_on"] = _finite(on["kaggle"])
    out["kaggle_attributes_off"] = kaggle_off
    return out


# --------------------------------------------------------------------------------------------- report
FLOORS = {"maskrcnn": 0.10, "deepmac": 0.10, "unet": 0.10}  # test Kaggle metric after post-processing


def floors(scores_06: dict, combination: dict | None, floor_of: dict) -> dict:
    """Each model's test Kaggle metric after 06's val-tuned post-processing (06's ``scores.json``) against
    its floor, and 06's submission (the val-tuned ``combination``, as scores.json holds it) against the best
    single model."""
    def kaggle(name):
        return (scores_06.get(name) or {}).get("kaggle")

    out = {n: {"floor": f, "kaggle": kaggle(n), "met": kaggle(n) is not None and kaggle(n) >= f}
           for n, f in floor_of.items()}
    if "submission" in scores_06:
        sub = kaggle("submission")
    elif combination and len(combination.get("models", [])) == 1:  # the chosen combination is one model
        sub = kaggle(combination["models"][0])
    else:  # every model with equal weights: 06 scored it as the ensemble
        sub = kaggle("ensemble")
    best = max((kaggle(n) for n in floor_of if kaggle(n) is not None), default=None)
    out["submission"] = {"floor": best, "kaggle": sub, "met": None if best is None or sub is None else sub >= best}
    return out


def markdown(rep: dict) -> str:
    f = lambda v, d=4: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    lines = [f"Mode `{rep['mode']}`, {rep['env'].get('date')}, {rep['env'].get('gpu') or rep['env'].get('cpu')}"
             f" ({rep['env'].get('cpu_count')} cores), torch {rep['env'].get('torch')}, "
             f"{rep.get('seconds_total', '-')} s in all.", ""]
    if rep.get("training"):
        lines += ["| run | steps | s | train loss | mask loss | val Kaggle | val AP |", "|---|---|---|---|---|---|---|"]
        for k, t in rep["training"].items():
            lines.append(f"| {k} | {t.get('steps')} | {t.get('seconds')} | {f(t.get('train_loss'), 3)} | "
                         f"{f(t.get('train_loss_mask'), 3)} | {f(t.get('val_kaggle'))} | {f(t.get('val_AP'))} |")
        lines.append("")
    sc = rep.get("scores") or {}
    if sc:
        lines += ["Test set, post-processing = the winning recipe (06's val-tuned one for `submission`):", "",
                  "| model | Kaggle all | Kaggle garments | Kaggle parts | mask AP all | AP garments | AP parts |",
                  "|---|---|---|---|---|---|---|"]
        for k, s in sc.items():
            lines.append(f"| {k} | {f(s['all']['kaggle'])} | {f(s['garments']['kaggle'])} | "
                         f"{f(s['parts']['kaggle'])} | {f(s['all']['AP'])} | {f(s['garments']['AP'])} | "
                         f"{f(s['parts']['AP'])} |")
        lines.append("")
    s06 = rep.get("scores_06") or {}
    if s06:
        lines += ["Test set, post-processing = 06's, tuned on the val seed (scores.json):", "",
                  "| model | Kaggle | mask AP | AP50 | AP75 |", "|---|---|---|---|---|"]
        lines += [f"| {k} | {f(v.get('kaggle'))} | {f(v.get('AP'))} | {f(v.get('AP50'))} | {f(v.get('AP75'))} |"
                  for k, v in s06.items()]
        lines.append("")
    fl = rep.get("floors") or {}
    if fl:
        lines += ["Floors (test Kaggle metric after 06's val-tuned post-processing; the submission's floor is the "
                  "best single model):", "",
                  "| model | floor | test Kaggle | met |", "|---|---|---|---|"]
        lines += [f"| {k} | {f(v['floor'])} | {f(v['kaggle'])} | {v['met']} |" for k, v in fl.items()]
        lines.append("")
    lc = rep.get("learning_curves") or {}
    if any(lc.values()):
        lines += [f"Learning curves: val Kaggle (the train set's val split, {rep['config'].get('val_images')} "
                  f"images; the fine-tuning runs on the pretrain seed's val split) at step:", ""]
        for k, pts in lc.items():
            lines.append(f"- {k}: " + (", ".join(f"{s}: {v:.4f}" for s, v in pts) or "-"))
        lines.append("")
    ft = rep.get("fine_tune") or {}
    if ft:
        fin = ft["val_kaggle_final"]
        ap = ft.get("val_AP_final") or {}
        lines += [f"Fine-tuning (Mask R-CNN, {ft.get('steps')} steps each on the pretrain seed's images): from our "
                  f"checkpoint (`--weights` the `maskrcnn` run's best.pth, trained on the train seed) val Kaggle "
                  f"{f(fin['fine_tuned'])} (mask AP {f(ap.get('fine_tuned'))}), from scratch {f(fin['scratch'])} "
                  f"(mask AP {f(ap.get('scratch'))}); fine-tuned beats scratch: {ft['fine_tuned_beats_scratch']}.",
                  ""]
    cl = rep.get("deepmac_claim") or {}
    if cl.get("oracle"):
        held = cl["held_out_group"]
        lines += [f"DeepMAC claim: masks trained on `{cl['train_group']}` only, evaluated on `{held}` "
                  f"(oracle = mask branch at the ground-truth boxes, mask prob >= 0.5):", "",
                  f"| run | masks trained on | oracle mIoU {cl['train_group']} | oracle mIoU {held} | "
                  f"IoU>=0.5 {held} | at init: mIoU {cl['train_group']} / {held} | pipeline AP {held} | "
                  f"pipeline Kaggle {held} |", "|---|---|---|---|---|---|---|---|"]
        for k, o in cl["oracle"].items():
            p = (sc.get(k) or {}).get(held) or {}
            trained = "-" if k == "box_fill" else (cl["train_group"] if k.endswith(cl["train_group"]) else "all")
            init = o.get("init")
            at_init = "-" if init is None else \
                f"{f(init[cl['train_group']]['mean_iou'], 3)} / {f(init[held]['mean_iou'], 3)}"
            lines.append(f"| {k} | {trained} | {f(o[cl['train_group']]['mean_iou'], 3)} | "
                         f"{f(o[held]['mean_iou'], 3)} | {f(o[held]['iou50'], 3)} | {at_init} | {f(p.get('AP'))} | "
                         f"{f(p.get('kaggle'))} |")
        lines.append("")
    at = rep.get("attributes") or {}
    if at:
        lines += [f"Attributes (`{at.get('run')}` run, attribute categories only):", "",
                  "| measure | micro F1 | macro F1 | instances |", "|---|---|---|---|"]
        for k in ("oracle_boxes", "prior", "refit", "tuned", "prior_tuned", "pipeline"):
            if k in at:
                lines.append(f"| {k} | {f(at[k]['micro_f1'], 3)} | {f(at[k]['macro_f1'], 3)} | "
                             f"{at[k]['num_instances']} |")
        if "tuned" in at:
            lines += ["", f"tuned / prior_tuned: one threshold per attribute tuned on the val split's "
                          f"{at['val_instances']} ground-truth boxes (`lib.attribute_metric.tune_thresholds`, micro F1, "
                          f"as 06 tunes them)."]
        if at.get("refit_in_checkpoint"):
            lines += ["", f"The run's head was refit on its frozen features after training "
                          f"({at['refit_in_checkpoint']['steps']} steps, `--attr-refit-steps`): oracle_boxes is that head."]
        lines += ["", f"Kaggle metric with attributes on (full ClassIds): {f(at.get('kaggle_attributes_on'))}; "
                      f"off: {f(at.get('kaggle_attributes_off'))}.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- main
# --------------------------------------------------------------------------------------------- ablation
# The training script, model flags and step budget of each arch an ablation can run on.
ABLATION_ARCHS = {"maskrcnn": ("03_train_maskrcnn.py", "ablation_budget"),
                  "deepmac": ("04_train_deepmac.py", "ablation_budget"),
                  "unet": ("02_train_unet.py", "unet_budget")}


def _ablation_model_flags(cfg: dict, arch: str) -> list:
    return {"maskrcnn": cfg["det"], "deepmac": [*cfg["det"], *cfg["deepmac"]], "unet": cfg["unet"]}[arch]


def train_and_test_data(cfg: dict, out: Path, jobs, reuse: bool) -> dict | None:
    """The train and test seeds' images under ``out/data`` and the train seed's prepared set under
    ``out/work/prepared`` (01), as an ablation or the claim curve uses them; what exists is kept with ``reuse``.
    Returns :func:`make_data`'s summary, or None when the images were kept."""
    data, w = out / "data", out / "work"
    summary = None
    if not (reuse and (data / "test" / "test_ground_truth.csv").is_file()):
        summary = make_data(cfg, data, sets=("train", "test"))
    if not (reuse and (w / "prepared" / "meta.json").is_file()):
        jobs.run([("01_prepared", [sys.executable, "01_prepare_data.py", "--data-dir", data / "train", "--out-dir",
                                   w / "prepared", "--long-side", str(cfg["long_side"]), "--processes",
                                   str(cfg["prepare_workers"]), "--no-progress"])])
    return summary


def _slug(flags) -> str:
    """Training flags as a folder name: ``--attr-head --lr 1e-3`` -> ``attr-head_lr_1e-3`` (long ones shortened,
    with a digest of the whole)."""
    text = "_".join(re.sub(r"[^A-Za-z0-9.=-]+", "-", f.lstrip("-")) for f in flags) or "none"
    return text if len(text) <= 60 else f"{text[:50]}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def ablation_runs(arch: str, flags, base=()) -> dict:
    """The folders under ``OUT/work`` of an ablation's two runs: ``{"without": the baseline, "with": ...}``. The
    baseline's name depends on ``arch`` and ``base`` only, so every ablation of that arch and base under one ``--out``
    shares it."""
    baseline = f"base_{arch}" + (f"_{_slug(base)}" if base else "")
    return {"without": baseline, "with": f"{baseline}__{_slug(flags)}"}


def ablation(cfg: dict, arch: str, flags: list[str], out: Path, jobs, reuse: bool, base=()) -> dict:
    """One recipe feature measured: ``arch`` trained without and with the training ``flags`` (e.g.
    ``--ema-decay 0.99``) on the train seed's images, the same steps; both predicted on the held-out test seed's
    images (05, the mode's TTA) and scored with the winning recipe's post-processing: Kaggle metric and COCO mask
    AP, per class group, per category (AP), and the val learning curves. ``base``: flags both runs get (e.g.
    ``--attr-head``); with an attribute head, each run's attribute F1 at the test seed's ground-truth boxes too
    (:func:`oracle_attributes`), against the per-category prior.

    The data, the prepared set and the baseline (:func:`ablation_runs`) with its test predictions are deterministic
    in the mode, so they are kept once finished with the command the mode gives them now
    (``OUT/work/<run>.argv.json``; delete ``OUT/work/base_*`` after changing the training code): the first ablation
    under an ``--out`` trains and predicts the pair, each later one (of the same arch and base) only its ``with``
    run. On CPU the runs go one after another, each with every lane's threads (2.05 s a step alone
    against 4.6 s for each of two side by side on 2 cores); on a GPU side by side. ``reuse`` also keeps a finished
    ``with`` run."""
    from lib import scoring as lscoring
    from lib import postprocess as lpost

    data, w, py = out / "data", out / "work", sys.executable
    rep: dict = {"arch": arch, "flags": flags, "base": list(base), "timings": {}}
    t0 = time.time()
    rep["data"] = train_and_test_data(cfg, out, jobs, True)
    rep["timings"]["data"] = round(time.time() - t0, 1)
    script, budget = ABLATION_ARCHS[arch]
    model = _ablation_model_flags(cfg, arch)
    dirs = ablation_runs(arch, flags, base)
    rep["runs"] = dirs
    extras = {"without": [], "with": list(flags)}
    cpu = cfg["device"] == "cpu"
    lone = dict(cfg, threads=cfg["threads"] * cfg["lanes"]) if cpu else cfg
    def command(name):  # the training's argv after the interpreter; large-scale jitter replaces --scale-range
        args = train_args(lone, w, dirs[name], cfg[budget])
        if "--lsj" in extras[name]:
            k = args.index("--scale-range")
            args = args[:k] + args[k + 3:]
        return [str(a) for a in (script, *args, *model, *base, *extras[name])]

    # A run is kept when it finished with the command this mode gives it now (OUT/work/<run>.argv.json).
    commands = {n: command(n) for n in dirs}
    recorded = {n: w / f"{dirs[n]}.argv.json" for n in dirs}
    todo = [n for n in dirs if not (finished(w / dirs[n]) and (n == "without" or reuse) and recorded[n].is_file()
                                    and json.loads(recorded[n].read_text()) == commands[n])]
    rep["trained"] = {n: n in todo for n in dirs}
    t0 = time.time()
    def run(batch):  # on CPU one after another, each with every lane's threads; on a GPU side by side
        for part in ([[j] for j in batch] if cpu else [batch]):
            jobs.run(part)

    run([(f"train_{dirs[n]}", [py, *commands[n]]) for n in todo])
    for n in todo:
        bc.write_json(recorded[n], commands[n])
    rep["timings"]["train"] = round(time.time() - t0, 1)
    t0 = time.time()
    preds = {n: w / f"pred_test_{dirs[n]}" for n in dirs}
    run([(f"predict_{dirs[n]}", [py, "05_predict.py", "--checkpoints", w / dirs[n], "--names", n, "--data-dir",
                                 data / "test", "--out-dir", preds[n], "--batch-size", str(cfg["predict_batch"]),
                                 "--workers", str(cfg["workers"]), "--device", cfg["device"], "--threads",
                                 str(lone["threads"] if cpu else 0), "--restart", "--no-progress", *cfg["tta"]])
         for n in dirs if n in todo or not finished(preds[n])])
    rep["timings"]["predict"] = round(time.time() - t0, 1)
    t0 = time.time()
    gt_csv = data / "test" / "test_ground_truth.csv"
    tables = {**load_sources(preds["without"]), **load_sources(preds["with"])}
    images = pd.read_parquet(preds["with"] / "images.parquet")
    recipe = lpost.Params()
    rep["scores"] = score_tables(tables, {k: recipe for k in tables}, group_gt(gt_csv, w), images,
                                 cfg["score_workers"])
    per_cat = {k: lscoring.score_table(t, gt_csv, recipe, images=images, progress=False)["per_category_AP"]
               for k, t in tables.items()}
    cats = sorted(set(per_cat["without"]) | set(per_cat["with"]))
    rep["per_category_AP"] = {int(c): {"without": _finite(per_cat["without"].get(c)),
                                       "with": _finite(per_cat["with"].get(c))} for c in cats}
    rep["timings"]["score"] = round(time.time() - t0, 1)
    if "--attr-head" in [*base, *flags] and arch != "unet":
        t0 = time.time()
        items = load_test_instances(gt_csv, data / "test" / "test")
        train_items = train_split_items(data / "train", w / "prepared")
        val_items = train_split_items(data / "train", w / "prepared", "val")
        rep["attributes"] = {name: oracle_attributes(w / d, items, data / "train" / "train.csv",
                                                     torch.device(cfg["device"]), train_items, val_items)
                             for name, d in dirs.items()}
        rep["timings"]["attributes"] = round(time.time() - t0, 1)
    rep["training"] = {n: v for n, d in dirs.items() for v in [training_summary(w, [d]).get(d)] if v}
    rep["learning_curves"] = {n: learning_curves(w, [d])[d] for n, d in dirs.items()}
    a, b = rep["scores"]["without"]["all"], rep["scores"]["with"]["all"]
    rep["delta"] = {k: (None if a[k] is None or b[k] is None else b[k] - a[k]) for k in a}
    return rep


# --------------------------------------------------------------------------------------------- claim curve
def claim_curve(cfg: dict, group: str, epochs: int, out: Path, jobs, reuse: bool, device: torch.device,
                deepmac_flags: list[str] | None = None) -> dict:
    """DeepMAC's claim against steps: the class-agnostic Mask R-CNN head (the paper's baseline) and DeepMAC,
    trained with the masks of ``group`` only for ``epochs`` epochs of the mode's claim budget (the full
    benchmark's claim runs are its first epochs, but with the schedule's cosine over ``epochs``), every epoch's
    weights kept (``--keep-epochs``); at step 0 (the run's seeded init) and every kept epoch, the mask branch at
    the held-out group's ground-truth boxes of the test seed (:func:`oracle_masks`): mean IoU and share at
    IoU >= 0.5, against the box itself as the mask. ``deepmac_flags``: DeepMAC's head flags instead of the
    mode's (e.g. the default head's crop and depth)."""
    data, w, py = out / "data", out / "work", sys.executable
    held = [g for g in GROUPS if g != group][0]
    head = list(cfg["deepmac"] if deepmac_flags is None else deepmac_flags)
    rep: dict = {"train_group": group, "held_out_group": held, "deepmac_flags": head, "timings": {}}
    t0 = time.time()
    train_and_test_data(cfg, out, jobs, reuse)
    rep["timings"]["data"] = round(time.time() - t0, 1)
    budget = dict(cfg["claim_budget"], epochs=epochs, val_every=epochs)
    runs = {"agnostic": (f"maskrcnn_agnostic_{group}", [py, "03_train_maskrcnn.py", "--class-agnostic-masks"]),
            "deepmac": (f"deepmac_{group}", [py, "04_train_deepmac.py", *head])}
    t0 = time.time()
    jobs.run([(f"train_{name}", [*cmd, *train_args(cfg, w, name, budget), *cfg["det"], "--mask-categories", group,
                                 "--keep-epochs", *(str(e) for e in range(1, epochs + 1))])
              for name, cmd in runs.values() if not (reuse and finished(w / name))])
    rep["timings"]["train"] = round(time.time() - t0, 1)
    t0 = time.time()
    items = load_test_instances(data / "test" / "test_ground_truth.csv", data / "test" / "test")
    first = oracle_masks({key: w / name for key, (name, _) in runs.items()}, items, device)
    rep["box_fill"] = first["box_fill"][held]
    steps = budget["steps"]
    rep["curve"] = {key: [{"step": 0, **first[key]["init"][held]}] for key in runs}
    for e in range(1, epochs + 1):
        at = oracle_masks({key: w / name / f"model_{e}.pth" for key, (name, _) in runs.items()}, items, device,
                          init=False)
        for key in runs:
            rep["curve"][key].append({"step": e * steps, **at[key][held]})
    rep["timings"]["oracle"] = round(time.time() - t0, 1)
    return rep


def claim_curve_markdown(rep: dict) -> str:
    """The claim curve as one table: step, then mean IoU / share >= 0.5 of each head; box fill last."""
    def f(x):
        return "-" if x is None else f"{x:.3f}"

    lines = [f"### DeepMAC's claim against steps: masks of {rep['train_group']} only, oracle boxes of the held-out "
             f"{rep['held_out_group']} ({rep['box_fill']['n']} test instances); DeepMAC `{' '.join(rep['deepmac_flags'])}`",
             "",
             "| step | class-agnostic Mask R-CNN mean IoU | IoU >= 0.5 | DeepMAC mean IoU | IoU >= 0.5 |",
             "|---|---|---|---|---|"]
    for a, d in zip(rep["curve"]["agnostic"], rep["curve"]["deepmac"]):
        lines.append(f"| {a['step']} | {f(a['mean_iou'])} | {f(a['iou50'])} | {f(d['mean_iou'])} | {f(d['iou50'])} |")
    b = rep["box_fill"]
    lines += [f"| box fill | {f(b['mean_iou'])} | {f(b['iou50'])} | {f(b['mean_iou'])} | {f(b['iou50'])} |", "",
              f"{sum(rep['timings'].values()):.0f} s ({rep['timings']})."]
    return "\n".join(lines)


def ablation_markdown(rep: dict) -> str:
    """The ablation's tables: scores without / with / difference, per group, the categories that moved most."""
    s, d = rep["scores"], rep["delta"]
    both = f" (both runs: `{' '.join(rep['base'])}`)" if rep.get("base") else ""
    lines = [f"### {rep['arch']}: without vs with `{' '.join(rep['flags'])}`{both} (test seed, recipe post-processing)",
             "",
             "| | Kaggle | mask AP | AP50 | AP75 | Kaggle garments | Kaggle parts | AP garments | AP parts |",
             "|---|---|---|---|---|---|---|---|---|"]

    def f(x):
        return "-" if x is None else f"{x:.4f}"

    for name in ("without", "with"):
        r = s[name]
        lines.append(f"| {name} | " + " | ".join(f(r["all"][k]) for k in ("kaggle", "AP", "AP50", "AP75")) + " | "
                     + " | ".join(f(r[g][k]) for k in ("kaggle", "AP") for g in GROUPS) + " |")
    lines.append("| with - without | " + " | ".join(f(d[k]) for k in ("kaggle", "AP", "AP50", "AP75"))
                 + " | | | | |")
    moved = sorted(((c, v["with"] - v["without"]) for c, v in rep["per_category_AP"].items()
                    if v["with"] is not None and v["without"] is not None), key=lambda x: -abs(x[1]))[:8]
    if moved:
        lines += ["", "Categories whose AP moved most (with - without): "
                  + ", ".join(f"{c}: {x:+.3f}" for c, x in moved)]
    attrs = rep.get("attributes") or {}
    if attrs.get("without"):
        lines += ["", "Attributes at the test seed's ground-truth boxes (micro / macro F1): "
                  + ", ".join(f"{name} {f(a['oracle_boxes']['micro_f1'])} / {f(a['oracle_boxes']['macro_f1'])}"
                              for name, a in attrs.items() if a)
                  + f"; the per-category prior {f(attrs['without']['prior']['micro_f1'])} / "
                    f"{f(attrs['without']['prior']['macro_f1'])}"
                  + "".join(f"; {name}'s head refit on its frozen features {f(a['refit']['micro_f1'])} / "
                            f"{f(a['refit']['macro_f1'])}" for name, a in attrs.items() if a and a.get("refit"))
                  + "".join(f"; {name} with thresholds tuned on val {f(a['tuned']['micro_f1'])} / "
                            f"{f(a['tuned']['macro_f1'])} (the prior so tuned {f(a['prior_tuned']['micro_f1'])} / "
                            f"{f(a['prior_tuned']['macro_f1'])})" for name, a in attrs.items() if a and a.get("tuned"))
                  + "."]
    t = rep["training"]
    kept = ("" if rep.get("trained", {}).get("without", True)
            else f"; the baseline `{rep['runs']['without']}` and its predictions kept")
    lines += ["", f"Steps {t.get('without', {}).get('steps')} each; final val Kaggle without "
                  f"{f(t.get('without', {}).get('val_kaggle'))}, with {f(t.get('with', {}).get('val_kaggle'))}; "
                  f"{sum(rep['timings'].values()):.0f} s ({rep['timings']}){kept}."]
    return "\n".join(lines)


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cpu", action="store_true", help="CPU mode (600 training images at 128 px, <= 60 min on 2 cores)")
    p.add_argument("--tiny", action="store_true", help="smoke size (a couple of steps per model; for the tests)")
    p.add_argument("--out", default=None, help="output folder (default work/bench_quality[_cpu|_tiny])")
    p.add_argument("--claim-group", choices=GROUPS, default="garments",
                   help="the class group whose masks the claim runs train on (the other one is held out)")
    p.add_argument("--lanes", type=int, default=None, help="trainings / predictions run at a time (mode default)")
    p.add_argument("--ablation", default=None, metavar="'FLAGS'",
                   help="measure one training feature instead: --ablation-arch trained without and with these flags, "
                        "quoted (e.g. --ablation '--ema-decay 0.99'), the same steps, scored on the held-out test "
                        "seed; report OUT/ablation_<run>.md. The baseline and its predictions are made once per --out "
                        "(and arch and --ablation-base) and kept: later ablations train their one run")
    p.add_argument("--ablation-arch", choices=sorted(ABLATION_ARCHS), default="maskrcnn",
                   help="the model an --ablation trains")
    p.add_argument("--ablation-base", default="", metavar="'FLAGS'",
                   help="training flags both runs of an --ablation get, quoted (e.g. --ablation-base "
                        "'--attr-head --no-attr-prior' --ablation '--attr-prior'); with --attr-head the attribute "
                        "F1 at the test seed's ground-truth boxes is measured too")
    p.add_argument("--claim-curve", type=int, default=0, metavar="EPOCHS",
                   help="measure DeepMAC's claim against steps instead: the class-agnostic Mask R-CNN and DeepMAC "
                        "claim runs trained EPOCHS epochs of the mode's claim budget, the held-out group's oracle-box "
                        "mask IoU at every epoch (--cpu: 50 steps an epoch)")
    p.add_argument("--claim-deepmac", default=None, metavar="'FLAGS'",
                   help="with --claim-curve: DeepMAC's head flags instead of the mode's, quoted (e.g. "
                        "--claim-deepmac '--mask-roi-size 32 --mask-head-depth 3')")
    p.add_argument("--reuse", action="store_true",
                   help="keep finished data, prepared sets, trainings and predictions under --out (default: fresh runs; "
                        "an --ablation keeps its data and baseline always)")
    return p


def mode_config(mode: str, native_bf16: bool) -> dict:
    """The settings of ``mode`` (:data:`MODES`) on this machine: the CPU mode's detectors train in fp32 where the
    CPU lacks native bf16 (``native_bf16`` False: emulated bf16 trains slower than fp32)."""
    cfg = dict(MODES[mode])
    if mode == "cpu" and not native_bf16:
        cfg["det"] = [("off" if a == "bf16" else a) for a in cfg["det"]]
    return cfg


def main(args) -> dict:
    mode = "tiny" if args.tiny else "cpu" if args.cpu else "gpu"
    cfg = mode_config(mode, bc.cpu_has_native_bf16())
    if args.lanes:
        cfg["lanes"] = args.lanes
    device = bc.pick_device(mode != "gpu")
    kind = "ablation" if args.ablation else "claim_curve" if args.claim_curve else "quality"
    out = Path(args.out or f"work/bench_{kind}{'' if mode == 'gpu' else '_' + mode}")
    data, w = out / "data", out / "work"
    w.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    env["OMP_NUM_THREADS"] = str(cfg["threads"])
    if device.type == "cpu":
        torch.set_num_threads(max(1, cfg["threads"]))
    jobs = Jobs(out / "logs", cfg["lanes"], env)
    def single(kind, result, to_markdown, stem=None):  # one measurement instead of the benchmark: <stem>.json, .md
        rep = {"mode": mode, "env": bc.env_info(device), "config": dict(cfg), "out": str(out), kind: result,
               "commands": jobs.commands, "jobs": jobs.results}
        bc.write_json(out / f"{stem or kind}.json", rep)
        md = to_markdown(result)
        (out / f"{stem or kind}.md").write_text(md + "\n")
        print(md)
        return rep

    if args.ablation:
        flags, base = shlex.split(args.ablation), shlex.split(args.ablation_base)
        return single("ablation", ablation(cfg, args.ablation_arch, flags, out, jobs, args.reuse, base),
                      ablation_markdown, "ablation_" + ablation_runs(args.ablation_arch, flags, base)["with"])
    if args.claim_curve:
        return single("claim_curve", claim_curve(
            cfg, args.claim_group, args.claim_curve, out, jobs, args.reuse, device,
            None if args.claim_deepmac is None else shlex.split(args.claim_deepmac)), claim_curve_markdown)
    held = [g for g in GROUPS if g != args.claim_group][0]
    rep: dict = {"mode": mode, "env": bc.env_info(device), "config": {k: v for k, v in cfg.items()},
                 "out": str(out), "timings": {}, "commands": jobs.commands}
    rep["conventions"] = {
        "post_processing": "lib.postprocess.Params() (the winning recipe) for every table but "
                           "'submission', which uses 06's val-tuned params.json",
        "ensemble": "unet + maskrcnn + deepmac fused with equal weights (lib.fusion.combine)",
        "groups": "Kaggle per group: ground truth and predictions restricted to the group, scored on the test "
                  "images containing it; AP per group: mean COCO mask AP of its categories (all test images)",
        "oracle": "mask branch at the ground-truth boxes (lib.models.maskrcnn.masks_for_boxes), prob >= 0.5, "
                  "IoU with the ground-truth mask at the test image's size; box_fill = the box as the mask",
        "attributes": "attribute categories only; oracle = head at the ground-truth boxes; prior = attributes "
                      "in >= half of the category's training instances; refit = the head retrained alone on the "
                      "frozen detector's features at the train split's ground-truth boxes (400 AdamW steps of 128, "
                      "lr 1e-3), at the same test boxes; pipeline = post-processed predictions "
                      "(attributes on) matched at mask IoU >= 0.5 (lib.attribute_metric.AttributeEvaluator)"}
    json_path, md_path = out / "quality.json", out / "quality.md"
    t_start = time.time()

    def stage(name, fn):
        t0 = time.time()
        print(f"[{time.time() - t_start:6.1f} s] {name} ...", flush=True)
        res = fn()
        rep["timings"][name] = round(time.time() - t0, 1)
        rep["seconds_total"] = round(time.time() - t_start, 1)
        rep["jobs"] = jobs.results
        bc.write_json(json_path, rep)
        return res

    # 1. data + 01
    rep["data"] = stage("data", lambda: make_data(cfg, data))
    py = sys.executable
    prep = []
    for split, src, extra in (("prepared", "train", []), ("prepared_val", "val", ["--val-fraction", "1.0"]),
                              ("prepared_pretrain", "pretrain", [])):
        if args.reuse and (w / split / "meta.json").is_file():
            continue
        prep.append((f"01_{split}", [py, "01_prepare_data.py", "--data-dir", data / src,
                                     "--out-dir", w / split, "--long-side", str(cfg["long_side"]), "--processes",
                                     str(cfg["prepare_workers"]), "--no-progress", *extra]))
    stage("01_prepare", lambda: jobs.run(prep))

    # 2. training
    agnostic_flag = "--class-agnostic-masks" in script_flags("03_train_maskrcnn.py")
    rep["class_agnostic_maskrcnn_via"] = ("03 --class-agnostic-masks" if agnostic_flag else
                                          "03's parser + lib.engine.run with class_agnostic_masks=True "
                                          "(03 has no --class-agnostic-masks flag)")
    cg = args.claim_group
    main_runs = ["unet", "maskrcnn", "deepmac"]
    claim_runs = [f"maskrcnn_{cg}", f"maskrcnn_agnostic_{cg}", f"deepmac_{cg}"]
    stage("train", lambda: jobs.run(training_jobs(cfg, w, agnostic_flag, cg, args.reuse)))
    all_runs = [*main_runs, *claim_runs, *FINE_TUNE_RUNS]
    rep["training"] = training_summary(w, all_runs)
    rep["learning_curves"] = learning_curves(w, all_runs)
    from lib.viz import plot_learning_curves

    plot_learning_curves({r: rep["learning_curves"][r] for r in main_runs}, out / "learning_curves.png",
                         title=f"val Kaggle ({cfg['val_images']} val images, score >= {cfg['val_score_thresh']})")
    rep["fine_tune"] = fine_tune_report(rep["learning_curves"], rep["training"])

    # 3. 05 + 06
    stage("05_predict", lambda: jobs.run(prediction_jobs(cfg, w, data, main_runs, claim_runs, args.reuse)))
    sub_dir = w / "submission"
    shutil.rmtree(sub_dir, ignore_errors=True)
    stage("06_tune_and_score", lambda: jobs.run([("06_submission", [
        py, "06_make_submission.py", "--predictions", w / "pred_test", "--tune-on", w / "pred_val", "--data-dir",
        data / "test", "--out-dir", sub_dir, "--report-images", "0", "--no-progress",
        *cfg["tune"]])]))
    s06 = json.loads((sub_dir / "scores.json").read_text())
    rep["scores_06"] = {k: {m: _finite(v[m]) for m in ("kaggle", "AP", "AP50", "AP75")}
                        for k, v in s06["scores"].items()}
    rep["submission_choice"] = s06.get("submission")

    # 4. per model / group scores
    from lib import fusion as lfusion
    from lib.tuning import load_combination
    from lib import postprocess as lpost

    gt_csv = data / "test" / "test_ground_truth.csv"
    gts = group_gt(gt_csv, w)
    images = pd.read_parquet(w / "pred_test" / "images.parquet")
    main_src = load_sources(w / "pred_test")
    claim_src = load_sources(w / "pred_claim")

    def all_scores():
        recipe = lpost.Params()
        tables = dict(main_src)
        tables["ensemble"] = lfusion.combine(main_src, lfusion.Combination.default(main_src))
        params_of = {k: recipe for k in tables}
        combination = load_combination(sub_dir / "params.json")
        if combination is not None:
            tables["submission"] = lfusion.combine(main_src, combination)
            params_of["submission"] = lpost.load_params(sub_dir / "params.json")
        tables.update(claim_src)
        params_of.update({k: recipe for k in claim_src})
        return score_tables(tables, params_of, gts, images, cfg["score_workers"])

    rep["scores"] = stage("score", all_scores)

    # 5. oracle boxes (the DeepMAC claim)
    items = load_test_instances(gt_csv, data / "test" / "test")
    oracle_runs = {r: w / r for r in ["maskrcnn", "deepmac", *claim_runs]}
    rep["deepmac_claim"] = {"train_group": cg, "held_out_group": held, "paper": PAPER,
                            "runs": {"stock per-class head": f"maskrcnn_{cg}",
                                     "class-agnostic head (paper's baseline)": f"maskrcnn_agnostic_{cg}",
                                     "DeepMAC": f"deepmac_{cg}", "fully supervised references": ["maskrcnn",
                                                                                                 "deepmac"]}}
    rep["deepmac_claim"]["oracle"] = stage("oracle", lambda: oracle_masks(oracle_runs, items, device))

    # 6. attributes
    rep["attributes"] = stage("attributes", lambda: attributes_report(
        w / "maskrcnn", main_src["maskrcnn"], items, gt_csv, data / "train" / "train.csv", images, device,
        rep["scores"]["maskrcnn"]["all"]["kaggle"], train_split_items(data / "train", w / "prepared"),
        train_split_items(data / "train", w / "prepared", "val")))
    rep["attributes"]["val_during_training"] = {k: rep["training"].get("maskrcnn", {}).get(k)
                                                for k in ("val_attr_micro_f1", "val_attr_macro_f1")}

    rep["floors"] = floors(rep["scores_06"], rep.get("submission_choice"), FLOORS)
    rep["seconds_total"] = round(time.time() - t_start, 1)
    rep["jobs"] = jobs.results
    bc.write_json(json_path, rep)
    md = markdown(rep)
    md_path.write_text(md + "\n")
    print(md)
    print(f"wrote {json_path} and {md_path}")
    return rep


if __name__ == "__main__":
    main(get_args_parser().parse_args())
