"""Stage 06: prediction tables from 05 -> post-processed, validated Kaggle submission.csv (+ scores).

Reads one or more prediction tables (``predictions.parquet`` files or 05 output
directories); several models are fused with lib/fusion.py. Post-processing
parameters come from ``--params`` (default ``<out-dir>/params.json`` when it
exists, else the winning recipe lib.postprocess.POSTPROCESS_DEFAULTS); the
``--score-thresh`` ... flags override them. When ground truth is available
(``--gt``, default ``<data-dir>/test_ground_truth.csv``) the Kaggle metric and
COCO mask AP are printed for each model alone and for the ensemble, and saved
to ``scores.json``. ``--tune`` grid-searches the parameters the flags leave
free on that ground truth and saves the full parameter set to
``<out-dir>/params.json``, which later runs load; ``--tune-drop-categories`` then also drops the categories
whose predictions lower the tuning score. With several models, tuning also chooses the combination:
every subset of the models and weight ratio (lib/tuning.py ``tune_ensemble``); the winner is saved in
params.json and is the default of later runs. ``--tune-on`` tunes on other predictions (the prepared set's val
split, predicted by ``05_predict.py --prepared-dir ... --split val``, which writes its gt.csv) and applies the
result to ``--predictions`` in the same run: the recommended way. The submission is always validated before
it is written; ``meta.json`` is written next to it.

Examples::

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
import os
import sys


def get_args_parser() -> argparse.ArgumentParser:
    from lib.cli import DefaultsHelpFormatter, add_submission_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=DefaultsHelpFormatter)
    return add_submission_args(p)


def main(args) -> int:
    from lib import io as lio
    from lib import make_submission
    from lib.cli import submission_settings

    try:
        if args.validate:
            return make_submission.validate_file(args.validate, args.data_dir, args.mask_size,
                                                 progress=not args.no_progress)
        make_submission.run(submission_settings(args))  # summary: OUT_DIR/meta.json
    except (ValueError, FileNotFoundError) as e:  # bad input: the message says which
        if os.environ.get("IMAT_TRACEBACK") or not lio.raised_by_project(e):
            raise  # from inside a library: a bug, shown with its traceback (IMAT_TRACEBACK=1: always)
        raise SystemExit(f"06: error: {e}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
