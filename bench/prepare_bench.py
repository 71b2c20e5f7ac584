"""Benchmark: 01_prepare_data.py throughput and peak memory vs a plain read-resize-write loop.

Both run as subprocesses over the same images (a few unique ``lib.synthetic`` images, repeated under new
ImageIds through hard links, with their train.csv rows repeated too), with the same number of processes:

- ours: ``01_prepare_data.py`` (reads and validates every row, decodes every mask at full size, resizes it,
  re-encodes it, writes the resized JPEG and the annotation record, the index, the split);
- baseline: ``cv2.imread`` -> ``cv2.resize`` (INTER_AREA, long side ``--long-side``) -> ``cv2.imwrite``
  (JPEG q95) per image, nothing else (``--workers`` processes of ``multiprocessing.Pool``).

Figures per image count: images/s (01's own ``meta.json`` seconds, so interpreter start-up is left out;
the baseline times its own loop), ``ratio`` = ours / baseline, and peak RSS: ``peak_rss_mb`` (the largest
single process: ``VmHWM`` of 01's main process or one of its workers) and ``tree_rss_mb`` (the sum over
the process tree); both are sampled from /proc every 20 ms. Memory must stay flat as the work grows:
``rss_growth`` = peak RSS at the largest count / at the smallest. A second sweep grows only train.csv
(``--csv-rows`` rows, most of them for images that ``--limit`` leaves out) to show what indexing the rows
costs in memory.

The default mode is the full-size one for a many-core host (the GPU machine's CPUs; no GPU is needed):
2000 px sources, 1024 px prepared set, 8 processes. ``--cpu`` is the small one.

Examples::

    python bench/prepare_bench.py --cpu                            # small: 256 px sources, 16/64/128 images
    python bench/prepare_bench.py --out work/bench/prepare.json    # full size: 2000 px, 64/256/1024 images
    python bench/prepare_bench.py --cpu --counts 8 64 --workers 2
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = {
    "cpu": dict(unique=4, data_side=256, long_side=128, counts=[16, 64, 128], csv_rows=[5000, 20000, 80000],
                csv_limit=4, workers=1),
    "gpu": dict(unique=16, data_side=2000, long_side=1024, counts=[64, 256, 1024],
                csv_rows=[50000, 200000, 800000], csv_limit=16, workers=8),
}
HEADER = "ImageId,EncodedPixels,Height,Width,ClassId"


# --------------------------------------------------------------------------------------------- data
def base_dataset(work_dir: Path, unique: int, data_side: int) -> Path:
    """The unique synthetic images (train split, long side ``data_side``) under ``work_dir/base``."""
    from lib import synthetic

    base = work_dir / f"base_{unique}_{data_side}"
    synthetic.generate_dataset(base, n_train=unique, n_test=1, seed=0, min_side=max(64, data_side * 2 // 3),
                               max_side=data_side, progress=False)
    return base


def _base_rows(base: Path) -> dict[str, list[str]]:
    rows: dict[str, list[str]] = {}
    with open(base / "train.csv") as f:
        next(f)
        for line in f:
            if line.strip():
                rows.setdefault(line.split(",", 1)[0], []).append(line.rstrip("\n").split(",", 1)[1])
    return rows


def replicated_dataset(base: Path, out: Path, n_images: int, n_rows: int | None = None) -> Path:
    """A Kaggle-layout dir with ``n_images`` images (hard links to the base images, cycled, new ImageIds) and
    their rows; with ``n_rows`` the CSV is padded to that many rows with rows of images that do not exist
    (ImageIds sorting after the real ones, so ``01 --limit n_images`` leaves them out)."""
    if (out / "train.csv").is_file() and (out / "ready").is_file():
        return out
    shutil.rmtree(out, ignore_errors=True)
    (out / "train").mkdir(parents=True)
    shutil.copy(base / "label_descriptions.json", out / "label_descriptions.json")
    rows = _base_rows(base)
    ids = sorted(rows)
    lines = [HEADER]
    for j in range(n_images):
        src = ids[j % len(ids)]
        new = f"a{j:07d}_{src}"
        try:
            os.link(base / "train" / src, out / "train" / new)
        except OSError:
            shutil.copy(base / "train" / src, out / "train" / new)
        lines += [f"{new},{r}" for r in rows[src]]
    j = 0
    while n_rows and len(lines) - 1 < n_rows:
        src = ids[j % len(ids)]
        lines += [f"z{j:07d}_{src},{r}" for r in rows[src]][: n_rows - (len(lines) - 1)]
        j += 1
    (out / "train.csv").write_text("\n".join(lines) + "\n")
    (out / "ready").write_text("")
    return out


# --------------------------------------------------------------------------------------------- measuring
def run_measured(cmd: list[str], env: dict | None = None, poll: float = 0.02) -> dict:
    """Run ``cmd``; return ``rc``, ``wall_s``, ``peak_rss_mb`` (the largest ``VmHWM`` of any process of its
    tree: the peak RSS of one process since its exec) and ``tree_rss_mb`` (the largest sampled sum of the
    tree's RSS), and the end of its output. Both are sampled every ``poll`` seconds from /proc
    (:func:`bench.common.run_measured`)."""
    from bench import common as bc  # not at the top: the plain loop (this file) runs without torch

    r = bc.run_measured(cmd, env, poll, tail=3000)
    return {"rc": r["rc"], "wall_s": r["wall_s"], "peak_rss_mb": r["max_hwm_mb"], "tree_rss_mb": r["tree_rss_mb"],
            "output": r["output"]}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}


def run_ours(data: Path, out: Path, long_side: int, workers: int, limit: int | None = None) -> dict:
    """01 as a subprocess on ``data`` into a fresh ``out``; adds 01's own seconds and images/s."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "01_prepare_data.py", "--data-dir", str(data), "--out-dir", str(out), "--long-side",
           str(long_side), "--processes", str(workers), "--no-progress", "--keep-duplicate-files"] + \
        (["--limit", str(limit)] if limit else [])  # the replicated images share bytes: all of them are the work
    r = run_measured(cmd, _env())
    if r["rc"] != 0:
        raise RuntimeError(f"01_prepare_data.py failed ({r['rc']}):\n{r['output']}")
    meta = json.loads((out / "meta.json").read_text())
    r.update(images=meta["num_images"], rows=meta.get("num_instances"), seconds=meta["seconds"],
             img_s=meta["num_images"] / max(meta["seconds"], 1e-9))
    shutil.rmtree(out, ignore_errors=True)
    return r


