"""Benchmark: 06_make_submission.py ``--tune-on`` time and peak memory against the number of val images, and
the projection to the real sizes (4,500 val + 3,200 test images, 3 models, 16 processes; targets <= 10 minutes
and <= 8 GB).

06 runs as a subprocess, through its command line only::

    python 06_make_submission.py --predictions TEST --tune-on VAL --data-dir DATA --out-dir OUT \\
        --processes P --no-progress [--extra-args]

on synthetic 05 outputs in 05's exact layout (lib/shards.py), generated once per size and cached under
``--work-dir`` (``sets_r<rows>_g<gt>_s<seed>/``):

- ``val_<n>/``: 05's output of a prepared set's val split: ``meta.json`` (``"status": "done"``, ``"source":
  {"prepared_dir", "split": "val"}``, ``"models"``), ``predictions.parquet`` (lib.prediction_table columns and
  dtypes, ordered by image, model, score desc; row groups of whole images closed once they hold
  ``lib.shards.ROW_GROUP_ROWS`` rows as 05 writes them, or, with a lib/shards.py without it, one row group of
  up to 1,048,576 rows as 05's ``to_parquet`` wrote it; ``--row-group-rows`` to change), ``images.parquet``
  and ``gt.csv`` (train.csv format, 1-indexed column-major RLE by lib/rle.py at the prepared size);
- ``test_<n>/``: 05's output of the Kaggle test images (``"source": {"data_dir"}``), and ``data_<n>/``: the
  Kaggle layout 06 lists them from (``sample_submission.csv`` and ``test/``: hard links to two blank JPEGs,
  whose headers give the sizes).

Scenes: images of 1024 x 768 and 768 x 1024 (alternating), about ``--gt-per-image`` (8) ground-truth instances
each (Poisson): garments (categories 0-12, half-axes 12-32 % of the side), accessories (13-26) and parts
(27-45, 2-9 %), as irregular star-shaped outlines. Models ``unet``, ``maskrcnn``, ``deepmac`` give each image
between 3/4 of and ``--rows-per-model`` rows (cap 100): noisy copies of the ground truth (shifted, eroded or
dilated, reshaped, soft edges, a low-frequency confidence field; detected with probability 0.8-0.9, scores
0.3-1), low-score duplicates (0.05-0.5) and false positives (0.05-0.75), masks stored at 512 x 512 as uint8 PNG
crops by ``lib.prediction_table.encode_prob`` (about 6 KB a row). Fixed seed; image k is the same in every
size; generated in ``--gen-processes`` processes.

Measured per size (``--val-images``; test images ``round(n * 3200 / 4500)`` unless ``--test-images``), with
the first ``--processes`` value: wall seconds of the whole command, and the process tree's memory sampled
every ``--poll`` s from /proc: ``tree_rss_mb`` (the largest sum of VmRSS over 06 and its descendants: what the
processes hold, counting pages forked workers share once per process), ``tree_pss_mb`` (the same with PSS from
``smaps_rollup``: shared pages split between their processes, the machine's real use) and ``max_hwm_mb`` (the
largest VmHWM of one process). Baseline, in the same run: a process that only imports ``lib.make_submission``
(interpreter start + 06's imports), whose memory is the fixed part. The other ``--processes`` values run at
the largest size (``speedup`` = seconds at the first value / at this one).

Ratios (1 = linear; below = sublinear; flat memory -> n_0 / n_k): ``time_growth`` = (t_k / t_0) / (n_k / n_0);
``rss_growth`` / ``pss_growth`` = the same of the memory increments over the baseline.

Projection to 4,500 val images (and the test images in the sweep's ratio: 3,200) at 16 processes
(:data:`REAL`): ``seconds = a + b * 4500 / S`` with ``a + b * n`` the least-squares line of the
sweep's seconds and ``S`` the speed-up at 16 processes: the measured one when 16 was run, else Amdahl's law
fitted to the speed-up measured at the largest other value (parallel fraction ``f = (1 - 1/s) / (1 - p0/p)``,
``S = 1 / (1 - f + f * p0 / 16)``), else (one ``--processes`` value) the assumption of a perfect speed-up
over cores (``S = 16 / p0``: optimistic; the ``p0``-process figure is printed too). Memory: the least-squares
line of the sweep's peak (RSS and PSS sums) at 4,500, never below the largest measured peak, plus, when another
``--processes`` value was run, the per-process increment of the largest one times the extra processes (linear
in n: an upper bound where memory is flat; at small sizes the noise of a sampled peak, tens of MB, makes the
slope uncertain: each slope is printed with its standard error). ``meets_memory``: the projected PSS sum
<= 8 GB; ``meets_time``: the projection <= 600 s.

Examples::

    python bench/submission_bench.py                                    # 24/48/96 val images, 1 and all cores
    python bench/submission_bench.py --val-images 4 8 16 --processes 1  # small, one process
    python bench/submission_bench.py --val-images 24 48 96 --processes 1 4 16 --rows-per-model 100
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench import common as bc  # noqa: E402
from lib import files as lfiles  # noqa: E402
from lib import prediction_table as lpred  # noqa: E402
from lib import rle  # noqa: E402
from lib import shards as lshards  # noqa: E402
from lib import workers as lworkers  # noqa: E402

GENERATOR_VERSION = 1
MODELS = ("unet", "maskrcnn", "deepmac")
# How each model's rows differ from the ground truth: detection rate, centre jitter (fraction of the side),
# size jitter (log-sd: erosion / dilation), outline roughness, edge blur (sigma, px at 512), share of the extra
# rows that are low-score duplicates of ground truth (the rest are false positives).
MODEL_NOISE = {
    "unet": dict(detect=0.8, shift=0.008, scale=0.06, rough=0.06, blur=(1.0, 2.5), dup_share=0.3),
    "maskrcnn": dict(detect=0.9, shift=0.012, scale=0.08, rough=0.04, blur=(1.5, 3.5), dup_share=0.6),
    "deepmac": dict(detect=0.88, shift=0.01, scale=0.07, rough=0.05, blur=(1.0, 3.0), dup_share=0.6),
}
# Kinds of ground-truth instance: categories, share, half-axis range (fraction of the image side).
KINDS = ((range(0, 13), 0.35, (0.12, 0.32)), (range(13, 27), 0.15, (0.03, 0.09)), (range(27, 46), 0.5, (0.02, 0.09)))
IMAGE_HW = ((1024, 768), (768, 1024))  # (H, W), alternating
FRAME = 512  # 05's stored mask size
MAX_ROWS = 100  # torchvision's detections_per_img
SPLIT_CODE = {"val": 1, "test": 2}
REAL = dict(real_val=4500, real_test=3200, real_processes=16, target_s=600.0, limit_mb=8192.0)
# 05's row groups: whole images, closed once they hold lib.shards.ROW_GROUP_ROWS rows; before it had one, 05's
# to_parquet wrote one row group of up to 1,048,576 rows.
ROW_GROUP_ROWS = int(getattr(lshards, "ROW_GROUP_ROWS", 1 << 20))
MODES = dict(val_images=[24, 48, 96], rows_per_model=70, gt_per_image=8.0, seed=0, poll=0.05,
             row_group_rows=ROW_GROUP_ROWS)


# --------------------------------------------------------------------------------------------- scenes
def image_id(split: str, seed: int, index: int) -> str:
    """A Kaggle-like id (32 hex digits + ``.jpg``) of image ``index`` of ``split``."""
    return hashlib.md5(f"{split}-{seed}-{index}".encode()).hexdigest() + ".jpg"


def radial(rng, n: int, rough: float) -> np.ndarray:
    """``(n,)`` radius factors around 1 at ``n`` equally spaced angles: four random harmonics (2-5) of
    amplitude ``rough / k``, a smooth irregular outline."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    k = np.arange(2, 6)[:, None]
    amp = rough * rng.standard_normal((4, 1)) / k
    return 1 + (amp * np.cos(k * t + rng.uniform(0, 2 * np.pi, (4, 1)))).sum(0)


