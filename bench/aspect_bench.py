"""Benchmark: padding in the detectors' batches with and without aspect-ratio grouped batches.

torchvision's ``GeneralizedRCNNTransform`` resizes each image (``scale = min(min_size / short side, max_size /
long side)``, sizes floored) and pads the batch to its largest height and largest width, each rounded up to a
multiple of 32; the backbone then runs on every padded pixel. This script computes, for the same epochs of
the same images, the padded fraction of the batches (``1 - image pixels / batch pixels``) as the training
loader batches them today (``make_loader``: the shuffled order cut into batches) and with
``aspect_ratio_group_factor`` (``lib.training_data.GroupedBatchSampler``: batches of one aspect-ratio group,
torchvision's ``--aspect-ratio-group-factor 3``). No image is read or resized: only sizes.

Sizes:

- ``real``: the real competition images in ``../shared/data/real_samples`` (10 train JPEGs + the test image,
  sizes from the file headers), drawn with replacement to ``--images`` per epoch (11 sizes are too few for
  batches of 8); skipped with a message when ``../shared`` is absent;
- ``synthetic``: the sizes ``lib.synthetic`` gives its first ``--images`` train images (the generator's
  default sides 256-768: ~70% portrait, ~22% landscape, ~8% square).

Each is prepared as 01 does (long side ``--long-side``, never upscaled), then resized as the detector recipe
(``--min-size 800 --max-size 1024``), at each ``--batch-sizes``, without and with the recipe's multi-scale
training (``--scale-range 0.6 1.0``: the model's own resize takes ``min_size`` and ``max_size`` times ``s ~ U(lo,
hi)`` per image). ``pad_ratio`` = padded fraction without / with grouping; ``pixels_ratio`` = batch pixels
without / with (> 1: grouping pads less; the backbone's work scales with the batch pixels).

    python bench/aspect_bench.py                      # prints the table
    python bench/aspect_bench.py --out work/bench/aspect.json
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import common as bc  # noqa: E402

REAL = bc.REPO.parent / "shared" / "data" / "real_samples"
REAL_DIRS = ("imaterialist2019_train", "imaterialist2019_test")
COLUMNS = [("source", "sizes"), ("batch", "batch"), ("scale_range", "scale jitter"), ("images", "images/epoch"),
           ("pad_plain", "padded fraction, plain"), ("pad_grouped", "padded fraction, grouped"),
           ("pad_ratio", "pad ratio"), ("pixels_ratio", "batch pixels ratio")]


# --------------------------------------------------------------------------------------------- sizes
def real_sizes(root: Path = REAL) -> list[tuple[int, int]] | None:
    """(height, width) of the real sample JPEGs (file headers), or None when ``root`` is absent."""
    from PIL import Image

    files = sorted(p for d in REAL_DIRS for p in (Path(root) / d).glob("*.jpg"))
    if not files:
        return None
    out = []
    for p in files:
        with Image.open(p) as im:
            w, h = im.size
        out.append((h, w))
    return out


def synthetic_sizes(n: int, seed: int = 0, min_side: int = 256, max_side: int = 768) -> list[tuple[int, int]]:
    """The (height, width) ``lib.synthetic.generate_dataset`` gives its first ``n`` train images (each image's
    size is the first draw of its own generator)."""
    from lib import synthetic

    code = synthetic._SPLIT_CODE["train"]
    return [synthetic.image_size(np.random.default_rng([seed, code, i]), min_side, max_side) for i in range(n)]


def detector_size(h: int, w: int, min_size: float, max_size: float) -> tuple[int, int]:
    """The size ``GeneralizedRCNNTransform`` resizes an (h, w) image to (``interpolate`` with
    ``scale_factor``, ``recompute_scale_factor=True``: floored)."""
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return int(math.floor(h * scale)), int(math.floor(w * scale))


def model_sizes(sizes, long_side: int | None, min_size: int, max_size: int, scale_range=None,
                seed: int = 0) -> list[tuple[int, int]]:
    """Each size after 01 (long side ``long_side``, never upscaled) and the model's training resize; with
    ``scale_range=(lo, hi)`` the sizes are times a random ``s ~ U(lo, hi)`` per image, as
    ``lib.models.common.ScaleJitterTransform`` (``round(min_size * s)``, ``round(max_size * s)``)."""
    from lib.kaggle_data import resized_shape

    rng = np.random.default_rng(seed)
    out = []
    for h, w in sizes:
        h, w = resized_shape(int(h), int(w), long_side)
        s = float(rng.uniform(*scale_range)) if scale_range else 1.0
        out.append(detector_size(h, w, max(1, round(min_size * s)), max(1, round(max_size * s))))
    return out


# --------------------------------------------------------------------------------------------- batches
def padded_pixels(batches, sizes, divisible: int = 32) -> tuple[int, int]:
    """(image pixels, batch pixels) of ``batches`` (lists of indices into ``sizes``): each batch padded to its
    largest height and width rounded up to ``divisible`` (``GeneralizedRCNNTransform.batch_images``)."""
    real = padded = 0
    for b in batches:
        hs, ws = [sizes[i][0] for i in b], [sizes[i][1] for i in b]
        ph, pw = -(-max(hs) // divisible) * divisible, -(-max(ws) // divisible) * divisible
        real += sum(h * w for h, w in zip(hs, ws))
        padded += len(b) * ph * pw
    return real, padded


class _Sizes:
    """A dataset stand-in for ``make_loader``: only ``index`` (height, width), as a PreparedDataset's."""

    def __init__(self, sizes):
        import pandas as pd

        self.index = pd.DataFrame({"height": [h for h, _ in sizes], "width": [w for _, w in sizes]})

    def __len__(self) -> int:
        return len(self.index)


