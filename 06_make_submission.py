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

    # the real competition: original-size masks, attributes on
    python 06_make_submission.py --predictions work/predict/maskrcnn --data-dir data/imaterialist-fashion-2019-FGVC6 \\
        --mask-size 0 --attributes on --out-dir work/submission

    # check an existing file against the test images (exit status 1 and every problem if invalid)
    python 06_make_submission.py --validate work/submission/submission.csv --data-dir data/synthetic
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def get_args_parser() -> argparse.ArgumentParser:
    from lib.cli import add_submission_args

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    return add_submission_args(p)


def validate(path, images, mask_size, data_dir) -> int:
    from lib.submission import validate_submission

    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    problems = validate_submission(path, images["image_id"].tolist(), mask_size, sizes)
    print("\n".join(problems + [f"{path}: {'VALID' if not problems else f'INVALID ({len(problems)} problems)'} "
                                f"against {len(images)} test images of {data_dir}"]))
    return 1 if problems else 0


def choose(args, sources, images, gt, out_dir, mask_size, progress):
    """The post-processing parameters and combination: from params.json / flags, or tuned (--tune, --tune-on)."""
    from lib import prediction_table as lpred
    from lib import tuning
    from lib.cli import postprocess_overrides

    params_path = Path(args.params) if args.params else out_dir / "params.json"
    if args.params and not params_path.is_file():
        raise ValueError(f"--params file not found: {params_path}")
    tuning_on = args.tune or bool(args.tune_on)
    explicit = args.models is not None or args.ensemble_weights is not None
    overrides = postprocess_overrides(args)
    params, combo, origin = tuning.initial_choice(
        [n for n, _ in sources], params_path, params_path.is_file() and not (tuning_on and not args.params),
        overrides, args.ensemble_weights, args.ensemble_iou, args.min_votes, explicit)
    full_ids = params["attributes"] == "on"
    if not tuning_on:
        return params, combo, origin, str(params_path) if params_path.is_file() else "defaults"
    if args.tune_on:  # tune on the val-split predictions and their gt.csv
        split = lpred.split_source(args.tune_on)
        if not split or not split["gt"]:
            raise ValueError(f"--tune-on {args.tune_on[0]}: not a 05 output of a prepared split with gt.csv (run "
                             f"05_predict.py --prepared-dir ... --split val --out-dir {args.tune_on[0]})")
        tune_sources, tgt, timages = dict(lpred.read_sources(args.tune_on, args.models)[0]), split["gt"], split["images"]
    else:
        if not gt.is_file():
            raise ValueError(f"--tune needs ground truth (--gt; {gt} not found)")
        tune_sources, tgt, timages = dict(sources), gt, images
    grid = tuning.free_grid(json.loads(args.tune_grid) if args.tune_grid else None, overrides)
    drops = args.tune_drop_categories and args.keep_categories is None and args.drop_categories is None
    combo, params = tuning.tune_choice(
        tune_sources, Path(tgt), timages, grid, mask_size, params, combo, explicit, out_dir / "params.json",
        args.weight_choices, args.max_models or None, args.refine, full_ids, drops, progress)
    return params, combo, f"tuned on {tgt}", str(params_path)


def main(args) -> int:
    from lib import fusion, scoring
    from lib import prediction_table as lpred
    from lib import submission as lsub
    from lib.io import atomic_write_json

    t0, progress, mask_size, out_dir = time.time(), not args.no_progress, args.mask_size or None, Path(args.out_dir)
    split = lpred.split_source(args.predictions) if args.predictions and not args.validate else None
    if split:  # 05 predicted a prepared split: its images and gt.csv are the reference
        print(f"images and ground truth from {split['dir']} (prepared split {split['split']!r})")
    images = split["images"] if split else lsub.list_test_images(args.data_dir, progress=progress)
    if args.validate:
        return validate(args.validate, images, mask_size, args.data_dir)
    if not args.predictions:
        raise SystemExit("--predictions is required (unless --validate)")
    given_gt = args.gt or (split["gt"] if split else None)
    gt = Path(given_gt or Path(args.data_dir) / "test_ground_truth.csv")
    if given_gt and not gt.is_file():
        raise SystemExit(f"--gt file not found: {gt}")
    try:
        sources, predicted = lpred.read_sources(args.predictions, args.models)
        if args.ensemble_weights and len(args.ensemble_weights) != len(sources):
            raise ValueError(f"--ensemble-weights: {len(args.ensemble_weights)} weights for {len(sources)} models "
                             f"{[n for n, _ in sources]}")
        params, combo, origin, params_from = choose(args, sources, images, gt, out_dir, mask_size, progress)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    ids = images["image_id"].tolist()
    not_predicted = [i for i in ids if i not in predicted]
    if not_predicted:
        print(f"WARNING: {len(not_predicted)} of {len(ids)} test images were not predicted "
              f"(e.g. {not_predicted[:3]}); they get placeholder rows", file=sys.stderr)
    if len(sources) > 1:
        print(f"combination ({origin}): {combo['models']} weights {[round(w, 3) for w in combo['weights']]}, "
              f"IoU {combo['iou']}, min votes {combo['min_votes']}")
    final = fusion.combine(dict(sources), combo, progress)
    print(f"post-processing: {params} (from {params_from})")
    full_ids, scored = params["attributes"] == "on", gt.is_file() and not args.no_score
    compared = fusion.compared_tables(dict(sources), combo, final, scored, args.ensemble_iou, args.min_votes, progress)
    scores = {}
    if scored:
        print(f"scores on {gt} (masks at {mask_size or 'original size'}):")
        for name, table in compared.items():
            scores[name] = scoring.score_table(table, gt, params=params, mask_size=mask_size, full_class_ids=full_ids,
                                               images=images, progress=progress)
            print(scoring.score_line(name if name != "submission" else f"submission = {'+'.join(combo['models'])}",
                                     scores[name]))
        atomic_write_json(out_dir / "scores.json", {"gt": str(gt), "scores": scores, "submission": combo})

    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    sub = lsub.build_submission(final, images, params, mask_size, progress=progress, workers=args.processes)
    lsub.write_submission(sub, out_dir / "submission.csv", ids, mask_size, sizes)
    report = None
    if args.report_images > 0:
        from lib.report import train_dirs_from_predictions, write_report

        report = write_report(out_dir / "report", args.data_dir, compared, params, gt if gt.is_file() else None,
                              train_dirs_from_predictions(args.predictions), scores, n_images=args.report_images,
                              image_dir=split["image_dir"] if split else None,
                              extra={"submission": str(out_dir / "submission.csv"),
                                     "scores": str(out_dir / "scores.json") if scores else None,
                                     "predictions": ", ".join(map(str, args.predictions))})
        print(f"report: {report}")
    n_placeholder = lsub.count_placeholders(sub)
    atomic_write_json(out_dir / "meta.json", {
        "stage": "06_make_submission", "args": vars(args), "predictions": [str(p) for p in args.predictions],
        "models": [n for n, _ in sources], "combination": combo,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}, "mask_size": mask_size,
        "num_images": len(ids), "num_rows": len(sub), "num_placeholder_rows": n_placeholder,
        "images_not_predicted": len(not_predicted),
        "scores": {k: {m: v[m] for m in ("kaggle", "AP", "AP50", "AP75")} for k, v in scores.items()},
        "report": str(report) if report else None, "seconds": round(time.time() - t0, 1)})
    print(f"wrote {out_dir / 'submission.csv'}: {len(sub)} rows for {len(ids)} images ({n_placeholder} placeholder rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