def outline(rng, centre, axes, angle: float, rough: float = 0.12, n: int = 40) -> np.ndarray:
    """``(n, 2)`` float64 x, y vertices (fractions of the image width / height) of an irregular ellipse."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = radial(rng, n, rough)
    x, y = axes[0] * r * np.cos(t), axes[1] * r * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], 1)


def random_instance(rng, kind: int | None = None) -> tuple[int, np.ndarray]:
    """``(category, outline)`` of one instance of ``kind`` (index into :data:`KINDS`; None: drawn by share)."""
    if kind is None:
        kind = int(rng.choice(len(KINDS), p=[k[1] for k in KINDS]))
    cats, _, (lo, hi) = KINDS[kind]
    a = rng.uniform(lo, hi)
    axes = (a, a * rng.uniform(0.6, 1.6))
    centre = rng.uniform(0.1 + a * 0.5, 0.9 - a * 0.5, 2)
    return int(rng.choice(cats)), outline(rng, centre, axes, rng.uniform(0, np.pi))


def scene(rng, gt_per_image: float) -> list[tuple[int, np.ndarray]]:
    """The ground truth of one image: ``Poisson(gt_per_image)`` (at least 1) :func:`random_instance`."""
    n = int(np.clip(rng.poisson(gt_per_image), 1, max(1, 3 * gt_per_image)))
    return [random_instance(rng) for _ in range(n)]


def jittered(rng, pts: np.ndarray, noise: dict, factor: float = 1.0) -> np.ndarray:
    """A model's copy of outline ``pts``: scaled about its centre (log-sd ``scale``), reshaped (``rough``) and
    shifted (``shift``), each times ``factor``."""
    c = pts.mean(0)
    s = np.exp(rng.normal(0, noise["scale"] * factor)) * radial(rng, len(pts), noise["rough"] * factor)
    return c + (pts - c) * s[:, None] + rng.normal(0, noise["shift"] * factor, 2)


def soft_crop(rng, pts: np.ndarray, blur: float, frame: int = FRAME):
    """Outline ``pts`` as a soft probability map in the ``frame x frame`` mask frame, cropped:
    ``(x0, y0, (h, w) float32 in 0..1)``, or None when it falls outside. Anti-aliased fill, Gaussian edges
    (``blur`` px), times a smooth confidence field in 0.55-1."""
    p = pts * frame
    m = int(math.ceil(3 * blur)) + 2
    x0, y0 = np.maximum(np.floor(p.min(0)).astype(int) - m, 0)
    x1, y1 = np.minimum(np.ceil(p.max(0)).astype(int) + m, frame)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    crop = np.zeros((y1 - y0, x1 - x0), np.float32)
    cv2.fillPoly(crop, [np.round((p - [x0, y0]) * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
    crop = cv2.GaussianBlur(crop, (0, 0), blur)
    field = cv2.resize(rng.uniform(0.55, 1.0, (4, 4)).astype(np.float32), crop.shape[::-1],
                       interpolation=cv2.INTER_CUBIC)
    return int(x0), int(y0), np.clip(crop * field, 0.0, 1.0)


# --------------------------------------------------------------------------------------------- rows
def model_instances(rng, gt: list, noise: dict, n_rows: int) -> list[tuple[int, float, np.ndarray]]:
    """``(category, score, outline)`` of one model on one image, ``n_rows`` at most, score descending:
    detections of the ground truth, then low-score duplicates and false positives up to ``n_rows``."""
    out = []
    for cat, pts in gt:
        if rng.random() < noise["detect"]:
            out.append((cat, 0.3 + 0.7 * rng.beta(4, 1.5), jittered(rng, pts, noise)))
    extra = max(0, n_rows - len(out))
    n_dup = int(rng.binomial(extra, noise["dup_share"]))
    for _ in range(n_dup):
        cat, pts = gt[int(rng.integers(len(gt)))]
        cat = cat if rng.random() < 0.7 else int(rng.integers(46))
        out.append((cat, 0.05 + 0.45 * rng.beta(1, 3), jittered(rng, pts, noise, 2.5)))
    for _ in range(extra - n_dup):
        cat, pts = random_instance(rng)
        out.append((int(rng.integers(46)) if rng.random() < 0.5 else cat, 0.05 + 0.7 * rng.beta(1, 4), pts))
    out.sort(key=lambda r: -r[1])
    return out[:n_rows]


def prediction_row(rng, iid: str, model: str, hw, cat: int, score: float, pts: np.ndarray, blur: float):
    """One lib.prediction_table row (dict) of an instance, or None when its mask is empty."""
    crop = soft_crop(rng, pts, blur)
    if crop is None:
        return None
    cx, cy, prob = crop
    x0, y0, png = lpred.encode_prob(prob)
    on = prob >= 0.5
    ys, xs = (np.flatnonzero(on.any(1)), np.flatnonzero(on.any(0))) if on.any() else (
        np.array([0, prob.shape[0] - 1]), np.array([0, prob.shape[1] - 1]))
    sx, sy = hw[1] / FRAME, hw[0] / FRAME
    return {"image_id": iid, "model": model, "category": cat, "score": float(score),
            "x1": (cx + xs[0]) * sx, "y1": (cy + ys[0]) * sy, "x2": (cx + xs[-1] + 1) * sx,
            "y2": (cy + ys[-1] + 1) * sy, "orig_height": hw[0], "orig_width": hw[1], "mask_height": FRAME,
            "mask_width": FRAME, "mask_x0": cx + x0, "mask_y0": cy + y0, "mask_png": png, "attr_scores": None}


def gt_lines(iid: str, hw, gt: list) -> list[str]:
    """train.csv lines (``ImageId,EncodedPixels,Height,Width,ClassId``) of ``gt`` at size ``hw``."""
    lines = []
    for cat, pts in gt:
        mask = np.zeros(hw, np.uint8)
        cv2.fillPoly(mask, [np.round(pts * [hw[1], hw[0]] * 16).astype(np.int32)], 1, cv2.LINE_8, shift=4)
        if mask.any():
            lines.append(f"{iid},{rle.encode(mask)},{hw[0]},{hw[1]},{cat}")
    return lines


def image_task(task: tuple) -> tuple[list[str], list[dict]]:
    """One image: ``(gt.csv lines, prediction rows)``. ``task`` = ``(split, seed, index, gt_per_image,
    rows_per_model)``; image ``index`` is the same whatever the set's size."""
    split, seed, index, gt_per_image, rows_per_model = task
    rng = np.random.default_rng([seed, SPLIT_CODE[split], index])
    iid, hw = image_id(split, seed, index), IMAGE_HW[index % 2]
    gt = scene(rng, gt_per_image)
    rows = []
    for model in MODELS:
        noise = MODEL_NOISE[model]
        n_rows = int(rng.integers(math.ceil(rows_per_model * 0.75), rows_per_model + 1))
        for cat, score, pts in model_instances(rng, gt, noise, n_rows):
            row = prediction_row(rng, iid, model, hw, cat, score, pts, rng.uniform(*noise["blur"]))
            if row is not None:
                rows.append(row)
    return gt_lines(iid, hw, gt), rows


