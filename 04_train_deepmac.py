#!/usr/bin/env python3
"""Stage 04: train Deep-MARC / DeepMAC (Mask R-CNN with a deep hourglass mask head trained on GT boxes).

The deep mask head generalises to categories whose masks were not trained: e.g. train masks on the
garments only (--mask-categories garments) and still get masks for the parts. Writes OUT_DIR/
{checkpoint.pth, best.pth, metrics.jsonl, curves.png, val_scores.json, meta.json} (see lib/engine.py).

Examples:

  # CPU smoke run
  python 04_train_deepmac.py --prepared-dir work/prepared --out-dir work/deepmac_quick \\
      --backbone resnet18 --min-size 256 --max-size 256 --mask-head-width 32 --mask-head-stacks 1 \\
      --epochs 1 --batch-size 2 --max-steps-per-epoch 2 --max-val-images 4 --workers 0

  # one GPU, full run
  python 04_train_deepmac.py --prepared-dir work/prepared --out-dir work/deepmac \\
      --backbone resnet50 --min-size 800 --max-size 1024 --mask-roi-size 32 --mask-head-depth 3 \\
      --mask-head-width 128 --mask-head-stacks 2 --epochs 12 --batch-size 8 --lr 2e-4 --workers 8

  # several GPUs (--batch-size is per GPU)
  torchrun --nproc_per_node=4 04_train_deepmac.py --prepared-dir work/prepared --out-dir work/deepmac \\
      --backbone resnet50 --epochs 12 --batch-size 8 --lr 4e-4
"""
from __future__ import annotations

import argparse
import sys

from lib import cli, engine


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.script_parser(__doc__)
    cli.add_training_args(p, "work/deepmac", clip_grad=10.0, aspect_ratio_group_factor=3)
    cli.add_detector_args(p, deepmac=True)
    return p


def model_overrides(args) -> dict:
    """Model config keys set by the flags above (None = the model's default)."""
    return cli.detector_overrides(args)


def main(args) -> int:
    with cli.bad_input_exits("04"):  # a bad file, row or flag: one line naming it
        engine.run("deepmac", model_overrides(args), cli.train_settings(args),
                            stage="04_train_deepmac")  # summary: OUT_DIR/meta.json
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
