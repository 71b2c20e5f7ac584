"""Stage 06: prediction tables from 05 -> post-processed, validated Kaggle submission.csv (+ scores).

Reads one or more prediction tables (``predictions.parquet`` files or 05 output
directories); several models are fused with lib/fusion.py. Post-processing
parameters come from ``--params`` (default ``<out-dir>/params.json`` when it
exists, else the winning recipe lib.submission.POSTPROCESS_DEFAULTS); the
``--score-thresh`` ... flags override them. When ground truth is available
(``--gt``, default ``<data-dir>/test_ground_truth.csv``) the Kaggle metric and
COCO mask AP are printed for each model alone and for the ensemble, and saved
to ``scores.json``. ``--tune`` grid-searches the parameters the flags leave
free on that ground truth and saves the full parameter set to
``<out-dir>/params.json``, which later runs load; ``--tune-drop-categories`` then also drops the categories
whose predictions lower the tuning score. With several models, tuning also chooses the combination:
every subset of the models and weight ratio (lib/ensemble.py ``tune_ensemble``); the winner is saved in
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

import numpy as np


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--predictions", nargs="+", default=[],
                   help="predictions.parquet files or 05 output directories (several -> ensemble)")
    p.add_argument("--models", nargs="+", default=None, help="use only these model names from the tables")
    p.add_argument("--ensemble-weights", nargs="+", type=float, default=None,
                   help="one weight per model used (default: the tuned combination in the params file, else equal)")
    p.add_argument("--ensemble-iou", type=float, default=0.5, help="mask IoU to fuse instances across models")
    p.add_argument("--min-votes", type=int, default=1, help="keep fused instances found by at least this many models")
    p.add_argument("--data-dir", default="data/synthetic",
                   help="Kaggle-layout directory (test/, sample_submission.csv)")
    p.add_argument("--out-dir", type=Path, default=Path("work/submission"),
                   help="where submission.csv, params.json, scores.json, meta.json and report/ go")
    p.add_argument("--mask-size", type=int, default=512, help="mask side in the submission (0 = original image size)")
    p.add_argument("--params", default=None,
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
    g.add_argument("--tune-drop-categories", action=argparse.BooleanOptionalAction, default=False,
                   help="with --tune / --tune-on: after the threshold grid, drop the categories whose predictions "
                        "lower the tuning split's score (a category the model never gets right only adds zeros "
                        "to the images' averages); saved in params.json. Needs a large tuning split: on the "
                        "demo's 12 val images it overfits")
    g.add_argument("--attributes", choices=["off", "on"], default=None, help="emit attributes in ClassIds")
    g.add_argument("--attr-thresh", type=float, default=None, help="attribute score threshold")
    p.add_argument("--gt", default=None,
                   help="train.csv-format ground truth to score on (default: <data-dir>/test_ground_truth.csv)")
    p.add_argument("--no-score", action="store_true", help="do not score even if ground truth exists")
    p.add_argument("--tune", action="store_true", help="grid-search post-processing on --gt, save params.json, use it")
    p.add_argument("--tune-on", nargs="+", default=None, metavar="DIR",
                   help="05 output dirs of the prepared set's val split (with gt.csv): tune the combination and "
                        "post-processing there, save params.json, and apply them to --predictions")
    p.add_argument("--weight-choices", nargs="+", type=float, default=[1.0, 2.0],
                   help="per-model weights tried when tuning a combination (distinct ratios only)")
    p.add_argument("--max-models", type=int, default=0,
                   help="largest combination tried when tuning (0 = all models)")
    p.add_argument("--refine", type=int, default=3,
                   help="combinations searched over the whole grid after a first pass over score thresholds "
                        "(0 = whole grid for every combination)")
    p.add_argument("--tune-grid", default=None,
                   help='JSON grid for --tune, e.g. \'{"score_thresh": [0.4, 0.5], "mask_thresh": [0.45]}\'')
    p.add_argument("--validate", default=None, metavar="FILE",
                   help="only validate FILE against --data-dir's test images; exit 0 if valid, 1 if not")
    p.add_argument("--report-images", type=int, default=6,
                   help="images shown in <out-dir>/report/index.html (overlays per model); 0 = no report")
    p.add_argument("--processes", type=int, default=0,
                   help="processes that post-process and encode the test images (0 = one per CPU, 1 = none)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return p


def _load_sources(paths, models):
    """[(name, table)], one per model of each table (predicted image ids where 05 listed them)."""
    import pandas as pd

    from lib import prediction_table as lpred

    sources, predicted = [], set()
    for p in map(Path, paths):
        f = p / "predictions.parquet" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(f"prediction table not found: {f}")
        meta = f.parent / "meta.json"
        status = json.loads(meta.read_text()).get("status") if meta.is_file() else None
        if status not in (None, "done"):
            raise SystemExit(f"{f.parent}: 05_predict.py did not finish there (status {status!r}); rerun the same "
                             f"05 command to complete it before making a submission")
        table = lpred.read_table(f)
        images = f.parent / "images.parquet"
        if images.is_file():
            predicted.update(pd.read_parquet(images, columns=["image_id"])["image_id"])
        else:
            predicted.update(table["image_id"])
        names = list(dict.fromkeys(table["model"]))
        if meta.is_file():  # 05 lists every model, also one that predicted nothing above its score floor
            listed = [m["name"] for m in json.loads(meta.read_text()).get("models", []) if m.get("name")]
            names = listed + [n for n in names if n not in listed]
        for m in names if models is None else [m for m in names if m in models]:
            name = m if all(m != s[0] for s in sources) else f"{m}@{f}"
            sources.append((name, table[table["model"] == m].reset_index(drop=True)))
    if models is not None:
        found = {s[0].split("@")[0] for s in sources}
        if set(models) - found:
            raise ValueError(f"--models {sorted(set(models) - found)} not in the tables")
    if not sources:
        raise ValueError("no predictions to use (empty tables, or --models matched nothing)")
    return sources, predicted


def _cache_split_source(paths) -> dict | None:
    """If the first prediction dir came from ``05_predict.py --prepared-dir --split``, its images/gt/image dir."""
    import pandas as pd

    d = Path(paths[0])
    d = d if d.is_dir() else d.parent
    meta = d / "meta.json"
    if not meta.is_file():
        return None
    src = json.loads(meta.read_text()).get("source") or {}
    if not isinstance(src, dict) or not src.get("prepared_dir"):
        return None
    gt = d / "gt.csv"
    return {"dir": d, "split": src.get("split"), "images": pd.read_parquet(d / "images.parquet"),
            "gt": str(gt) if gt.is_file() else None, "image_dir": str(Path(src["prepared_dir"]) / "images")}


def _print_score(name, s):
    print(f"  {name:<30} kaggle {s['kaggle']:.4f}   mask AP {s['AP']:.4f}  AP50 {s['AP50']:.4f}  "
          f"AP75 {s['AP75']:.4f}   ({s['num_images']} images)")


def main(args) -> int:
    from lib import ensemble as lens
    from lib import fusion as lfusion
    from lib import submission as lsub
    from lib.io import atomic_write_json

    t0 = time.time()
    progress = not args.no_progress
    mask_size = args.mask_size or None
    val_source = _cache_split_source(args.predictions) if args.predictions and not args.validate else None
    if val_source:  # 05 predicted a split of the prepared set: its images and gt.csv are the reference
        images = val_source["images"]
        print(f"images and ground truth from {val_source['dir']} (prepared split {val_source['split']!r})")
        if args.gt is None and val_source["gt"]:
            args.gt = val_source["gt"]
    else:
        images = lsub.list_test_images(args.data_dir, progress=progress)
    ids = images["image_id"].tolist()
    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}

    if args.validate:
        problems = lsub.validate_submission(args.validate, ids, mask_size, sizes)
        for line in problems:
            print(line)
        print(f"{args.validate}: {'VALID' if not problems else f'INVALID ({len(problems)} problems)'} "
              f"against {len(ids)} test images of {args.data_dir}")
        return 1 if problems else 0

    if not args.predictions:
        raise SystemExit("--predictions is required (unless --validate)")
    sources, predicted = _load_sources(args.predictions, args.models)
    not_predicted = [i for i in ids if i not in predicted]
    if not_predicted:
        print(f"WARNING: {len(not_predicted)} of {len(ids)} test images were not predicted "
              f"(e.g. {not_predicted[:3]}); they get placeholder rows", file=sys.stderr)
    if args.ensemble_weights and len(args.ensemble_weights) != len(sources):
        raise SystemExit(f"--ensemble-weights: {len(args.ensemble_weights)} weights for {len(sources)} models "
                         f"{[n for n, _ in sources]}")

    out = Path(args.out_dir) / "submission.csv"
    params_path = Path(args.params) if args.params else out.parent / "params.json"
    if args.params and not params_path.is_file():
        raise SystemExit(f"--params file not found: {params_path}")
    tuning = args.tune or bool(args.tune_on)
    have_params = params_path.is_file() and not (tuning and not args.params)
    base = lsub.load_params(params_path) if have_params else dict(lsub.POSTPROCESS_DEFAULTS)
    overrides = dict(score_thresh=args.score_thresh, mask_thresh=args.mask_thresh, nms_iou=args.nms_iou,
                     min_area=args.min_area, overlap=args.overlap, keep_categories=args.keep_categories,
                     drop_categories=args.drop_categories, attributes=args.attributes, attr_thresh=args.attr_thresh)
    params = lsub.resolve_params(base, **overrides)
    full_ids = params["attributes"] == "on"
    explicit = args.models is not None or args.ensemble_weights is not None
    names = [n for n, _ in sources]
    combo = {"models": names, "weights": args.ensemble_weights or [1.0] * len(names),
             "iou": args.ensemble_iou, "min_votes": args.min_votes}
    combo_from = "flags" if explicit else "all models, equal weights"
    if have_params and not explicit:
        saved = lens.load_combination(params_path)
        if saved is not None:
            combo, combo_from = saved, str(params_path)

    gt = Path(args.gt) if args.gt else Path(args.data_dir) / "test_ground_truth.csv"
    have_gt = gt.is_file()
    if args.gt and not have_gt:
        raise SystemExit(f"--gt file not found: {gt}")
    if tuning:
        if args.tune_on:  # tune on the val-split predictions and their gt.csv
            tsrc = _cache_split_source(args.tune_on)
            if not tsrc or not tsrc["gt"]:
                raise SystemExit(f"--tune-on {args.tune_on[0]}: not a 05 output of a prepared set split with gt.csv "
                                 f"(run 05_predict.py --prepared-dir ... --split val --out-dir {args.tune_on[0]})")
            tune_sources, _ = _load_sources(args.tune_on, args.models)
            tgt, timages = Path(tsrc["gt"]), tsrc["images"]
        else:
            if not have_gt:
                raise SystemExit(f"--tune needs ground truth (--gt; {gt} not found)")
            tune_sources, tgt, timages = sources, gt, images
        grid = json.loads(args.tune_grid) if args.tune_grid else lsub.DEFAULT_GRID
        grid = {k: v for k, v in grid.items() if overrides.get(k) is None}  # explicit flags are not tuned
        if not grid:
            raise SystemExit("--tune: every grid parameter is fixed by a flag; nothing to tune")
        tuned_path = out.parent / "params.json"
        # after the grid, drop the categories whose predictions lower the score, unless a flag fixes them
        tune_drops = args.tune_drop_categories and args.keep_categories is None and args.drop_categories is None
        tdict = dict(tune_sources)
        if explicit or len(tdict) == 1:  # the combination is given: tune its post-processing only
            if len(tdict) == 1 and not explicit:
                combo = dict(combo, models=list(tdict), weights=[1.0])
            missing = [n for n in combo["models"] if n not in tdict]
            if missing:
                raise SystemExit(f"--tune-on: models {missing} are not in {args.tune_on} (it has {list(tdict)})")
            params, results = lsub.tune(lfusion.combine(tdict, combo, progress), tgt, grid, mask_size, params,
                                        full_ids, images=timages, progress=progress, drop_categories=tune_drops)
            best = max(r["kaggle"] for r in results)
            lsub.save_params(tuned_path, params, kaggle=best, mask_size=mask_size, gt=str(tgt),
                             grid={k: list(v) for k, v in grid.items()}, ensemble=combo)
            print(f"tuned {len(results)} post-processing combinations on {tgt}: best kaggle {best:.4f} with "
                  f"{ {k: params[k] for k in grid} } -> {tuned_path}")
        else:
            print(f"tuning the combination of {list(tdict)} and its post-processing on {tgt} ...")
            combo, params, results = lens.tune_ensemble(
                tdict, tgt, grid, mask_size, params, weight_choices=args.weight_choices, iou_thr=args.ensemble_iou,
                min_votes=args.min_votes, max_models=args.max_models or None, refine=args.refine,
                full_class_ids=full_ids, images=timages, out_path=tuned_path, progress=progress,
                drop_categories=tune_drops)
            for r in sorted(results, key=lambda r: (-(r["kaggle"] if r["kaggle"] is not None else -1),
                                                    -r["kaggle_first"]))[:5]:
                full = "  n/a " if r["kaggle"] is None else f"{r['kaggle']:.4f}"
                print(f"  kaggle {full} (thresholds only {r['kaggle_first']:.4f})  {r['models']} "
                      f"weights {[round(w, 2) for w in r['weights']]}")
            print(f"best of {len(results)} combinations -> {tuned_path}")
        combo_from = f"tuned on {tgt}"
    if len(names) > 1:
        print(f"combination ({combo_from}): {combo['models']} weights {[round(w, 3) for w in combo['weights']]}, "
              f"IoU {combo['iou']}, min votes {combo['min_votes']}")
    final = lfusion.combine(dict(sources), combo, progress)
    print(f"post-processing: {params} (from {params_path if have_params or tuning else 'defaults'})")

    # What is compared: each model alone, all models fused with equal weights ("ensemble"), and the
    # combination written to submission.csv ("submission") when it is neither of those.
    all_models = {"models": names, "weights": [1.0] * len(names), "iou": args.ensemble_iou,
                  "min_votes": args.min_votes, "min_score": 0.0}
    is_all = combo["models"] == names and np.allclose(combo["weights"], 1.0)
    compared = dict(sources)
    if len(names) > 1:
        compared["ensemble"] = final if is_all else None  # fused below, only when scored
        if not is_all:
            compared["submission"] = final
    scores = {}
    if have_gt and not args.no_score:
        print(f"scores on {gt} (masks at {mask_size or 'original size'}):")
        kw = dict(params=params, mask_size=mask_size, full_class_ids=full_ids, images=images, progress=progress)
        for name, table in compared.items():
            if table is None:
                table = compared[name] = lfusion.combine(dict(sources), all_models, progress)
            scores[name] = lsub.score_table(table, gt, **kw)
            label = name if name != "submission" else f"submission = {'+'.join(combo['models'])}"
            _print_score(label, scores[name])
        atomic_write_json(out.parent / "scores.json", {"gt": str(gt), "scores": scores,
                                                       "submission": combo})

    sub = lsub.build_submission(final, images, params, mask_size, progress=progress, workers=args.processes)
    lsub.write_submission(sub, out, ids, mask_size, sizes)
    report = None
    if args.report_images > 0:
        from lib.report import train_dirs_from_predictions, write_report

        tables = {k: v for k, v in compared.items() if v is not None}
        report = write_report(out.parent / "report", args.data_dir, tables, params, gt if have_gt else None,
                              train_dirs_from_predictions(args.predictions), scores, n_images=args.report_images,
                              image_dir=val_source["image_dir"] if val_source else None,
                              extra={"submission": str(out), "scores": str(out.parent / "scores.json") if scores else None,
                                     "predictions": ", ".join(map(str, args.predictions))})
        print(f"report: {report}")
    n_placeholder = int(((sub["EncodedPixels"] == lsub.PLACEHOLDER[0]) & (sub["ClassId"] == lsub.PLACEHOLDER[1])).sum())
    atomic_write_json(out.parent / "meta.json", {
        "stage": "06_make_submission",
        "args": vars(args),
        "predictions": [str(p) for p in args.predictions],
        "models": [n for n, _ in sources],
        "combination": combo,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()},
        "mask_size": mask_size,
        "num_images": len(ids),
        "num_rows": len(sub),
        "num_placeholder_rows": n_placeholder,
        "images_not_predicted": len(not_predicted),
        "scores": {k: {m: v[m] for m in ("kaggle", "AP", "AP50", "AP75")} for k, v in scores.items()},
        "report": str(report) if report else None,
        "seconds": round(time.time() - t0, 1),
    })
    print(f"wrote {out}: {len(sub)} rows for {len(ids)} images ({n_placeholder} placeholder rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
