"""Stage 01: prepare a Kaggle-layout dataset (real or synthetic) and/or COCO-format JSON into the prepared set.

Reads ``--data-dir`` (train.csv, label_descriptions.json, train/) and any ``--coco-json`` files, writes under
``--out-dir``: resized images, per-image instance masks as RLE, index.parquet,
a category-stratified train/val split, problems.csv and meta.json. Resumable:
rerunning the same command skips finished images. The input is never modified.

Examples::

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


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data-dir", default=None,
                   help="Kaggle-layout input directory (default: data/synthetic, unless --coco-json alone is given)")
    p.add_argument("--out-dir", default="work/prepared", help="prepared-set directory to write")
    p.add_argument("--train-csv", default=None, help="train.csv to read (default: <data-dir>/train.csv)")
    p.add_argument("--image-dir", default=None, help="training images (default: <data-dir>/train)")
    p.add_argument("--labels", default=None, help="label file (default: <data-dir>/label_descriptions.json)")
    p.add_argument("--coco-json", nargs="+", default=[], metavar="FILE",
                   help="COCO-format instance files (Fashionpedia's instances_attributes_*2020.json) to prepare too, "
                        "categories and attributes mapped by name; an ImageId already in an earlier source is "
                        "prepared once")
    p.add_argument("--coco-images", nargs="+", default=[], metavar="DIR",
                   help="the image folder of each --coco-json file (default: the file's folder)")
    p.add_argument("--long-side", type=int, default=1024, help="resize images so the long side is this (0 = keep)")
    p.add_argument("--val-fraction", type=float, default=0.1, help="fraction of images in the val split")
    p.add_argument("--seed", type=int, default=0, help="seed of the split")
    p.add_argument("--processes", type=int, default=0, help="processes preparing images in parallel (0 = all cores)")
    p.add_argument("--limit", type=int, default=None, help="prepare only the first N images (quick runs)")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of the cached images")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any row or image was skipped")
    g = p.add_argument_group("synthetic data (offline default)")
    g.add_argument("--synthetic", action="store_true",
                   help="first generate the synthetic Kaggle-layout dataset into --data-dir (reused if it is there)")
    g.add_argument("--synthetic-train", type=int, default=48, help="synthetic training images")
    g.add_argument("--synthetic-test", type=int, default=12, help="synthetic test images")
    g.add_argument("--synthetic-seed", type=int, default=0, help="synthetic generator seed")
    g.add_argument("--synthetic-max-side", type=int, default=768, help="long side of the largest synthetic image")
    g.add_argument("--synthetic-min-side", type=int, default=256, help="long side of the smallest synthetic image")
    g.add_argument("--synthetic-preset", choices=("realistic", "demo"), default="realistic",
                   help="how hard the synthetic images are: 'realistic' (1-3 figures, all 46 categories, cluttered "
                        "backgrounds) or 'demo' (one figure in a few big garments on a plain background; "
                        "see lib.synthetic.PRESETS); a set generated with another preset is regenerated")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args) -> int:
    from lib import prepared

    if len(args.coco_images) > len(args.coco_json):
        raise SystemExit(f"--coco-images: {len(args.coco_images)} folders for {len(args.coco_json)} --coco-json files")
    if args.data_dir is None and not args.coco_json:
        args.data_dir = "data/synthetic"
    coco = [(f, args.coco_images[k] if k < len(args.coco_images) else None) for k, f in enumerate(args.coco_json)]
    if args.synthetic:
        from lib import synthetic

        synthetic.generate_dataset(args.data_dir, n_train=args.synthetic_train, n_test=args.synthetic_test,
                                   seed=args.synthetic_seed, min_side=args.synthetic_min_side,
                                   max_side=args.synthetic_max_side, progress=not args.no_progress,
                                   preset=args.synthetic_preset)
    try:
        meta = prepared.prepare_dataset(
            args.data_dir, args.out_dir, long_side=args.long_side or None, val_fraction=args.val_fraction,
            seed=args.seed, workers=args.processes, limit=args.limit, progress=not args.no_progress,
            jpeg_quality=args.jpeg_quality, csv_path=args.train_csv, image_dir=args.image_dir,
            label_file=args.labels, args=vars(args), coco=coco)
    except (ValueError, OSError, RuntimeError) as e:  # bad input or unwritable output: the message says which
        print(f"01: error: {e}", file=sys.stderr)
        return 2
    print(f"01: prepared {meta['num_images']} of {meta['num_images_selected']} images "
          f"({meta['split']['train']} train / {meta['split']['val']} val, {meta['num_instances']} instances) "
          f"into {args.out_dir} in {meta['seconds']} s")
    if meta["num_problems"]:
        print(f"01: {meta['num_images_skipped']} images skipped, {meta['num_problems']} problems: "
              f"see {args.out_dir}/problems.csv", file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
