"""Benchmark: lib/rle.py vs pycocotools' C RLE, measured in one run, printed as ratios.

Both sides start from the same C-ordered (H, W) uint8 mask (encode) or the same
Kaggle RLE string (decode) and produce the same thing:

- encode: ours = ``lib.rle.encode(mask)`` -> Kaggle string;
  baseline = ``np.asfortranarray(mask)`` (the column-major copy pycocotools needs)
  + ``pycocotools.mask.encode`` (C, compressed counts; no string formatting, so the
  baseline is flattered).
- decode: ours = ``lib.rle.decode(string, shape)`` (strict validation included) -> (H, W) uint8;
  baseline = string -> counts -> ``frPyObjects`` + ``pycocotools.mask.decode`` (C) -> (H, W) uint8.
  Both return Fortran-ordered arrays.

Masks are garment-like shapes (filled ellipses and polygons) at 1024x1024 and 3000x2000.

    python bench/rle_bench.py            # prints a table
    python bench/rle_bench.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_util

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lib import rle  # noqa: E402


def garment_mask(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2), (w // 4, h // 3), 10, 0, 360, 1, -1)
    pts = (rng.random((7, 2)) * [w, h]).astype(np.int32)
    cv2.fillPoly(m, [cv2.convexHull(pts)], 1)
    cv2.rectangle(m, (w // 10, h // 12), (w // 5, h // 3), 0, -1)
    return m


def best_of(fn, repeat: int, number: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def coco_decode_from_string(s: str, h: int, w: int) -> np.ndarray:
    v = np.array(s.split(), np.int64)
    starts = v[0::2] - 1
    b = np.empty(2 * len(starts) + 2, np.int64)
    b[0], b[-1] = 0, h * w
    b[1:-1:2] = starts
    b[2:-1:2] = starts + v[1::2]
    return mask_util.decode(mask_util.frPyObjects({"size": [h, w], "counts": np.diff(b).tolist()}, h, w))


def run(sizes, repeat: int = 5, number: int = 10) -> list[dict]:
    out = []
    for h, w in sizes:
        m = garment_mask(h, w)
        s = rle.encode(m)
        assert np.array_equal(rle.decode(s, (h, w)), m)
        assert np.array_equal(coco_decode_from_string(s, h, w), m)
        t = {
            "ours_encode": best_of(lambda: rle.encode(m), repeat, number),
            "coco_encode": best_of(lambda: mask_util.encode(np.asfortranarray(m)), repeat, number),
            "ours_decode": best_of(lambda: rle.decode(s, (h, w)), repeat, number),
            "coco_decode": best_of(lambda: coco_decode_from_string(s, h, w), repeat, number),
        }
        out.append({"shape": [h, w], "runs": len(s.split()) // 2, **{k: v * 1e3 for k, v in t.items()},
                    "encode_ratio": t["coco_encode"] / t["ours_encode"],
                    "decode_ratio": t["coco_decode"] / t["ours_decode"]})
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeat", type=int, default=5, help="repetitions (best is kept)")
    p.add_argument("--number", type=int, default=10, help="calls per repetition")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    res = run([(1024, 1024), (3000, 2000)], args.repeat, args.number)
    print(f"{'shape':>11} {'runs':>6} {'ours enc':>9} {'coco enc':>9} {'ratio':>6} {'ours dec':>9} {'coco dec':>9} {'ratio':>6}")
    for r in res:
        print(f"{r['shape'][0]:>5}x{r['shape'][1]:<5} {r['runs']:>6} {r['ours_encode']:>7.2f}ms {r['coco_encode']:>7.2f}ms "
              f"{r['encode_ratio']:>5.2f}x {r['ours_decode']:>7.2f}ms {r['coco_decode']:>7.2f}ms {r['decode_ratio']:>5.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
