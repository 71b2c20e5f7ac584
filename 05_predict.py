#!/usr/bin/env python3
"""Stage 05: trained checkpoints + images -> prediction table (predictions.parquet, images.parquet, meta.json).

Each checkpoint (a .pth file, or a training out-dir = its best.pth, else checkpoint.pth) is rebuilt from its
own saved config; the model name is the out-dir name (or --names). Masks are stored as soft probabilities
at --mask-size x --mask-size (0 = original size), boxes in original pixels; 06_make_submission.py applies
the real thresholds. Resumable: rerun the same command to continue an interrupted run (see lib/shards.py).

Examples:

  # the synthetic test images, three models
  python 05_predict.py --checkpoints work/unet work/maskrcnn work/deepmac --data-dir data/synthetic \\
      --out-dir work/predictions

  # the validation split of the prepared set (also writes gt.csv there, for 06 to score/tune on)
  python 05_predict.py --checkpoints work/maskrcnn --prepared-dir work/prepared --split val \\
      --out-dir work/predictions_val

  # any images (a folder, or a quoted glob): predictions + overlays/*.png + coco_results.json in --out-dir
  python 05_predict.py --checkpoints work/maskrcnn --images photos/ --out-dir work/predictions_photos
  python 05_predict.py --checkpoints work/unet work/maskrcnn --images "shoots/**/*.jpg" \\
      --params work/submission/params.json --out-dir work/predictions_shoots

  # COCO results with the image ids (by file name) and category ids of a COCO ground truth, for pycocotools
  python 05_predict.py --checkpoints work/maskrcnn --images fashionpedia/test \
      --coco-gt fashionpedia/instances_attributes_val2020.json --out-dir work/photos_fp

  # flip + multi-scale TTA on a GPU, bigger batches
  python 05_predict.py --checkpoints work/maskrcnn/best.pth --data-dir data/imaterialist-fashion-2019-FGVC6 \\
      --tta-flip --tta-scales 0.8 1.0 1.2 --batch-size 8 --workers 8 --out-dir work/predictions_tta

  # several GPUs: each rank predicts every world-th image, rank 0 merges
  torchrun --nproc_per_node=4 05_predict.py --checkpoints work/maskrcnn --data-dir data/imaterialist-fashion-2019-FGVC6
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib import cli
from lib import predict


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.script_parser(__doc__)
    D = cli.field_defaults(predict.PredictSettings)
    g = p.add_argument_group("models and images")
    g.add_argument("--checkpoints", nargs="+", required=True,
                   help="checkpoint files or training out-dirs (an out-dir means its best.pth, else checkpoint.pth)")
    g.add_argument("--names", nargs="+", default=D["names"],
                   help="model names (default: each checkpoint's out-dir name)")
    g.add_argument("--data-dir", type=Path, default=D["data_dir"],
                   help="Kaggle-layout dir: predicts its test images (sample_submission.csv order)")
    g.add_argument("--prepared-dir", type=Path, default=D["prepared_dir"],
                   help="a prepared set: predict one split of it instead (--split) and write gt.csv")
    g.add_argument("--split", choices=["val", "train"], default=D["split"], help="prepared split with --prepared-dir")
    g.add_argument("--images", default=D["images"], metavar="DIR_OR_GLOB",
                   help="predict any images instead: a folder (its .jpg/.jpeg/.png files) or a glob pattern "
                        "(quote it; ** recurses); writes overlays/ and coco_results.json too")
    g.add_argument("--limit", type=int, default=D["limit"],
                   help="predict only the first N images (quick runs); 0 = all")
    g.add_argument("--out-dir", type=Path, default=D["out_dir"], help="output directory")
    g = p.add_argument_group("inference")
    g.add_argument("--batch-size", type=int, default=D["batch_size"], help="images per forward pass (per process)")
    g.add_argument("--workers", type=int, default=D["workers"], help="DataLoader workers decoding + resizing images")
    g.add_argument("--input-long-side", type=int, default=D["input_long_side"],
                   help="shrink images to this long side before the model (0 = the largest model max_size "
                        "x the largest TTA scale; images are never upscaled)")
    g.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default=D["amp"],
                   help="autocast: auto = bf16 on GPUs with native bf16 (A100, H100), fp16 on older GPUs (T4, V100, "
                        "P100), off on CPU")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default=D["device"], help="auto = cuda if available")
    g.add_argument("--channels-last", action="store_true",
                   help="run the models in channels-last (NHWC) layout (bench/infer_bench.py measures it)")
    g.add_argument("--threads", type=int, default=D["threads"],
                   help="torch.set_num_threads on CPU; 0 = torch's default")
    g = p.add_argument_group("test-time augmentation")
    g.add_argument("--tta-flip", action="store_true", help="add horizontally flipped views (mapped back)")
    g.add_argument("--tta-scales", type=float, nargs="+", default=D["tta_scales"],
                   help="view scales, e.g. 0.8 1.0 1.2 (multiply the model's resize sizes)")
    g.add_argument("--tta-iou", type=float, default=D["tta_iou"], help="mask IoU at which instances of two views fuse")
    g = p.add_argument_group("storage")
    g.add_argument("--mask-size", type=int, default=D["mask_size"],
                   help="store masks at N x N (resized from the original frame, aspect not kept); 0 = original size "
                        "(with TTA each view's masks wait on the device as uint8 until fused: about 0.6 GB per view "
                        "and image at 100 detections of a 3000x2000 image, so lower --batch-size)")
    g.add_argument("--score-floor", type=float, default=D["score_floor"],
                   help="drop instances scoring below this (06 applies the real threshold)")
    g.add_argument("--shard-size", type=int, default=D["shard_size"],
                   help="write a resumable shard every N images (rounded up to a multiple of --batch-size)")
    g.add_argument("--stop-after", type=int, default=D["stop_after"],
                   help="stop this run after N images per process (split a long run; rerun to continue); 0 = no")
    g.add_argument("--restart", action="store_true",
                   help="delete shards / results of an earlier run in --out-dir and predict from scratch")
    g.add_argument("--keep-shards", action="store_true", help="keep out_dir/shards after merging")
    g = p.add_argument_group("export (default: on with --images, off otherwise)")
    g.add_argument("--overlays", action=argparse.BooleanOptionalAction, default=D["overlays"],
                   help="write overlays/<image>.png: each image with its post-processed masks, class names, scores")
    g.add_argument("--coco-results", action=argparse.BooleanOptionalAction, default=D["coco_results"],
                   help="write coco_results.json: the post-processed instances in COCO results format")
    g.add_argument("--params", type=Path, default=D["params"],
                   help="06's params.json for the exported instances: thresholds and the combination of several "
                        "models (default: the winning recipe, all models fused with equal weights); a rerun with "
                        "another params file (or other content) exports again")
    g.add_argument("--coco-gt", type=Path, default=D["coco_gt"], metavar="FILE",
                   help="a COCO-format ground-truth file of these images (e.g. Fashionpedia's "
                        "instances_attributes_val2020.json): coco_results.json then uses its image ids (matched by "
                        "file name; an image not in the file is an error) and its category ids (by name), so "
                        "pycocotools' COCO(FILE).loadRes takes it (default: images numbered 1..N, category ids "
                        "0-45); turns --coco-results on")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def main(args) -> int:
    with cli.bad_input_exits("05"):  # a bad file, row or flag: one line naming it
        settings = cli.settings_of(predict.PredictSettings, args, progress=not args.no_progress)
        settings.check()
        predict.run(settings)  # summary: OUT_DIR/meta.json
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
