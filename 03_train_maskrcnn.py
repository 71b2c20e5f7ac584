#!/usr/bin/env python3
"""Stage 03: train Mask R-CNN (torchvision, FPN backbone) on the prepared set.

Writes OUT_DIR/{checkpoint.pth, best.pth, metrics.jsonl, curves.png, val_scores.json, meta.json}
(see lib/engine.py). Checkpoints load with torch.load(..., weights_only=True) and rebuild the model
from their own config (lib.checkpoint.load_checkpoint).

Examples:

  # CPU smoke run (minutes): light backbone, small images, two steps per epoch
  python 03_train_maskrcnn.py --prepared-dir work/prepared --out-dir work/maskrcnn_quick \\
      --backbone resnet18 --min-size 256 --max-size 256 --epochs 1 --batch-size 2 \\
      --max-steps-per-epoch 2 --max-val-images 4 --workers 0

  # one GPU, full run (bf16 autocast by default on CUDA)
  python 03_train_maskrcnn.py --prepared-dir work/prepared --out-dir work/maskrcnn \\
      --backbone resnet50 --min-size 800 --max-size 1024 --epochs 12 --batch-size 8 --lr 2e-4 --workers 8

  # several GPUs on one machine (--batch-size is per GPU)
  torchrun --nproc_per_node=4 03_train_maskrcnn.py --prepared-dir work/prepared --out-dir work/maskrcnn \\
      --backbone resnet50 --epochs 12 --batch-size 8 --lr 4e-4

  # continue an interrupted run
  python 03_train_maskrcnn.py --out-dir work/maskrcnn --resume auto  # plus the same flags as before
"""
from __future__ import annotations

import argparse
import sys

from lib import cli, engine


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.script_parser(__doc__)
    cli.add_training_args(p, "work/maskrcnn", clip_grad=10.0, aspect_ratio_group_factor=3)
    cli.add_detector_args(p)
    return p


def model_overrides(args) -> dict:
    """Model config keys set by the flags above (None = the model's default)."""
    return cli.detector_overrides(args)


def main(args) -> int:
    with cli.bad_input_exits("03"):  # a bad file, row or flag: one line naming it
        engine.run("maskrcnn", model_overrides(args), cli.train_settings(args),
                            stage="03_train_maskrcnn")  # summary: OUT_DIR/meta.json
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