# --------------------------------------------------------------------------------------------- 05 folders
class _TableWriter:
    """Prediction rows, added an image at a time -> one parquet file whose row groups hold whole images, each
    closed once it has ``row_group_rows`` rows (05's layout: :data:`ROW_GROUP_ROWS`)."""

    def __init__(self, path: Path, row_group_rows: int):
        self.path, self.limit, self.frames, self.n, self.writer = path, int(row_group_rows), [], 0, None

    def add(self, rows: list[dict]) -> None:
        if rows:
            self.frames.append(lpred.make_table(rows))
            self.n += len(rows)
        if self.n >= self.limit:
            self.flush()

    def flush(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not self.frames and self.writer is not None:
            return
        df = pd.concat(self.frames, ignore_index=True) if self.frames else lpred.make_table([])
        table = pa.Table.from_pandas(df, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table, row_group_size=max(1, len(table)))
        self.frames, self.n = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


def write_predictions(out: Path, split: str, n: int, cfg: dict, source: dict, workers: int) -> dict:
    """05's output folder of ``n`` synthetic images of ``split`` (module docstring; ``gt.csv`` for ``val``).
    Returns generation figures: rows, mean PNG bytes per row, seconds."""
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(split, cfg["seed"], k, cfg["gt_per_image"], cfg["rows_per_model"]) for k in range(n)]
    per_model, png_bytes, n_gt = {m: 0 for m in MODELS}, 0, 0
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(lfiles.atomic_path(out / "predictions.parquet"))
        gt = None
        if split == "val":
            gt = open(stack.enter_context(lfiles.atomic_path(out / "gt.csv")), "w")
            stack.callback(gt.close)
            gt.write("ImageId,EncodedPixels,Height,Width,ClassId\n")
        writer = _TableWriter(tmp, cfg["row_group_rows"])
        results = stack.enter_context(lworkers.process_map(image_task, tasks, workers, chunksize=4))
        for lines, rows in results:
            if gt is not None:
                gt.write("".join(line + "\n" for line in lines))
            n_gt += len(lines)
            for r in rows:
                per_model[r["model"]] += 1
                png_bytes += len(r["mask_png"])
            writer.add(rows)
        writer.close()
    ids = [image_id(split, cfg["seed"], k) for k in range(n)]
    hws = [IMAGE_HW[k % 2] for k in range(n)]
    images = pd.DataFrame({"image_id": ids, "orig_height": [h for h, _ in hws], "orig_width": [w for _, w in hws],
                           "error": ""}).astype({"orig_height": "int32", "orig_width": "int32"})
    with lfiles.atomic_path(out / "images.parquet") as tmp:
        images.to_parquet(tmp, index=False)
    rows = sum(per_model.values())
    lfiles.atomic_write_json(out / "meta.json", {
        "stage": "05_predict", "status": "done", "source": source, "num_images": n, "mask_size": FRAME,
        "score_floor": 0.05, "models": [{"name": m, "arch": m} for m in MODELS], "num_predictions": rows,
        "predictions_per_model": per_model, "generated_by": "bench/submission_bench.py",
        "files": {"predictions": str(out / "predictions.parquet"), "images": str(out / "images.parquet"),
                  "gt": str(out / "gt.csv") if split == "val" else None}})
    return {"images": n, "rows": rows, "gt_instances": n_gt, "rows_per_image_model": rows / max(1, n * len(MODELS)),
            "mean_png_bytes": png_bytes / max(1, rows), "seconds": round(time.time() - t0, 2)}