def run_plain(data: Path, out: Path, long_side: int, workers: int) -> dict:
    """The baseline loop (this file with ``--plain-loop``) as a subprocess; it reports its own loop time."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--plain-loop", str(data / "train"), str(out),
           "--long-side", str(long_side), "--workers", str(workers)]
    r = run_measured(cmd, _env())
    if r["rc"] != 0:
        raise RuntimeError(f"plain loop failed ({r['rc']}):\n{r['output']}")
    res = json.loads(r["output"].strip().splitlines()[-1])
    r.update(images=res["images"], seconds=res["seconds"], img_s=res["images"] / max(res["seconds"], 1e-9))
    shutil.rmtree(out, ignore_errors=True)
    return r


def _plain_one(task) -> None:
    import cv2

    src, dst, long_side = task
    img = cv2.imread(src, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    h, w = img.shape[:2]
    s = long_side / max(h, w)
    if s < 1:
        img = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    cv2.imwrite(dst, img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def plain_loop(src_dir: Path, dst_dir: Path, long_side: int, workers: int) -> dict:
    """Read, resize, write every JPEG of ``src_dir`` into ``dst_dir``; returns images and loop seconds."""
    import multiprocessing as mp

    dst_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(str(p), str(dst_dir / p.name), long_side) for p in sorted(src_dir.iterdir())]
    if tasks:  # load OpenCV's codecs before the clock starts (01's imports are not timed either)
        _plain_one((tasks[0][0], str(dst_dir / "warmup.jpg"), long_side))
        (dst_dir / "warmup.jpg").unlink()
    t0 = time.perf_counter()
    if workers <= 1:
        for t in tasks:
            _plain_one(t)
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            for _ in pool.imap_unordered(_plain_one, tasks, chunksize=4):
                pass
    return {"images": len(tasks), "seconds": time.perf_counter() - t0}


def _mb(r: dict, key: str) -> float:
    return round(r[key], 1)


def run(cfg: dict, work_dir: Path) -> dict:
    """Both sweeps (image counts, then CSV rows); returns the rows and the summary ratios."""
    t0 = time.time()
    base = base_dataset(work_dir, cfg["unique"], cfg["data_side"])
    rows_out = []
    for n in cfg["counts"]:
        data = replicated_dataset(base, work_dir / f"set_{cfg['data_side']}_{n}", n)
        ours = run_ours(data, work_dir / "out_ours", cfg["long_side"], cfg["workers"])
        plain = run_plain(data, work_dir / "out_plain", cfg["long_side"], cfg["workers"])
        row = {"sweep": "images", "images": n, "csv_rows": ours["rows"], "workers": cfg["workers"],
               "ours_img_s": ours["img_s"], "plain_img_s": plain["img_s"], "ratio": ours["img_s"] / plain["img_s"],
               "ours_peak_rss_mb": _mb(ours, "peak_rss_mb"), "ours_tree_rss_mb": _mb(ours, "tree_rss_mb"),
               "plain_peak_rss_mb": _mb(plain, "peak_rss_mb"), "plain_tree_rss_mb": _mb(plain, "tree_rss_mb"),
               "ours_wall_s": round(ours["wall_s"], 2)}
        rows_out.append(row)
        print(f"  {n:>6} images: 01 {row['ours_img_s']:.1f} img/s (peak {row['ours_peak_rss_mb']} MB, tree "
              f"{row['ours_tree_rss_mb']} MB), plain {row['plain_img_s']:.1f} img/s, ratio {row['ratio']:.2f}",
              flush=True)
    for n_rows in cfg["csv_rows"]:
        data = replicated_dataset(base, work_dir / f"csv_{cfg['data_side']}_{n_rows}", cfg["csv_limit"], n_rows)
        ours = run_ours(data, work_dir / "out_ours", cfg["long_side"], cfg["workers"], limit=cfg["csv_limit"])
        row = {"sweep": "csv_rows", "images": cfg["csv_limit"], "csv_rows": n_rows, "workers": cfg["workers"],
               "ours_img_s": ours["img_s"], "ours_peak_rss_mb": _mb(ours, "peak_rss_mb"),
               "ours_tree_rss_mb": _mb(ours, "tree_rss_mb"), "ours_wall_s": round(ours["wall_s"], 2)}
        rows_out.append(row)
        print(f"  {n_rows:>6} CSV rows (--limit {cfg['csv_limit']}): peak {row['ours_peak_rss_mb']} MB, "
              f"tree {row['ours_tree_rss_mb']} MB, 01 took {ours['seconds']:.2f} s", flush=True)
    img_rows = [r for r in rows_out if r["sweep"] == "images"]
    csv_rows = [r for r in rows_out if r["sweep"] == "csv_rows"]

    def growth(rs, key):
        return rs[-1][key] / rs[0][key] if len(rs) > 1 and rs[0][key] else None

    return {"rows": rows_out, "prepare_ratio": img_rows[-1]["ratio"] if img_rows else None,
            "rss_growth_images": growth(img_rows, "ours_peak_rss_mb"),
            "tree_rss_growth_images": growth(img_rows, "ours_tree_rss_mb"),
            "rss_growth_csv_rows": growth(csv_rows, "ours_peak_rss_mb"), "seconds": round(time.time() - t0, 1)}


COLUMNS = [("sweep", "sweep"), ("images", "images"), ("csv_rows", "CSV rows"), ("workers", "procs"),
           ("ours_img_s", "01 img/s"), ("plain_img_s", "plain img/s"), ("ratio", "01/plain"),
           ("ours_peak_rss_mb", "01 peak RSS MB"), ("ours_tree_rss_mb", "01 tree RSS MB"),
           ("plain_peak_rss_mb", "plain peak RSS MB")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--cpu", action="store_true", help="small mode (default: the full-size mode, no GPU needed)")
    p.add_argument("--counts", type=int, nargs="+", default=None, help="image counts of the first sweep")
    p.add_argument("--csv-rows", type=int, nargs="*", default=None, help="CSV row counts of the second sweep")
    p.add_argument("--unique", type=int, default=None, help="distinct synthetic images behind the copies")
    p.add_argument("--data-side", type=int, default=None, help="long side of the source images")
    p.add_argument("--long-side", type=int, default=None, help="prepared set long side (01 --long-side)")
    p.add_argument("--workers", type=int, default=None, help="processes of 01 and of the plain loop")
    p.add_argument("--work-dir", type=Path, default=Path("work/bench/prepare"), help="synthetic data and outputs")
    p.add_argument("--out", type=Path, default=Path("work/bench/prepare_bench.json"), help="JSON file to write")
    p.add_argument("--plain-loop", nargs=2, default=None, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    return p


def config_from_args(args) -> dict:
    cfg = dict(MODES["cpu" if args.cpu else "gpu"])
    for key in ("counts", "csv_rows", "unique", "data_side", "long_side", "workers"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    cfg["csv_limit"] = min(cfg["csv_limit"], cfg["unique"])
    return cfg


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.plain_loop:  # the baseline subprocess
        res = plain_loop(Path(args.plain_loop[0]), Path(args.plain_loop[1]), args.long_side or 1024,
                         args.workers or 1)
        print(json.dumps(res))
        return res

    cfg = config_from_args(args)
    print(f"01 prepare, {'small' if args.cpu else 'full-size'} mode: {cfg}", flush=True)
    res = run(cfg, args.work_dir)
    import torch

    from bench import common as bc

    report = {"benchmark": "prepare", "mode": "cpu" if args.cpu else "full", **bc.env_info(torch.device("cpu")),
              "config": cfg, **res}
    print()
    print(bc.table(res["rows"], COLUMNS))
    print(f"\n01/plain at {cfg['counts'][-1]} images: {bc.fmt(res['prepare_ratio'])}; peak RSS growth "
          f"{cfg['counts'][0]} -> {cfg['counts'][-1]} images: {bc.fmt(res['rss_growth_images'])}x, "
          f"{cfg['csv_rows'][0] if cfg['csv_rows'] else '-'} -> {cfg['csv_rows'][-1] if cfg['csv_rows'] else '-'} "
          f"CSV rows: {bc.fmt(res['rss_growth_csv_rows'])}x")
    bc.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
