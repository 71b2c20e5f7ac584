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
    from lib.cli import DefaultsHelpFormatter, add_prepare_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    return add_prepare_args(p)


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
            label_file=args.labels, args=vars(args), coco=coco, keep_duplicate_files=args.keep_duplicate_files)
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