def write_data_dir(data: Path, blanks: Path, n: int, seed: int) -> None:
    """Kaggle layout of the ``n`` test images: ``sample_submission.csv`` and ``test/`` (hard links to blank
    JPEGs of each size under ``blanks``, made once)."""
    blanks.mkdir(parents=True, exist_ok=True)
    (data / "test").mkdir(parents=True, exist_ok=True)
    lines = ["ImageId,EncodedPixels,ClassId"]
    for k in range(n):
        h, w = IMAGE_HW[k % 2]
        src = blanks / f"blank_{h}x{w}.jpg"
        if not src.is_file():
            cv2.imwrite(str(src), np.full((h, w, 3), 128, np.uint8))
        iid = image_id("test", seed, k)
        dst = data / "test" / iid
        if not dst.is_file():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy(src, dst)
        lines.append(f"{iid},1 1,0")
    (data / "sample_submission.csv").write_text("\n".join(lines) + "\n")


def set_config(cfg: dict) -> dict:
    """What the generated folders depend on (a cached folder is reused only when its record is this)."""
    return {"version": GENERATOR_VERSION, "models": list(MODELS),
            **{k: cfg[k] for k in ("rows_per_model", "gt_per_image", "seed", "row_group_rows")}}


def ensure_sets(work_dir: Path, n_val: int, n_test: int, cfg: dict, workers: int) -> dict:
    """The val and test 05 folders and the data dir for these sizes, made when missing (cached: a folder whose
    ``bench.json`` records :func:`set_config` is kept). Returns their paths and generation figures."""
    base = Path(work_dir) / f"sets_r{cfg['rows_per_model']}_g{cfg['gt_per_image']:g}_s{cfg['seed']}"
    want = set_config(cfg)
    val, test, data = base / f"val_{n_val}", base / f"test_{n_test}", base / f"data_{n_test}"
    figures = {}
    for split, d, n in (("val", val, n_val), ("test", test, n_test)):
        record = d / "bench.json"
        if record.is_file() and lfiles.read_json(record).get("config") == want:
            figures[split] = lfiles.read_json(record)["figures"]
            continue
        shutil.rmtree(d, ignore_errors=True)
        source = ({"prepared_dir": str((base / "prepared").resolve()), "split": "val"} if split == "val"
                  else {"data_dir": str(data.resolve())})
        if split == "test":
            write_data_dir(data, base / "blanks", n, cfg["seed"])
        figures[split] = write_predictions(d, split, n, cfg, source, workers)
        lfiles.atomic_write_json(record, {"config": want, "figures": figures[split]})
    return {"val": val, "test": test, "data": data, "generation": figures}


