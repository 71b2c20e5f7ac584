"""Benchmark: peak memory of 05's final merge, streaming (``lib.shards.ShardStore.merge``) vs in memory.

The data are 05 shards as ``05_predict.py`` writes them (``lib.shards.ShardStore.write``): ``--ranks`` ranks (rank
``r`` predicts every ``ranks``-th image), ``--shard-size`` images a shard, ``--rows`` rows per image over three
models, each row a real PNG crop of about ``--png-kb`` KB (random pixels, so it does not compress; a ``tEXt``
chunk numbering the row makes every row's bytes distinct, as real masks are).

Each merge runs in a fresh subprocess that reports its own peak RSS (``VmHWM`` of /proc/self/status, the
interpreter and its imports included) and its time:

- baseline: the merge 05 had before it streamed: every shard part read with pandas, concatenated, sorted
  (image, model, score descending; stable) and written with ``to_parquet`` (one row group);
- ours: ``ShardStore.merge``: a k-way merge holding the parts whose image ranges overlap (about one per rank),
  written a row group of whole images at a time.

The two files are compared (batch by batch): the same rows and the same schema. Figures per image count: peak RSS
(MB), ``ratio`` = baseline / ours (> 1: ours needs less), seconds; then the growth of each peak per image (MB per
image, smallest to largest count) and the peak it projects for 4,500 images (the val split). Ours must stay flat.

Examples::

    python bench/merge_bench.py                                  # 200 / 400 / 800 images of 100 rows of ~7 KB
    python bench/merge_bench.py --images 100 1000 --ranks 4 --out work/bench/merge_bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DEFAULTS = dict(images=[200, 400, 800], rows=100, png_kb=7.0, ranks=2, shard_size=100)
MODELS = ["a", "b", "c"]
PROJECT_IMAGES = 4500


# --------------------------------------------------------------------------------------------- data
def unique_png(png: bytes, n: int) -> bytes:
    """``png`` with a ``tEXt`` chunk holding ``n`` before its ``IEND`` chunk: still a valid PNG, bytes unique to n."""
    data = b"row\x00" + str(n).encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    return png[:-12] + chunk + png[-12:]


def _base_pngs(png_kb: float, seed: int, count: int = 16) -> list[bytes]:
    """``count`` PNGs of random (h, w) uint8 crops, about ``png_kb`` KB each."""
    import numpy as np

    from lib import prediction_table as lpred

    rng = np.random.default_rng(seed)
    side = max(1, int((png_kb * 1024) ** 0.5))
    return [lpred.encode_quantized(rng.integers(1, 256, (side, side), dtype=np.uint8))[2] for _ in range(count)]


def make_shards(out_dir: Path, n_images: int, rows: int, png_kb: float, ranks: int, shard_size: int,
                seed: int = 0) -> list[str]:
    """Write the shards of ``n_images`` predicted images into ``out_dir/shards`` (as 05's ranks would); returns
    the image list. Rows come in no particular order within an image (the merge sorts them)."""
    import numpy as np
    import pandas as pd

    from lib.shards import ShardStore

    rng = np.random.default_rng(seed)
    pngs = _base_pngs(png_kb, seed)
    store = ShardStore(out_dir)
    shutil.rmtree(store.dir, ignore_errors=True)
    store.check_config("bench", {"benchmark": "merge"})
    image_ids = [f"{n:06d}.jpg" for n in range(n_images)]
    row_no = 0
    for r in range(ranks):
        mine = image_ids[r::ranks]
        for k in range(0, len(mine), shard_size):
            ids = mine[k:k + shard_size]
            shard_rows = []
            for iid in ids:
                for j in range(rows):
                    x0, y0 = (int(v) for v in rng.integers(0, 400, 2))
                    shard_rows.append({
                        "image_id": iid, "model": MODELS[j % len(MODELS)], "category": int(rng.integers(0, 46)),
                        "score": float(rng.random()), "x1": 1.0, "y1": 2.0, "x2": 300.0, "y2": 400.0,
                        "orig_height": 1024, "orig_width": 768, "mask_height": 512, "mask_width": 512,
                        "mask_x0": x0, "mask_y0": y0, "mask_png": unique_png(pngs[row_no % len(pngs)], row_no),
                        "attr_scores": None})
                    row_no += 1
            images = pd.DataFrame({"image_id": ids, "orig_height": 1024, "orig_width": 768}).astype(
                {"orig_height": "int32", "orig_width": "int32"})
            store.write(r, k // shard_size, shard_rows, images)
    (out_dir / "bench.json").write_text(json.dumps({"image_ids": image_ids, "models": MODELS}))
    return image_ids


# --------------------------------------------------------------------------------------------- the two merges
def baseline_merge(out_dir: Path, dest: Path) -> None:
    """The merge before it streamed: all parts in pandas, concatenated, sorted, one ``to_parquet``."""
    import numpy as np
    import pandas as pd

    from lib import prediction_table as lpred
    from lib.shards import ShardStore

    spec = json.loads((out_dir / "bench.json").read_text())
    image_ids, model_order = spec["image_ids"], spec["models"]
    store = ShardStore(out_dir)
    done = store.done().set_index("image_id")
    owner = {i: (int(done.at[i, "rank"]), int(done.at[i, "shard"])) for i in image_ids}
    parts = []
    for f in sorted(store.dir.glob("part-*.parquet")):
        key = tuple(int(x) for x in f.stem.split("-")[1:])
        if (store.dir / f.name.replace("part-", "images-")).is_file():
            t = pd.read_parquet(f)
            if len(t):
                parts.append(t[[owner.get(i) == key for i in t["image_id"]]])
    pos = {iid: n for n, iid in enumerate(image_ids)}
    mpos = {m: n for n, m in enumerate(model_order)}
    table = pd.concat(parts, ignore_index=True) if parts else lpred.make_table([])
    if len(table):
        table = table.assign(_i=table["image_id"].map(pos), _m=table["model"].map(mpos).fillna(len(mpos)),
                             _s=-table["score"].astype(np.float64))
        table = table.sort_values(["_i", "_m", "_s"], kind="stable").drop(columns=["_i", "_m", "_s"])
    table = table[lpred.COLUMNS].astype(lpred.DTYPES) if len(table) else lpred.make_table([])
    table.reset_index(drop=True).to_parquet(dest, index=False)


def ours_merge(out_dir: Path, dest: Path) -> None:
    from lib.shards import ShardStore

    spec = json.loads((out_dir / "bench.json").read_text())
    ShardStore(out_dir).merge(dest, spec["image_ids"], spec["models"])


def peak_rss_mb() -> float:
    """This process's peak RSS (``VmHWM`` of /proc/self/status, MB). Not ``getrusage``'s ``ru_maxrss``: after a
    fork and exec that one still counts the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(which: str, out_dir: Path, dest: Path) -> dict:
    """One merge in this (fresh) process: its seconds and this process's peak RSS before and after (MB)."""
    import pandas  # noqa: F401  (both merges import these: their memory is in the start figure)
    import pyarrow.parquet  # noqa: F401

    from lib import shards  # noqa: F401

    start = peak_rss_mb()
    t0 = time.perf_counter()
    (baseline_merge if which == "baseline" else ours_merge)(out_dir, dest)
    seconds = time.perf_counter() - t0
    return {"which": which, "seconds": seconds, "start_rss_mb": start, "peak_rss_mb": peak_rss_mb()}


def run_child(which: str, out_dir: Path, dest: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", which, str(out_dir), str(dest)],
                       cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{which} merge failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def same_files(a: Path, b: Path) -> bool:
    """Whether two parquet files hold the same rows and schema (pandas metadata included), read in batches."""
    import pyarrow.parquet as pq

    fa, fb = pq.ParquetFile(a), pq.ParquetFile(b)
    if not fa.schema_arrow.equals(fb.schema_arrow, check_metadata=True) or \
            fa.metadata.num_rows != fb.metadata.num_rows:
        return False
    return all(x.equals(y) for x, y in zip(fa.iter_batches(1024), fb.iter_batches(1024)))


# --------------------------------------------------------------------------------------------- run
def run(cfg: dict, work_dir: Path) -> dict:
    t0 = time.time()
    rows_out = []
    for n in cfg["images"]:
        d = work_dir / f"images_{n}"
        make_shards(d, n, cfg["rows"], cfg["png_kb"], cfg["ranks"], cfg["shard_size"])
        base = run_child("baseline", d, d / "baseline.parquet")
        ours = run_child("ours", d, d / "ours.parquet")
        shard_mb = sum(f.stat().st_size for f in (d / "shards").glob("part-*.parquet")) / 2**20
        row = {"images": n, "rows": n * cfg["rows"], "parts_mb": round(shard_mb, 1),
               "baseline_peak_rss_mb": round(base["peak_rss_mb"], 1), "ours_peak_rss_mb": round(ours["peak_rss_mb"], 1),
               "start_rss_mb": round(ours["start_rss_mb"], 1),
               "baseline_s": round(base["seconds"], 2), "ours_s": round(ours["seconds"], 2),
               "same_file": same_files(d / "baseline.parquet", d / "ours.parquet")}
        row["ratio"] = row["baseline_peak_rss_mb"] / row["ours_peak_rss_mb"]
        rows_out.append(row)
        print(f"  {n:>6} images ({row['parts_mb']} MB of parts): baseline peak {row['baseline_peak_rss_mb']} MB, "
              f"ours {row['ours_peak_rss_mb']} MB, ratio {row['ratio']:.2f}; same file: {row['same_file']}", flush=True)
        shutil.rmtree(d, ignore_errors=True)
    return {"rows": rows_out, **growth(rows_out), "seconds": round(time.time() - t0, 1)}


def growth(rows: list[dict]) -> dict:
    """Peak RSS growth per image (MB/image, first to last row) of each side, and its projection to 4,500 images."""
    a, b = rows[0], rows[-1]
    out = {}
    for side in ("baseline", "ours"):
        key = f"{side}_peak_rss_mb"
        per = (b[key] - a[key]) / (b["images"] - a["images"]) if b["images"] != a["images"] else None
        out[f"{side}_mb_per_image"] = per
        out[f"{side}_projected_mb"] = None if per is None else b[key] + per * (PROJECT_IMAGES - b["images"])
    out["ratio"] = b["ratio"]
    return out


COLUMNS = [("images", "images"), ("rows", "rows"), ("parts_mb", "parts MB"), ("start_rss_mb", "start RSS MB"),
           ("baseline_peak_rss_mb", "baseline peak MB"), ("ours_peak_rss_mb", "ours peak MB"),
           ("ratio", "baseline/ours"), ("baseline_s", "baseline s"), ("ours_s", "ours s"), ("same_file", "same file")]


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--images", type=int, nargs="+", default=None, help="image counts (at least two)")
    p.add_argument("--rows", type=int, default=None, help="rows per image (over three models)")
    p.add_argument("--png-kb", type=float, default=None, help="size of each row's mask PNG (KB)")
    p.add_argument("--ranks", type=int, default=None, help="ranks that wrote the shards (images interleaved)")
    p.add_argument("--shard-size", type=int, default=None, help="images per shard (05 --shard-size)")
    p.add_argument("--work-dir", type=Path, default=Path("work/bench/merge"), help="shards and merged files")
    p.add_argument("--out", type=Path, default=Path("work/bench/merge_bench.json"), help="JSON file to write")
    p.add_argument("--child", nargs=3, default=None, metavar=("WHICH", "DIR", "DEST"), help=argparse.SUPPRESS)
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    if args.child:  # one merge, in its own process
        res = child(args.child[0], Path(args.child[1]), Path(args.child[2]))
        print(json.dumps(res))
        return res
    from bench import common as bc

    cfg = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in DEFAULTS.items()}
    if len(cfg["images"]) < 2:
        raise SystemExit("--images: give at least two counts (the growth per image is measured between them)")
    print(f"05 merge memory: {cfg}", flush=True)
    res = run(cfg, args.work_dir)
    import torch

    report = {"benchmark": "merge", "mode": "cpu", **bc.env_info(torch.device("cpu")), "config": cfg, **res}
    print()
    print(bc.table(res["rows"], COLUMNS))
    print(f"\npeak RSS growth per image, {cfg['images'][0]} -> {cfg['images'][-1]} images: baseline "
          f"{bc.fmt(res['baseline_mb_per_image'])} MB, ours {bc.fmt(res['ours_mb_per_image'])} MB; projected to "
          f"{PROJECT_IMAGES} images: baseline {bc.fmt(res['baseline_projected_mb'], '.0f')} MB, ours "
          f"{bc.fmt(res['ours_projected_mb'], '.0f')} MB; baseline/ours at {cfg['images'][-1]}: {bc.fmt(res['ratio'])}")
    bc.write_json(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
