#!/usr/bin/env python3
"""Stage 06: prediction tables from 05 -> post-processed, validated Kaggle submission.csv (+ scores).

Reads one or more prediction tables (``predictions.parquet`` files or 05 output
directories); several models are fused with lib/fusion.py. Post-processing
parameters come from ``--params`` (default ``<out-dir>/params.json`` when it
exists, else the winning recipe, the defaults of lib.postprocess.Params); the
``--score-thresh`` ... flags override them. When ground truth is available
(``--gt``, default ``<data-dir>/test_ground_truth.csv``) the Kaggle metric and
COCO mask AP are printed for each model alone and for the ensemble, and saved
to ``scores.json``. ``--tune`` grid-searches the parameters the flags leave
free on that ground truth and saves the full parameter set to
``<out-dir>/params.json``, which later runs load; ``--tune-drop-categories`` then also drops the categories
whose predictions lower the tuning score. With several models, tuning also chooses the combination:
every subset of the models and weight ratio (lib/tuning.py ``choose_combination``); the winner is saved in
params.json and is the default of later runs. ``--tune-on`` tunes on other predictions (the prepared set's val
split, predicted by ``05_predict.py --prepared-dir ... --split val``, which writes its gt.csv) and applies the
result to ``--predictions`` in the same run: the recommended way. The submission is always validated before
it is written; ``meta.json`` is written next to it.

Examples:

    # one model, synthetic data (scores against data/synthetic/test_ground_truth.csv)
    python 06_make_submission.py --predictions work/predict/maskrcnn --out-dir work/submission

    # ensemble of two 05 runs, weights 2:1, keep instances both models found
    python 06_make_submission.py --predictions work/predict/maskrcnn work/predict/deepmac \\
        --ensemble-weights 2 1 --min-votes 2 --out-dir work/submission

    # grid-search the thresholds on the ground truth, save params.json, then write with them
    python 06_make_submission.py --predictions work/predict/maskrcnn --tune

    # recommended: choose models, weights and thresholds on the val split, apply them to the test predictions
    python 05_predict.py --checkpoints work/unet work/maskrcnn work/deepmac --prepared-dir work/prepared \\
        --split val --out-dir work/predictions_val
    python 06_make_submission.py --predictions work/predictions --tune-on work/predictions_val

    # the real competition, attributes on: masks at the size its edition is evaluated at (2019: 512 x 512,
    # 2020: long side 1024; --mask-size overrides)
    python 06_make_submission.py --predictions work/predict/maskrcnn --data-dir data/imaterialist-fashion-2019-FGVC6 \\
        --attributes on --out-dir work/submission

    # check an existing file against the test images (exit status 1 and every problem if invalid)
    python 06_make_submission.py --validate work/submission/submission.csv --data-dir data/synthetic
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lib import cli
from lib import make_submission, postprocess, submission_file


def mask_size(text: str):
    """``--mask-size`` in :func:`lib.submission_file.parse_mask_size`'s form; a bad value is argparse's error."""
    try:
        return submission_file.parse_mask_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def get_args_parser() -> argparse.ArgumentParser:
    p = cli.script_parser(__doc__)
    D = cli.field_defaults(make_submission.SubmissionSettings)
    p.add_argument("--predictions", nargs="+", default=D["predictions"],
                   help="predictions.parquet files or 05 output directories (several -> ensemble)")
    p.add_argument("--models", nargs="+", default=D["models"], help="use only these model names from the tables")
    p.add_argument("--ensemble-weights", nargs="+", type=float, default=D["ensemble_weights"],
                   help="one weight per model used (default: the tuned combination in the params file, else equal)")
    p.add_argument("--ensemble-iou", type=float, default=D["ensemble_iou"],
                   help="mask IoU to fuse instances across models")
    p.add_argument("--min-votes", type=int, default=D["min_votes"],
                   help="keep fused instances found by at least this many models")
    p.add_argument("--data-dir", type=Path, default=D["data_dir"],
                   help="Kaggle-layout directory (test/, sample_submission.csv)")
    p.add_argument("--out-dir", type=Path, default=D["out_dir"],
                   help="where submission.csv, params.json, scores.json, meta.json and report/ go")
    p.add_argument("--mask-size", type=mask_size, default=D["mask_size"], metavar="SIZE",
                   help="the frame of the submission's masks: N (N x N, the image resized without keeping its "
                        "aspect), 0 (each image's own size) or long:N (the image scaled so its long side is N, aspect "
                        "kept, short side floored). Default: the one --data-dir's edition is evaluated at, 512 for "
                        "2019 and long:1024 for 2020 (data/README.md). With --validate: the size FILE was written at "
                        "(default: 06's meta.json beside a submission.csv, else the edition's)")
    p.add_argument("--params", type=Path, default=D["params"],
                   help="post-processing params JSON (default: <out-dir>/params.json if it exists)")
    g = p.add_argument_group("post-processing overrides (default: from --params)")
    g.add_argument("--score-thresh", type=float, default=None, help="drop instances scoring below this")
    g.add_argument("--mask-thresh", type=float, default=None, help="binarise probabilities at >= this")
    g.add_argument("--nms-iou", type=float, default=None, help="per-category mask NMS: drop IoU > this")
    g.add_argument("--min-area", type=int, default=None, help="drop masks smaller than this (pixels)")
    g.add_argument("--overlap", choices=["score", "none"], default=None,
                   help="same-category overlap suppression by score, or none")
    g.add_argument("--keep-categories", default=None, help="only these categories, e.g. garments or 0-26,31")
    g.add_argument("--drop-categories", default=None, help="drop these categories, e.g. parts or 45")
    g.add_argument("--tune-drop-categories", action=argparse.BooleanOptionalAction, default=D["tune_drop_categories"],
                   help="with --tune / --tune-on: after the threshold grid, drop the categories whose predictions "
                        "lower the tuning split's score (a category the model never gets right only adds zeros "
                        "to the images' averages); saved in params.json. Needs a large tuning split: on the "
                        "demo's 12 val images it overfits")
    g.add_argument("--attributes", choices=["off", "on"], default=None, help="emit attributes in ClassIds")
    g.add_argument("--attr-thresh", type=float, default=None,
                   help="attribute score threshold, one for all attributes. Not given: with --attributes on, "
                        "--tune / --tune-on tune one per attribute (micro F1 of the matched instances of the "
                        "tuning split, starting from the saved or default 0.5) into params.json, which later runs "
                        "use; given, it replaces them")
    p.add_argument("--gt", type=Path, default=D["gt"],
                   help="ground truth to score on: train.csv-format CSV or COCO-format JSON, e.g. Fashionpedia's val "
                        "file (default: <data-dir>/test_ground_truth.csv)")
    p.add_argument("--no-score", action="store_true", help="do not score even if ground truth exists")
    p.add_argument("--tune", action="store_true", help="grid-search post-processing on --gt, save params.json, use it")
    p.add_argument("--tune-on", nargs="+", default=D["tune_on"], metavar="DIR",
                   help="05 output dirs of the prepared set's val split (with gt.csv): tune the combination and "
                        "post-processing there, save params.json, and apply them to --predictions")
    p.add_argument("--weight-choices", nargs="+", type=float, default=D["weight_choices"],
                   help="per-model weights tried when tuning a combination (distinct ratios only)")
    p.add_argument("--max-models", type=int, default=D["max_models"],
                   help="largest combination tried when tuning (0 = all models)")
    p.add_argument("--refine", type=int, default=D["refine"],
                   help="combinations searched over the whole grid after a first pass over score thresholds "
                        "(0 = whole grid for every combination)")
    p.add_argument("--tune-grid", default=None,
                   help='JSON grid for --tune, e.g. \'{"score_thresh": [0.4, 0.5], "mask_thresh": [0.45]}\'')
    p.add_argument("--validate", default=None, metavar="FILE",
                   help="only validate FILE against --data-dir's test images; exit 0 if valid, 1 if not")
    p.add_argument("--report-images", type=int, default=D["report_images"],
                   help="images shown in <out-dir>/report/index.html (overlays per model); 0 = no report")
    p.add_argument("--processes", type=int, default=D["processes"],
                   help="worker processes for every pass over the images: tuning, scores, the submission (0 = one "
                        "per CPU, 1 = none)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def settings(args) -> make_submission.SubmissionSettings:
    """The parsed flags as 06's settings: the post-processing flags (named as
    :class:`lib.postprocess.Params`' fields, None = not given) in ``postprocess``, every flag in
    ``record``."""
    return cli.settings_of(
        make_submission.SubmissionSettings, args,
        postprocess={k: getattr(args, k) for k in postprocess.Params.names() if k != "attr_thresholds"},  # tuned only
        tune_grid=make_submission.parse_grid(args.tune_grid), score=not args.no_score, progress=not args.no_progress,
        record=cli.args_dict(args))


def main(args) -> int:
    with cli.bad_input_exits("06"):  # a bad file, row or flag: one line naming it
        if args.validate:
            return make_submission.validate_file(args.validate, args.data_dir, args.mask_size,
                                                 progress=not args.no_progress)
        make_submission.run(settings(args))  # summary: OUT_DIR/meta.json
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