# --------------------------------------------------------------------------------------------- measuring
def stage_env() -> dict:
    """The environment of the measured commands: this one, one OpenMP thread unless set, offline."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def command_06(sets: dict, out: Path, processes: int, extra: list[str]) -> list[str]:
    return [sys.executable, "06_make_submission.py", "--predictions", str(sets["test"]), "--tune-on",
            str(sets["val"]), "--data-dir", str(sets["data"]), "--out-dir", str(out), "--processes",
            str(processes), "--no-progress", *extra]


def run_06(sets: dict, out: Path, processes: int, extra: list[str], poll: float) -> dict:
    """06 on ``sets`` into a fresh ``out``, measured; raises ``RuntimeError`` with its output if it fails.
    Adds 06's own ``seconds`` and the submission's figures from its meta.json."""
    shutil.rmtree(out, ignore_errors=True)
    r = bc.run_measured(command_06(sets, out, processes, extra), stage_env(), poll)
    if r["rc"] != 0:
        raise RuntimeError(f"06_make_submission.py failed (exit {r['rc']}):\n{r['output']}")
    meta = json.loads((out / "meta.json").read_text())
    r.update(s06_seconds=meta.get("seconds"), num_images=meta.get("num_images"), num_rows=meta.get("num_rows"),
             combination=meta.get("combination"))
    return r


def run_baseline(poll: float) -> dict:
    """The fixed part: a process that starts Python and imports ``lib.make_submission`` (06's library)."""
    r = bc.run_measured([sys.executable, "-c", "import lib.make_submission"], stage_env(), poll)
    if r["rc"] != 0:
        raise RuntimeError(f"baseline (import lib.make_submission) failed:\n{r['output']}")
    return r


# --------------------------------------------------------------------------------------------- arithmetic
def growth_to_linear(ns, values, base: float = 0.0) -> list[float | None]:
    """``((v_k - base) / (v_0 - base)) / (n_k / n_0)`` per point: 1 = linear growth, ``n_0 / n_k`` = flat;
    None when ``v_0 - base`` is not positive."""
    d0 = values[0] - base
    return [((v - base) / d0) / (n / ns[0]) if d0 > 0 else None for n, v in zip(ns, values)]


def linear_fit(ns, ys) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line through ``(n_k, y_k)`` (two points or more)."""
    slope, intercept = np.polyfit(np.asarray(ns, float), np.asarray(ys, float), 1)
    return float(slope), float(intercept)


def slope_error(ns, ys) -> float | None:
    """Standard error of the least-squares slope (None with fewer than three points): how far noise (another
    job on the machine, the sampling of a peak) leaves the per-image figure open."""
    x, y = np.asarray(ns, float), np.asarray(ys, float)
    if len(x) < 3:
        return None
    slope, icpt = linear_fit(x, y)
    resid = y - (icpt + slope * x)
    return float(math.sqrt((resid ** 2).sum() / (len(x) - 2) / ((x - x.mean()) ** 2).sum()))


def target_speedup(p0: int, measured: dict, target: int) -> tuple[float, str]:
    """Speed-up at ``target`` processes over ``p0``, and how it was found: ``measured`` (``{p: seconds at p0 /
    seconds at p}``) at ``target``; else Amdahl's law fitted to the largest measured ``p`` (parallel fraction
    ``f = (1 - 1/s) / (1 - p0/p)``, clipped to 0..1; ``1 / (1 - f + f * p0 / target)``); else ``target / p0``
    (perfect scaling assumed)."""
    if target in measured:
        return float(measured[target]), f"measured at {target} processes"
    others = {p: s for p, s in measured.items() if p != p0}
    if not others:
        return target / p0, (f"assumed: perfect scaling from {p0} to {target} processes (only {p0} measured; "
                             f"an optimistic bound)")
    p = max(others)
    f = min(1.0, max(0.0, (1 - 1 / others[p]) / (1 - p0 / p)))
    return 1 / (1 - f + f * p0 / target), (f"Amdahl's law from the speed-up {others[p]:.2f} at {p} processes "
                                           f"(parallel fraction {f:.2f})")


def project(ns, seconds, memory: dict, p0: int, speedups: dict, worker_mb: dict, real: dict) -> dict:
    """The projection of the module docstring: ``memory`` = ``{key: peaks over the sweep}``, ``worker_mb`` =
    ``{key: MB per extra process}`` (empty when one ``--processes`` value ran), ``real`` = :data:`REAL`."""
    slope, icpt = linear_fit(ns, seconds)
    n, target = real["real_val"], real["real_processes"]
    s, how = target_speedup(p0, speedups, target)
    out = {"seconds_per_val_image": slope, "seconds_per_val_image_se": slope_error(ns, seconds), "intercept_s": icpt,
           f"projected_s_{p0}_processes": icpt + slope * n,
           "speedup": s, "speedup_from": how, "projected_s": icpt + slope * n / s}
    out["meets_time"] = out["projected_s"] <= real["target_s"]
    for key, ys in memory.items():
        m_slope, m_icpt = linear_fit(ns, ys)
        extra = worker_mb[key] * (target - p0) if key in worker_mb else 0.0
        out[f"{key}_per_val_image"], out[f"{key}_per_val_image_se"] = m_slope, slope_error(ns, ys)
        out[f"projected_{key}"] = max(m_icpt + m_slope * n, max(ys)) + extra
    out["memory_workers_counted"] = bool(worker_mb)
    return out


# --------------------------------------------------------------------------------------------- run
def counts_of_test_images(val_images, test_images, real: dict) -> list[int]:
    """Test images per size: ``test_images`` if given, else the real ratio (3,200 / 4,500) of each val count."""
    if test_images:
        if len(test_images) != len(val_images):
            raise SystemExit("--test-images: one count per --val-images count")
        return list(test_images)
    return [max(1, round(n * real["real_test"] / real["real_val"])) for n in val_images]


def _row(n_val: int, n_test: int, p: int, r: dict) -> dict:
    return {"val_images": n_val, "test_images": n_test, "processes": p, "seconds": round(r["wall_s"], 2),
            "s06_seconds": r["s06_seconds"], "s_per_val_image": r["wall_s"] / n_val,
            "tree_rss_mb": round(r["tree_rss_mb"], 1), "tree_pss_mb": round(r["tree_pss_mb"], 1),
            "max_hwm_mb": round(r["max_hwm_mb"], 1), "submission_rows": r["num_rows"]}


def _other_processes(top: dict, sets: dict, out: Path, p: int, extra: list[str], poll: float) -> dict:
    """06 at the sweep's largest size (``top``: its row) with ``p`` processes; ``speedup`` over ``top``."""
    r = _row(top["val_images"], top["test_images"], p, run_06(sets, out, p, extra, poll))
    r["speedup"] = top["seconds"] / r["seconds"]
    print(f"  {r['val_images']} val images, {p} processes: {r['seconds']} s (speed-up {r['speedup']:.2f}), RSS sum "
          f"{r['tree_rss_mb']} MB, PSS sum {r['tree_pss_mb']} MB", flush=True)
    return r


