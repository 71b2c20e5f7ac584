#!/usr/bin/env python3
"""Stage 01: prepare a Kaggle-layout dataset (real or synthetic) and/or COCO-format JSON into the prepared set.

Reads ``--data-dir`` (train.csv, label_descriptions.json, train/) and any ``--coco-json`` files, writes under
``--out-dir``: resized images, per-image instance masks as RLE, index.parquet,
a category-stratified train/val split, problems.csv and meta.json. Resumable:
rerunning the same command skips finished images. The input is never modified.

Examples:

    # offline: generate the embedded synthetic dataset, then prepare it
    python 01_prepare_data.py --synthetic --data-dir data/synthetic --out-dir work/prepared --long-side 384

    # the real competition data (downloaded to data/imaterialist-fashion-2019-FGVC6)
    python 01_prepare_data.py --data-dir data/imaterialist-fashion-2019-FGVC6 --out-dir work/prepared --long-side 1024

    # in a Kaggle notebook
    python 01_prepare_data.py --data-dir /kaggle/input/imaterialist-fashion-2019-FGVC6 --out-dir /kaggle/working/prepared

    # Fashionpedia (COCO-format JSON + images), alone or with the Kaggle data into one prepared set
    python 01_prepare_data.py --coco-json fashionpedia/instances_attributes_train2020.json \\
        --coco-images fashionpedia/train --out-dir work/prepared_fp
    python 01_prepare_data.py --data-dir data/imaterialist-fashion-2019-FGVC6 \\
        --coco-json fashionpedia/instances_attributes_train2020.json --coco-images fashionpedia/train
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib import cli, prepared, synthetic


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.script_parser(__doc__)
    D = cli.field_defaults(prepared.PrepareSettings)
    S = cli.parameter_defaults(synthetic.generate_dataset)
    p.add_argument("--data-dir", type=Path, default=D["data_dir"],
                   help="Kaggle-layout input directory (default: data/synthetic, unless --coco-json alone is given)")
    p.add_argument("--out-dir", type=Path, default=D["out_dir"], help="prepared-set directory to write")
    p.add_argument("--train-csv", type=Path, default=D["train_csv"],
                   help="train.csv to read (default: <data-dir>/train.csv)")
    p.add_argument("--image-dir", type=Path, default=D["image_dir"], help="training images (default: <data-dir>/train)")
    p.add_argument("--labels", type=Path, default=D["labels"],
                   help="label file (default: <data-dir>/label_descriptions.json)")
    p.add_argument("--coco-json", nargs="+", type=Path, default=D["coco_json"], metavar="FILE",
                   help="COCO-format instance files (Fashionpedia's instances_attributes_*2020.json) to prepare too, "
                        "categories and attributes mapped by name; an ImageId already in an earlier source is "
                        "prepared once")
    p.add_argument("--coco-images", nargs="+", type=Path, default=D["coco_images"], metavar="DIR",
                   help="the image folder of each --coco-json file (default: the file's folder)")
    p.add_argument("--long-side", type=int, default=D["long_side"],
                   help="resize images so the long side is this (0 = keep)")
    p.add_argument("--val-fraction", type=float, default=D["val_fraction"], help="fraction of images in the val split")
    p.add_argument("--seed", type=int, default=D["seed"], help="seed of the split")
    p.add_argument("--processes", type=int, default=D["processes"],
                   help="processes preparing images in parallel (0 = all cores)")
    p.add_argument("--limit", type=int, default=D["limit"], help="prepare only the first N images (quick runs)")
    p.add_argument("--jpeg-quality", type=int, default=D["jpeg_quality"], help="JPEG quality of the prepared images")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any row or image was skipped")
    p.add_argument("--keep-duplicate-files", action="store_true",
                   help="prepare every ImageId even when its file has the same bytes as another's (by default "
                        "such an image is prepared once and the others reported)")
    g = p.add_argument_group("synthetic data (offline default)")
    g.add_argument("--synthetic", action="store_true",
                   help="first generate the synthetic Kaggle-layout dataset into --data-dir (reused if it is there)")
    g.add_argument("--synthetic-train", type=int, default=S["n_train"], help="synthetic training images")
    g.add_argument("--synthetic-test", type=int, default=S["n_test"], help="synthetic test images")
    g.add_argument("--synthetic-seed", type=int, default=S["seed"], help="synthetic generator seed")
    g.add_argument("--synthetic-max-side", type=int, default=S["max_side"],
                   help="long side of the largest synthetic image")
    g.add_argument("--synthetic-min-side", type=int, default=S["min_side"],
                   help="long side of the smallest synthetic image")
    g.add_argument("--synthetic-preset", choices=("realistic", "demo"), default=S["preset"],
                   help="how hard the synthetic images are: 'realistic' (1-3 figures, all 46 categories, cluttered "
                        "backgrounds) or 'demo' (one figure in a few big garments on a plain background; "
                        "see lib.synthetic.PRESETS); a set generated with another preset is regenerated")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args) -> int:
    try:
        settings = cli.settings_of(prepared.PrepareSettings, args, progress=not args.no_progress,
                                   record=cli.args_dict(args))
        if args.synthetic:
            synthetic.generate_dataset(settings.data_dir, n_train=args.synthetic_train, n_test=args.synthetic_test,
                                       seed=args.synthetic_seed, min_side=args.synthetic_min_side,
                                       max_side=args.synthetic_max_side, progress=settings.progress,
                                       preset=args.synthetic_preset)
        meta = prepared.run(settings)
    except (ValueError, OSError, RuntimeError) as e:  # bad input or unwritable output: the message says which
        print(f"01: error: {e}", file=sys.stderr)
        return 2
    print(f"01: prepared {meta['num_images']} of {meta['num_images_selected']} images "
          f"({meta['split']['train']} train / {meta['split']['val']} val, {meta['num_instances']} instances) "
          f"into {settings.out_dir} in {meta['seconds']} s")
    if meta["num_problems"]:
        print(f"01: {meta['num_images_skipped']} images skipped, {meta['num_problems']} problems: "
              f"see {settings.out_dir}/problems.csv", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
