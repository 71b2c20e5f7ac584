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
import argparse
import os
import sys


def get_args_parser() -> argparse.ArgumentParser:
    from lib.cli import add_predict_args

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    return add_predict_args(p)


def main(args) -> int:
    from lib import io as lio
    from lib.cli import predict_settings
    from lib.predict import run_prediction

    try:
        settings = predict_settings(args)
        settings.check()
        run_prediction(settings)  # summary: OUT_DIR/meta.json
    except (ValueError, FileNotFoundError) as e:  # bad input (a missing image or file): the message says which
        if os.environ.get("IMAT_TRACEBACK") or not lio.raised_by_project(e):
            raise  # from inside a library: a bug, shown with its traceback (IMAT_TRACEBACK=1: always)
        raise SystemExit(f"05: error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