def run(cfg: dict, work_dir: Path, real: dict = REAL) -> dict:
    """Generate (or reuse) the sets, run the baseline, the sweep and the other ``--processes`` values, and
    compute the ratios and the projection."""
    ns, tests, procs = cfg["val_images"], cfg["test_images"], cfg["processes"]
    extra, poll = cfg["extra_args"], cfg["poll"]
    sets = {n: ensure_sets(work_dir, n, t, cfg, cfg["gen_processes"]) for n, t in zip(ns, tests)}
    for n in ns:
        g = sets[n]["generation"]
        print(f"  sets for {n} val images: val {g['val']['rows']} rows ({g['val']['rows_per_image_model']:.1f} per "
              f"image and model, {g['val']['mean_png_bytes'] / 1e3:.1f} KB PNG per row, {g['val']['gt_instances']} "
              f"gt instances), test {g['test']['images']} images, {g['test']['rows']} rows", flush=True)
    base = run_baseline(poll)
    print(f"  baseline (python + import lib.make_submission): {base['wall_s']:.2f} s, RSS "
          f"{base['tree_rss_mb']:.0f} MB, PSS {base['tree_pss_mb']:.0f} MB", flush=True)
    out = Path(work_dir) / "out"
    sweep = []
    for n, t in zip(ns, tests):
        sweep.append(_row(n, t, procs[0], run_06(sets[n], out, procs[0], extra, poll)))
        print(f"  {n} val + {t} test images, {procs[0]} processes: {sweep[-1]['seconds']} s, RSS sum "
              f"{sweep[-1]['tree_rss_mb']} MB, PSS sum {sweep[-1]['tree_pss_mb']} MB", flush=True)
    for key, col, b in (("time_growth", "seconds", 0.0), ("rss_growth", "tree_rss_mb", base["tree_rss_mb"]),
                        ("pss_growth", "tree_pss_mb", base["tree_pss_mb"])):
        for r, g in zip(sweep, growth_to_linear(ns, [r[col] for r in sweep], b)):
            r[key] = g
    others = [_other_processes(sweep[-1], sets[ns[-1]], out, p, extra, poll) for p in procs[1:]]
    speedups = {r["processes"]: r["speedup"] for r in others}
    big = max(others, key=lambda r: r["processes"], default=None)  # the per-process memory: from the most
    worker_mb = ({k: (big[k] - sweep[-1][k]) / (big["processes"] - procs[0]) for k in ("tree_rss_mb", "tree_pss_mb")}
                 if big else {})
    mem = {k: [r[k] for r in sweep] for k in ("tree_rss_mb", "tree_pss_mb")}
    proj = project(ns, [r["seconds"] for r in sweep], mem, procs[0], speedups, worker_mb, real)
    proj["meets_memory"] = proj["projected_tree_pss_mb"] <= real["limit_mb"]
    return {"rows": sweep + others,
            "baseline": {k: base[k] for k in ("wall_s", "tree_rss_mb", "tree_pss_mb", "max_hwm_mb")},
            "generation": {n: sets[n]["generation"] for n in ns}, "projection": proj, "real": real,
            "time_growth": sweep[-1]["time_growth"], "pss_growth": sweep[-1]["pss_growth"],
            "command": " ".join(shlex.quote(c) for c in command_06(sets[ns[-1]], out, procs[0], extra))}