def epoch_batches(n_or_sizes, batch_size: int, factor: int, seed: int, epoch: int) -> list[list[int]]:
    """The training loader's batches (indices) of ``epoch``: ``make_loader(shuffle=True)`` with
    ``aspect_ratio_group_factor=factor`` (0: today's plain batches)."""
    from lib.training_data import make_loader, set_epoch

    loader = make_loader(_Sizes(n_or_sizes), batch_size, shuffle=True, seed=seed, aspect_ratio_group_factor=factor)
    set_epoch(loader, epoch)
    return [list(b) for b in loader.batch_sampler]


def measure(sizes, batch_size: int, factor: int = 3, epochs: int = 3, seed: int = 0) -> dict:
    """Padded fraction without and with grouping over ``epochs`` epochs of ``sizes`` (model input sizes; the
    groups come from these sizes' aspect ratios, which the resize keeps)."""
    tot = {"plain": [0, 0], "grouped": [0, 0]}
    for epoch in range(epochs):
        for name, f in (("plain", 0), ("grouped", factor)):
            real, padded = padded_pixels(epoch_batches(sizes, batch_size, f, seed, epoch), sizes)
            tot[name][0] += real
            tot[name][1] += padded
    pad = {k: 1 - r / p for k, (r, p) in tot.items()}
    return {"batch": batch_size, "images": len(sizes), "epochs": epochs, "pad_plain": pad["plain"],
            "pad_grouped": pad["grouped"], "pad_ratio": bc.ratio(pad["plain"], pad["grouped"]),
            "pixels_ratio": bc.ratio(tot["plain"][1], tot["grouped"][1])}


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], add_help=add_help)
    p.add_argument("--images", type=int, default=1600, help="images per epoch of each source")
    p.add_argument("--epochs", type=int, default=3, help="epochs (shuffles) summed per row")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[8, 2])
    p.add_argument("--factor", type=int, default=3, help="aspect_ratio_group_factor (torchvision's default 3)")
    p.add_argument("--long-side", type=int, default=1024, help="01's --long-side")
    p.add_argument("--min-size", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1024)
    p.add_argument("--scale-range", type=float, nargs=2, default=[0.6, 1.0],
                   help="the multi-scale rows' factors (the recipe's --scale-range)")
    p.add_argument("--real-dir", type=Path, default=REAL, help="the real sample images (../shared/data/real_samples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the JSON report here")
    return p


def main(argv=None) -> dict:
    args = get_args_parser().parse_args(argv)
    sources = {}
    real = real_sizes(args.real_dir)
    if real is None:
        print(f"real sizes skipped: no JPEGs under {args.real_dir}/{{{','.join(REAL_DIRS)}}} "
              f"(../shared/data beside the repository)")
    else:
        rng = np.random.default_rng(args.seed)
        sources["real"] = [real[i] for i in rng.integers(0, len(real), args.images)]
    sources["synthetic"] = synthetic_sizes(args.images, args.seed)
    rows = []
    for name, raw in sources.items():
        for jitter in (None, tuple(args.scale_range)):
            sizes = model_sizes(raw, args.long_side, args.min_size, args.max_size, jitter, seed=args.seed)
            for bs in args.batch_sizes:
                r = measure(sizes, bs, args.factor, args.epochs, args.seed)
                rows.append({"source": name, "scale_range": f"{jitter[0]:g}-{jitter[1]:g}" if jitter else "none",
                             **r})
    report = {"benchmark": "aspect_ratio_grouping", **bc.env_info("cpu"), "config": vars(args) | {
        "real_dir": str(args.real_dir), "out": str(args.out) if args.out else None},
        "real_sizes": real, "rows": rows}
    print(bc.table(rows, COLUMNS))
    if args.out:
        bc.write_json(args.out, report)
        print(f"\nwrote {args.out}")
    return report


if __name__ == "__main__":
    main()
