#!/usr/bin/env python3
"""Stage 02: train the semantic U-Net (segmentation_models_pytorch) on the prepared set.

Instances come out of the U-Net's per-pixel classes by connected components (lib/models/unet.py).
Writes OUT_DIR/{checkpoint.pth, best.pth, metrics.jsonl, curves.png, val_scores.json, meta.json}
(see lib/engine.py).

Examples:

  # CPU smoke run
  python 02_train_unet.py --prepared-dir work/prepared --out-dir work/unet_quick \\
      --encoder resnet18 --image-size 256 --epochs 1 --batch-size 2 --max-steps-per-epoch 2 \\
      --max-val-images 4 --workers 0

  # one GPU, full run (bf16 autocast by default on CUDA)
  python 02_train_unet.py --prepared-dir work/prepared --out-dir work/unet \\
      --encoder resnet34 --image-size 512 --epochs 30 --batch-size 16 --lr 3e-4 --workers 8

  # several GPUs (--batch-size is per GPU)
  torchrun --nproc_per_node=4 02_train_unet.py --prepared-dir work/prepared --out-dir work/unet \\
      --encoder resnet34 --image-size 512 --epochs 30 --batch-size 16 --lr 6e-4
"""
from __future__ import annotations

import argparse
import sys

from lib import cli, engine


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.script_parser(__doc__)
    cli.add_training_args(p, "work/unet", lr=3e-4, batch_size=8, epochs=30, clip_grad=5.0)
    g = p.add_argument_group("U-Net (defaults: lib/models/unet.py DEFAULT_CONFIG)")
    g.add_argument("--encoder", type=str, default=None, help="smp encoder name, e.g. resnet18, resnet34, efficientnet-b3")
    g.add_argument("--encoder-depth", type=int, default=None, help="encoder stages (3-5)")
    g.add_argument("--decoder-channels", type=int, nargs="+", default=None, help="one per encoder stage")
    g.add_argument("--image-size", type=int, default=None, help="the network sees images with this long side")
    g.add_argument("--ce-weight", type=float, default=None, help="weight of the cross-entropy loss")
    g.add_argument("--dice-weight", type=float, default=None, help="weight of the soft Dice loss")
    g.add_argument("--min-area", type=int, default=None, help="smallest instance kept at inference (network pixels)")
    g.add_argument("--max-instances", type=int, default=None, help="instances per image at inference")
    g.add_argument("--region-masks", action=argparse.BooleanOptionalAction, default=None,
                   help="an instance's mask is its region (1 inside) rather than its class probability there, which "
                        "06's --mask-thresh would cut where the class wins with a lower probability (default: on; "
                        "--no-region-masks: the class probability; bench/RESULTS.md measures both)")
    return p


def model_overrides(args) -> dict:
    """Model config keys set by the flags above (None = the model's default)."""
    return {"encoder": args.encoder, "encoder_depth": args.encoder_depth, "decoder_channels": args.decoder_channels,
            "min_size": args.image_size, "max_size": args.image_size, "ce_weight": args.ce_weight,
            "dice_weight": args.dice_weight, "min_area": args.min_area, "max_instances": args.max_instances,
            "region_masks": args.region_masks}


def main(args) -> int:
    with cli.bad_input_exits("02"):  # a bad file, row or flag: one line naming it
        engine.run("unet", model_overrides(args), cli.train_settings(args),
                            stage="02_train_unet")  # summary: OUT_DIR/meta.json
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