COLUMNS = [("val_images", "val images"), ("test_images", "test images"), ("processes", "procs"),
           ("seconds", "s"), ("s_per_val_image", "s / val image"), ("time_growth", "time growth / linear"),
           ("tree_rss_mb", "peak RSS sum MB"), ("rss_growth", "RSS incr. growth / linear"),
           ("tree_pss_mb", "peak PSS sum MB"), ("pss_growth", "PSS incr. growth / linear"),
           ("max_hwm_mb", "largest process MB"), ("speedup", "speed-up")]


def summary_lines(res: dict) -> list[str]:
    """The projection in words."""
    p, real = res["projection"], res["real"]
    p0 = res["rows"][0]["processes"]

    def pm(key):
        return "" if p[f"{key}_se"] is None else f" +- {p[f'{key}_se']:.2f}"

    return [
        f"fit over the sweep: {p['intercept_s']:.1f} s + {p['seconds_per_val_image']:.2f}{pm('seconds_per_val_image')} "
        f"s per val image (with its share of test images; +- one standard error of the slope)",
        f"projected {real['real_val']} val + {real['real_test']} test images: "
        f"{p[f'projected_s_{p0}_processes']:.0f} s at {p0} processes; {p['projected_s']:.0f} s at "
        f"{real['real_processes']} processes (speed-up {p['speedup']:.2f}: {p['speedup_from']}) -> "
        f"{'meets' if p['meets_time'] else 'MISSES'} the {real['target_s']:.0f} s target",
        f"projected peak memory: PSS sum {p['projected_tree_pss_mb']:.0f} MB, RSS sum {p['projected_tree_rss_mb']:.0f} "
        f"MB ({p['tree_pss_mb_per_val_image']:.2f}{pm('tree_pss_mb_per_val_image')} / "
        f"{p['tree_rss_mb_per_val_image']:.2f}{pm('tree_rss_mb_per_val_image')} MB per val image"
        f"{', workers counted' if p['memory_workers_counted'] else f', at {p0} processes: extra workers not counted'}"
        f") -> {'meets' if p['meets_memory'] else 'MISSES'} the {real['limit_mb']:.0f} MB limit",
    ]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--val-images", type=int, nargs="+", default=None,
                   help="val image counts of the sweep, at least two, increasing (default 24 48 96)")
    p.add_argument("--test-images", type=int, nargs="+", default=None,
                   help="test image count per val count (default: val count * 3200 / 4500)")
    p.add_argument("--processes", type=int, nargs="+", default=None,
                   help="06 --processes: the sweep runs with the first, the others at the largest size (default: "
                        "1 and min(16, cores))")
    p.add_argument("--rows-per-model", type=int, default=None, help="most rows per image and model (default 70, "
                   f"at most {MAX_ROWS}); each image gets 3/4 of it to all of it")
    p.add_argument("--gt-per-image", type=float, default=None, help="mean ground-truth instances per image (8)")
    p.add_argument("--seed", type=int, default=None, help="generator seed (0)")
    p.add_argument("--row-group-rows", type=int, default=None,
                   help=f"rows per parquet row group, closed at an image boundary (default {ROW_GROUP_ROWS}: "
                        f"05's layout)")
    p.add_argument("--gen-processes", type=int, default=None, help="processes generating the sets (default: cores)")
    p.add_argument("--extra-args", default="", help="more 06 flags, one string, e.g. '--report-images 0'")
    p.add_argument("--poll", type=float, default=None, help="memory sampling interval, s (0.05)")
    p.add_argument("--work-dir", type=Path, default=Path("work/bench/submission"), help="generated sets, 06 output")
    p.add_argument("--out", type=Path, default=Path("work/bench/submission_bench.json"), help="JSON file to write")
    return p


