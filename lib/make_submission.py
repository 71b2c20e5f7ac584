"""Stage 06 (``06_make_submission.py``): prediction tables -> a validated ``submission.csv``, scores, a report.

Flow of :func:`run` (settings: :class:`SubmissionSettings`):

1. the images: the test images of the Kaggle-layout ``data_dir`` (:func:`lib.submission.list_test_images`),
   or, when the predictions are of a prepared split (``05_predict.py --prepared-dir --split``), that split's
   images and its ``gt.csv``, or of a folder (``05_predict.py --images``), its images; the ground truth
   ``gt`` may be a train.csv-format CSV or a COCO-format JSON (Fashionpedia's val file,
   :func:`lib.scoring.load_ground_truth`);
2. the prediction tables, one source per model (:func:`lib.prediction_table.read_sources`);
3. the post-processing parameters and the model combination (:func:`choose`): from ``params`` (default
   ``<out_dir>/params.json``) and the flags, or tuned on ground truth (``tune``) or on other predictions
   with theirs (``tune_on``, the recommended way: 05's output of the prepared val split) and saved to
   ``<out_dir>/params.json`` (:mod:`lib.tuning`);
4. the models fused as chosen (:func:`lib.fusion.combine`); with ground truth, each model alone, all of them
   fused with equal weights and the chosen combination are scored (:func:`lib.scoring.score_table`,
   ``scores.json``);
5. ``submission.csv`` built (:func:`lib.submission.build_submission`), in the columns of ``data_dir``'s
   edition (its ``sample_submission.csv`` header: the 2020 edition's AttributesIds column with that edition's
   attribute ids, :func:`lib.submission.to_edition_2020`), validated and written; an HTML report
   (:func:`lib.report.write_report`) and ``meta.json``. The competition refuses overlapping masks of one
   class, so the file always has same-category overlaps removed by score: ``overlap="none"`` (a scoring
   experiment) applies to the scores and the report only (:func:`submission_params`).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import fusion, scoring, tuning
from . import prediction_table as lpred
from . import submission as lsub
from .io import atomic_write_json

__all__ = ["SubmissionSettings", "validate_file", "choose", "submission_params", "run"]


@dataclass
class SubmissionSettings:
    """What 06 is told (``06_make_submission.py``'s flags, same names; see its ``--help``). ``postprocess``:
    the post-processing flags (:data:`lib.postprocess.POSTPROCESS_DEFAULTS` keys, None = not given);
    ``tune_grid``: a grid dict or None; ``record``: every flag, as meta.json saves them."""

    predictions: list = field(default_factory=list)
    models: list | None = None
    ensemble_weights: list | None = None
    ensemble_iou: float = 0.5
    min_votes: int = 1
    data_dir: Path = Path("data/synthetic")
    out_dir: Path = Path("work/submission")
    mask_size: int = 512
    params: Path | None = None
    postprocess: dict = field(default_factory=dict)
    gt: Path | None = None
    score: bool = True
    tune: bool = False
    tune_on: list | None = None
    tune_grid: dict | None = None
    tune_drop_categories: bool = False
    weight_choices: list = field(default_factory=lambda: [1.0, 2.0])
    max_models: int = 0
    refine: int = 3
    report_images: int = 6
    processes: int = 0
    progress: bool = True
    record: dict = field(default_factory=dict)


def validate_file(path, data_dir, mask_size: int | None, progress: bool = True) -> int:
    """Check a submission file against ``data_dir``'s test images; print every problem. Returns 0 if valid."""
    images = lsub.list_test_images(data_dir, progress=progress)
    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    problems = lsub.validate_submission(path, images["image_id"].tolist(), mask_size, sizes, _edition(data_dir)[2])
    print("\n".join(problems + [f"{path}: {'VALID' if not problems else f'INVALID ({len(problems)} problems)'} "
                                f"against {len(images)} test images of {data_dir}"]))
    return 1 if problems else 0


def choose(s: SubmissionSettings, sources: list, images: pd.DataFrame, gt: Path, mask_size: int | None):
    """The post-processing parameters and the model combination: ``(params, combo, where the combination comes
    from, where the parameters come from)``, from params.json and the flags, or tuned (``tune``, ``tune_on``)."""
    out_dir = Path(s.out_dir)
    params_path = Path(s.params) if s.params else out_dir / "params.json"
    if s.params and not params_path.is_file():
        raise ValueError(f"--params file not found: {params_path}")
    tuning_on = s.tune or bool(s.tune_on)
    explicit = s.models is not None or s.ensemble_weights is not None
    params, combo, origin = tuning.initial_choice(
        [n for n, _ in sources], params_path, params_path.is_file() and not (tuning_on and not s.params),
        s.postprocess, s.ensemble_weights, s.ensemble_iou, s.min_votes, explicit)
    if not tuning_on:
        return params, combo, origin, str(params_path) if params_path.is_file() else "defaults"
    if s.tune_on:  # tune on the val-split predictions and their gt.csv
        split = lpred.split_source(s.tune_on)
        if not split or not split["gt"]:
            raise ValueError(f"--tune-on {s.tune_on[0]}: not a 05 output of a prepared split with gt.csv (run "
                             f"05_predict.py --prepared-dir ... --split val --out-dir {s.tune_on[0]})")
        tune_sources, tgt, timages = dict(lpred.read_sources(s.tune_on, s.models)[0]), split["gt"], split["images"]
    else:
        if not gt.is_file():
            raise ValueError(f"--tune needs ground truth (--gt; {gt} not found)")
        tune_sources, tgt, timages = dict(sources), gt, images
    grid = tuning.free_grid(s.tune_grid, s.postprocess)
    fixed = s.postprocess.get("keep_categories") is not None or s.postprocess.get("drop_categories") is not None
    combo, params = tuning.tune_choice(
        tune_sources, Path(tgt), timages, grid, mask_size, params, combo, explicit, out_dir / "params.json",
        s.weight_choices, s.max_models or None, s.refine, params["attributes"] == "on",
        s.tune_drop_categories and not fixed, s.progress)
    return params, combo, f"tuned on {tgt}", str(params_path)


def _score(compared: dict, gt: Path, params: dict, mask_size, images, combo: dict, progress: bool) -> dict:
    """Score every compared table on ``gt``, print one line each; returns ``{name: score_table result}``."""
    print(f"scores on {gt} (masks at {mask_size or 'original size'}):")
    scores = {}
    for name, table in compared.items():
        scores[name] = scoring.score_table(table, gt, params=params, mask_size=mask_size,
                                           full_class_ids=params["attributes"] == "on", images=images,
                                           progress=progress)
        label = name if name != "submission" else f"submission = {'+'.join(combo['models'])}"
        print(scoring.score_line(label, scores[name]))
    return scores


def _report(s: SubmissionSettings, compared: dict, params: dict, gt: Path | None, scores: dict, split) -> Path:
    from .report import train_dirs_from_predictions, write_report

    out_dir = Path(s.out_dir)
    return write_report(out_dir / "report", s.data_dir, compared, params, gt,
                        train_dirs_from_predictions(s.predictions), scores, n_images=s.report_images,
                        image_dir=split["image_dir"] if split else None,
                        extra={"submission": str(out_dir / "submission.csv"),
                               "scores": str(out_dir / "scores.json") if scores else None,
                               "predictions": ", ".join(map(str, s.predictions))})


def submission_params(params: dict) -> dict:
    """The post-processing of ``submission.csv``: ``params`` with same-category overlaps removed (``overlap``
    "score") also when they say "none", which the competition's (and :func:`lib.submission.validate_submission`'s)
    rule forbids in a submission."""
    return {**params, "overlap": "score"} if params["overlap"] == "none" else params


def _test_images(s: SubmissionSettings) -> pd.DataFrame:
    """The test images of ``data_dir`` for predictions that are not of a prepared split or a folder; a
    ``ValueError`` saying what to give when there are none."""
    try:
        return lsub.list_test_images(s.data_dir, progress=s.progress)
    except FileNotFoundError as e:
        d = Path(s.predictions[0])
        d = d if d.is_dir() else d.parent
        why = "" if (d / "meta.json").is_file() else f"{d} has no 05 meta.json (which names the images predicted), so "
        raise ValueError(f"--predictions {s.predictions[0]}: {why}the images are taken to be the test images of "
                         f"--data-dir {s.data_dir}, but {e}. Give the --data-dir these predictions are of, or 05's "
                         f"whole output folder (with its meta.json)") from None


def _edition(data_dir) -> tuple[str, dict | None, set | None]:
    """The submission's edition (``data_dir``'s sample_submission.csv header) and, for 2020, our attribute
    ids -> the 2020 label file's (by name) and every attribute id of that file."""
    from .labels import competition_labels, map_vocabulary

    edition = lsub.submission_edition(data_dir)
    if edition != "2020":
        return edition, None, None
    mapping, names = map_vocabulary(Path(data_dir) / "label_descriptions.json", competition_labels())
    return edition, {ours: theirs for theirs, ours in mapping.items()}, set(names)


def run(s: SubmissionSettings) -> dict:
    """Stage 06 (module docstring). Returns the summary also written to ``<out_dir>/meta.json``; raises
    ``ValueError`` for inconsistent inputs (an unfinished 05 run, unknown models, a missing params file)."""
    with scoring.warnings_once():  # the ground truth is read for every scored table: one warning about it
        return _run(s)


def _run(s: SubmissionSettings) -> dict:
    t0, mask_size, out_dir = time.time(), s.mask_size or None, Path(s.out_dir)
    if not s.predictions:
        raise ValueError("--predictions is required (unless --validate)")
    for p in s.predictions:
        if not Path(p).exists():
            raise ValueError(f"--predictions {p}: not found")
    split = lpred.split_source(s.predictions)
    if split:  # 05 predicted a prepared split or a folder: its images (and a split's gt.csv) are the reference
        print(f"images{' and ground truth' if split['gt'] else ''} from {split['dir']} ({split['what']})")
    images = split["images"] if split else _test_images(s)
    given_gt = s.gt or (split["gt"] if split else None)
    gt = Path(given_gt or Path(s.data_dir) / "test_ground_truth.csv")
    if given_gt and not gt.is_file():
        raise ValueError(f"--gt file not found: {gt}")
    sources, predicted = lpred.read_sources(s.predictions, s.models)
    if s.ensemble_weights and len(s.ensemble_weights) != len(sources):
        raise ValueError(f"--ensemble-weights: {len(s.ensemble_weights)} weights for {len(sources)} models "
                         f"{[n for n, _ in sources]}")
    params, combo, origin, params_from = choose(s, sources, images, gt, mask_size)
    ids = images["image_id"].tolist()
    not_predicted = [i for i in ids if i not in predicted]
    if not_predicted:
        print(f"WARNING: {len(not_predicted)} of {len(ids)} test images were not predicted "
              f"(e.g. {not_predicted[:3]}); they get placeholder rows", file=sys.stderr)
    if len(sources) > 1:
        print(f"combination ({origin}): {combo['models']} weights {[round(w, 3) for w in combo['weights']]}, "
              f"IoU {combo['iou']}, min votes {combo['min_votes']}")
    final = fusion.combine(dict(sources), combo, s.progress)
    print(f"post-processing: {params} (from {params_from})")
    scored = gt.is_file() and s.score
    compared = fusion.compared_tables(dict(sources), combo, final, scored, s.ensemble_iou, s.min_votes, s.progress)
    scores = _score(compared, gt, params, mask_size, images, combo, s.progress) if scored else {}
    if scores:
        atomic_write_json(out_dir / "scores.json", {"gt": str(gt), "scores": scores, "submission": combo})
    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    sub_params = submission_params(params)
    if sub_params is not params:
        print("note: --overlap none applies to the scores and the report; submission.csv has same-category "
              "overlaps removed by score all the same (the competition refuses overlapping masks of one class)")
    sub = lsub.build_submission(final, images, sub_params, mask_size, progress=s.progress, workers=s.processes)
    edition, theirs, their_ids = _edition(s.data_dir)
    if edition == "2020":
        sub = lsub.to_edition_2020(sub, theirs)
    lsub.write_submission(sub, out_dir / "submission.csv", ids, mask_size, sizes, their_ids)
    report = _report(s, compared, params, gt if gt.is_file() else None, scores, split) if s.report_images > 0 else None
    if report:
        print(f"report: {report}")
    n_placeholder = lsub.count_placeholders(sub)
    meta = {
        "stage": "06_make_submission", "args": s.record, "predictions": [str(p) for p in s.predictions],
        "models": [n for n, _ in sources], "combination": combo,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in params.items()}, "mask_size": mask_size,
        "submission_overlap": sub_params["overlap"],
        "edition": edition, "num_images": len(ids), "num_rows": len(sub), "num_placeholder_rows": n_placeholder,
        "images_not_predicted": len(not_predicted),
        "scores": {k: {m: v[m] for m in ("kaggle", "AP", "AP50", "AP75")} for k, v in scores.items()},
        "report": str(report) if report else None, "seconds": round(time.time() - t0, 1)}
    atomic_write_json(out_dir / "meta.json", meta)
    print(f"wrote {out_dir / 'submission.csv'}: {len(sub)} rows for {len(ids)} images "
          f"({n_placeholder} placeholder rows)")
    return meta


def parse_grid(text: str | None) -> dict | None:
    """``--tune-grid``'s JSON (None = the default grid); ``ValueError`` naming the problem."""
    if not text:
        return None
    try:
        grid = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"--tune-grid: not valid JSON ({e})") from None
    if not isinstance(grid, dict):
        raise ValueError(f"--tune-grid: expected a JSON object of parameter -> values, got {text!r:.80}")
    return grid
