#!/usr/bin/env python3
"""Stage 05: trained checkpoints + images -> prediction table (predictions.parquet, images.parquet, meta.json).

Each checkpoint (a .pth file, or a training out-dir = its best.pth, else checkpoint.pth) is rebuilt from its
own saved config; the model name is the out-dir name (or --names). Masks are stored as soft probabilities
at --mask-size x --mask-size (0 = original size), boxes in original pixels; 06_make_submission.py applies
the real thresholds. Resumable: rerun the same command to continue an interrupted run (see lib/predict.py).

Examples:

  # the synthetic test images, three models
  python 05_predict.py --checkpoints work/unet work/maskrcnn work/deepmac --data-dir data/synthetic \\
      --out-dir work/predictions

  # the validation split of the prepared set (also writes gt.csv there, for 06 to score/tune on)
  python 05_predict.py --checkpoints work/maskrcnn --prepared-dir work/prepared --split val \\
      --out-dir work/predictions_val

  # flip + multi-scale TTA on a GPU, bigger batches
  python 05_predict.py --checkpoints work/maskrcnn/best.pth --data-dir data/imaterialist-fashion-2019-FGVC6 \\
      --tta-flip --tta-scales 0.8 1.0 1.2 --batch-size 8 --workers 8 --out-dir work/predictions_tta

  # several GPUs: each rank predicts every world-th image, rank 0 merges
  torchrun --nproc_per_node=4 05_predict.py --checkpoints work/maskrcnn --data-dir data/imaterialist-fashion-2019-FGVC6
"""
import argparse
import sys
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    g = p.add_argument_group("models and images")
    g.add_argument("--checkpoints", nargs="+", required=True,
                   help="checkpoint files or training out-dirs (an out-dir means its best.pth, else checkpoint.pth)")
    g.add_argument("--names", nargs="+", default=None, help="model names (default: each checkpoint's out-dir name)")
    g.add_argument("--data-dir", type=Path, default=Path("data/synthetic"),
                   help="Kaggle-layout dir: predicts its test images (sample_submission.csv order)")
    g.add_argument("--prepared-dir", type=Path, default=None,
                   help="a prepared set: predict one split of it instead (--split) and write gt.csv")
    g.add_argument("--split", choices=["val", "train"], default="val", help="prepared split with --prepared-dir")
    g.add_argument("--limit", type=int, default=0, help="predict only the first N images (quick runs); 0 = all")
    g.add_argument("--out-dir", type=Path, default=Path("work/predictions"), help="output directory")
    g = p.add_argument_group("inference")
    g.add_argument("--batch-size", type=int, default=4, help="images per forward pass (per process)")
    g.add_argument("--workers", type=int, default=4, help="DataLoader workers decoding + resizing images")
    g.add_argument("--input-long-side", type=int, default=0,
                   help="shrink images to this long side before the model (0 = the largest model max_size "
                        "x the largest TTA scale; images are never upscaled)")
    g.add_argument("--amp", choices=["auto", "bf16", "off"], default="auto",
                   help="autocast: auto = bf16 on CUDA, off on CPU")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda if available")
    g.add_argument("--channels-last", action="store_true",
                   help="run the models in channels-last (NHWC) layout (bench/infer_bench.py measures it)")
    g.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on CPU; 0 = torch's default")
    g = p.add_argument_group("test-time augmentation")
    g.add_argument("--tta-flip", action="store_true", help="add horizontally flipped views (mapped back)")
    g.add_argument("--tta-scales", type=float, nargs="+", default=[1.0],
                   help="view scales, e.g. 0.8 1.0 1.2 (multiply the model's resize sizes)")
    g.add_argument("--tta-iou", type=float, default=0.5, help="mask IoU at which instances of two views fuse")
    g = p.add_argument_group("storage")
    g.add_argument("--mask-size", type=int, default=512,
                   help="store masks at N x N (resized from the original frame, aspect not kept); 0 = original size "
                        "(with TTA each view's masks wait on the device as uint8 until fused: about 0.6 GB per view "
                        "and image at 100 detections of a 3000x2000 image, so lower --batch-size)")
    g.add_argument("--score-floor", type=float, default=0.05,
                   help="drop instances scoring below this (06 applies the real threshold)")
    g.add_argument("--shard-size", type=int, default=100,
                   help="write a resumable shard every N images (rounded up to a multiple of --batch-size)")
    g.add_argument("--stop-after", type=int, default=0,
                   help="stop this run after N images per process (split a long run; rerun to continue); 0 = no")
    g.add_argument("--restart", action="store_true",
                   help="delete shards / results of an earlier run in --out-dir and predict from scratch")
    g.add_argument("--keep-shards", action="store_true", help="keep out_dir/shards after merging")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args) -> int:
    from lib.predict import run_prediction

    if args.mask_size < 0 or not 0 <= args.score_floor <= 1 or args.batch_size < 1:
        raise SystemExit("--mask-size must be >= 0, --score-floor in [0, 1], --batch-size >= 1")
    run_prediction(args)  # summary: OUT_DIR/meta.json
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