def config_from_args(args) -> dict:
    cfg = dict(MODES)
    for key in ("val_images", "rows_per_model", "gt_per_image", "seed", "row_group_rows", "poll"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    ns = cfg["val_images"]
    if len(ns) < 2 or any(b <= a for a, b in zip(ns, ns[1:])) or ns[0] < 1:
        raise SystemExit("--val-images: at least two increasing counts >= 1")
    if not 1 <= cfg["rows_per_model"] <= MAX_ROWS:
        raise SystemExit(f"--rows-per-model: 1..{MAX_ROWS}")
    cores = len(os.sched_getaffinity(0))
    cfg["processes"] = args.processes or ([1, min(16, cores)] if cores > 1 else [1])
    if any(p < 1 for p in cfg["processes"]) or len(set(cfg["processes"])) != len(cfg["processes"]):
        raise SystemExit("--processes: distinct counts >= 1")
    cfg["test_images"] = counts_of_test_images(ns, args.test_images, REAL)
    cfg["gen_processes"] = args.gen_processes or cores
    cfg["extra_args"] = shlex.split(args.extra_args)
    return cfg


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    cfg = config_from_args(args)

    print(f"06 --tune-on time and memory vs val images: {cfg}", flush=True)
    if max(cfg["processes"]) > len(os.sched_getaffinity(0)):
        print(f"  note: more processes than the {len(os.sched_getaffinity(0))} cores here: their speed-up is "
              f"not what a larger machine gives", flush=True)
    t0 = time.time()
    res = run(cfg, args.work_dir)
    import torch

    report = {"benchmark": "submission", **bc.env_info(torch.device("cpu")), "config": cfg, **res,
              "seconds": round(time.time() - t0, 1)}
    print()
    print(bc.table(res["rows"], COLUMNS))
    print("\n" + "\n".join(summary_lines(res)))
    bc.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
