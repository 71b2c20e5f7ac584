"""Stage 06 (``06_make_submission.py``): prediction tables -> a validated ``submission.csv``, scores, a report.

Flow of :func:`run` (settings: :class:`SubmissionSettings`):

1. the images: the test images of the Kaggle-layout ``data_dir`` (:func:`lib.kaggle_data.list_test_images`),
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
5. ``submission.csv`` built (:func:`lib.submission_file.build_submission`), in the columns of ``data_dir``'s
   edition (its ``sample_submission.csv`` header: the 2020 edition's AttributesIds column with that edition's
   attribute ids, :func:`lib.submission_file.to_edition_2020`) and, unless ``mask_size`` says otherwise, at the
   mask size it is evaluated at (:data:`lib.submission_file.EDITION_MASK_SIZES`: 512 x 512 for 2019, long side
   1024 for 2020), validated and written; an HTML report
   (:func:`lib.report.write_report`) and ``meta.json``. The competition refuses overlapping masks of one
   class, so the file always has same-category overlaps removed by score: ``overlap="none"`` (a scoring
   experiment) applies to the scores and the report only (:func:`submission_params`).

The post-processing parameters are one :class:`lib.postprocess.Params` and the combination one
:class:`lib.fusion.Combination`, each made once (:func:`choose`) and passed down as they are.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from . import fusion, scoring, tuning
from . import kaggle_data as lkaggle
from . import prediction_table as lpred
from . import submission_file as lsub
from .files import atomic_write_json
from .postprocess import Params
from .table_stream import map_images, read_sources

__all__ = ["SubmissionSettings", "validate_file", "choose", "submission_params", "run"]


@dataclass
class SubmissionSettings:
    """What 06 is told (``06_make_submission.py``'s flags, same names; see its ``--help``). ``postprocess``:
    the post-processing flags (:class:`lib.postprocess.Params` fields, None = not given);
    ``tune_grid``: a grid dict or None; ``record``: every flag, as meta.json saves them."""

    predictions: list = field(default_factory=list)
    models: list | None = None
    ensemble_weights: list | None = None
    ensemble_iou: float = 0.5
    min_votes: int = 1
    data_dir: Path = Path("data/synthetic")
    out_dir: Path = Path("work/submission")
    mask_size: int | str | None = None  # None: the edition's (lib.submission_file.EDITION_MASK_SIZES)
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


def validate_file(path, data_dir, mask_size=None, progress: bool = True) -> int:
    """Check a submission file against ``data_dir``'s test images; print every problem. Returns 0 if valid.
    ``mask_size``: the size the file was written at (:func:`lib.submission_file.parse_mask_size`); None = the one
    06's meta.json beside a ``submission.csv`` records, else the edition's (:func:`lib.submission_file.written_mask_size`)."""
    images = lkaggle.list_test_images(data_dir, progress=progress)
    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    edition, _, their_ids = _edition(data_dir)
    size, origin = lsub.written_mask_size(path, mask_size, edition)
    problems = lsub.validate_submission(path, images["image_id"].tolist(), size, sizes, their_ids)
    evaluated = lsub.EDITION_MASK_SIZES[edition]
    if size != evaluated:
        print(f"note: masks checked at {size or 'original size'} ({origin}); the {edition} edition is evaluated "
              f"at {evaluated}")
    print("\n".join(problems + [f"{path}: {'VALID' if not problems else f'INVALID ({len(problems)} problems)'} "
                                f"against {len(images)} test images of {data_dir}, masks at "
                                f"{size or 'original size'} ({origin})"]))
    return 1 if problems else 0


def choose(s: SubmissionSettings, sources: list, indexes: dict, images: pd.DataFrame, gt: Path,
           mask_size: int | None, edition: str = "2019"):
    """The post-processing parameters and the model combination: ``(params, combination, where the combination
    comes from, where the parameters come from)``, from params.json and the flags, or tuned (``tune``,
    ``tune_on``). For the 2020 ``edition``, whose metric counts attributes, tuning also decides whether to emit
    them (``attributes`` off / on in the grid) unless ``--attributes`` says."""
    out_dir = Path(s.out_dir)
    params_path = Path(s.params) if s.params else out_dir / "params.json"
    if s.params and not params_path.is_file():
        raise ValueError(f"--params file not found: {params_path}")
    tuning_on = s.tune or bool(s.tune_on)
    explicit = s.models is not None or s.ensemble_weights is not None
    params, combination, origin = tuning.initial_combination(
        [src.name for src in sources], params_path, params_path.is_file() and not (tuning_on and not s.params),
        s.postprocess, s.ensemble_weights, s.ensemble_iou, s.min_votes, explicit)
    if not tuning_on:
        return params, combination, origin, str(params_path) if params_path.is_file() else "defaults"
    class_keys, procs = scoring.class_keys_of(params.attributes == "on", edition), _processes(s)
    if s.tune_on:  # tune on the val-split predictions and their gt.csv
        split = lpred.split_source(s.tune_on)
        if not split or not split["gt"]:
            raise ValueError(f"--tune-on {s.tune_on[0]}: not a 05 output of a prepared split with gt.csv (run "
                             f"05_predict.py --prepared-dir ... --split val --out-dir {s.tune_on[0]})")
        tsources, tindexes, _ = read_sources(s.tune_on, s.models)
        ts = tuning.TuningSet(tsources, tindexes, Path(split["gt"]), split["images"], mask_size, class_keys,
                              procs, s.progress)
    else:
        if not gt.is_file():
            raise ValueError(f"--tune needs ground truth (--gt; {gt} not found)")
        ts = tuning.TuningSet(sources, indexes, gt, images, mask_size, class_keys, procs, s.progress)
    grid = tuning.free_grid(s.tune_grid, s.postprocess)
    if edition == "2020" and s.postprocess.get("attributes") is None and "attributes" not in grid:
        grid["attributes"] = ["off", "on"]  # the 2020 metric counts attributes: the tuned head decides
    fixed = s.postprocess.get("keep_categories") is not None or s.postprocess.get("drop_categories") is not None
    combination, params = tuning.tune_combination(ts, grid, params, combination, explicit, out_dir / "params.json",
                                                  s.weight_choices, s.max_models or None, s.refine,
                                                  s.tune_drop_categories and not fixed)
    if params.attributes == "on" and s.postprocess.get("attr_thresh") is None:  # --attr-thresh given: kept
        params, _ = tuning.tune_attribute_thresholds(ts, combination, params, out_dir / "params.json")
    return params, combination, f"tuned on {ts.gt_path}", str(params_path)


def _processes(s: SubmissionSettings) -> int:
    return s.processes or os.cpu_count() or 1


def _ensemble(s: SubmissionSettings, sources: list, combination: fusion.Combination,
              with_ensemble: bool) -> fusion.Combination | None:
    """The compared ``"ensemble"`` (:func:`lib.fusion.compared_masks`) when it is fused apart from the
    submission: all models with equal weights at the flags' IoU and minimum votes; else None."""
    names = [src.name for src in sources]
    if not with_ensemble or "submission" not in fusion.compared_names(names, combination, True):
        return None
    return fusion.Combination.default(names, s.ensemble_iou, s.min_votes)


def _score(s: SubmissionSettings, sources: list, indexes: dict, gt: Path, params: Params, mask_size, images,
           combination: fusion.Combination, edition: str = "2019") -> dict:
    """Score every compared table (:func:`lib.fusion.compared_masks`) on ``gt`` in one pass over the images;
    print one line each; returns ``{name: lib.scoring.score_table result}``."""
    print(f"scores on {gt} (masks at {mask_size or 'original size'}; the {edition} edition's metric):")
    compare = functools.partial(fusion.compared_masks, [src.name for src in sources], combination,
                                _ensemble(s, sources, combination, True))
    scores = scoring.score_tables({"sources": sources, "indexes": indexes}, gt, params, mask_size, images, compare,
                                  scoring.class_keys_of(params.attributes == "on", edition), _processes(s),
                                  s.progress, params.attributes == "on")
    for name, result in scores.items():
        label = name if name != "submission" else f"submission = {'+'.join(combination.models)}"
        print(scoring.score_line(label, result))
        if "attributes" in result:
            a = result["attributes"]
            print(f"  {'':<30} attributes: micro F1 {a['micro_f1']:.4f}  macro F1 {a['macro_f1']:.4f}  "
                  f"({a['num_instances']} matched instances, thresholds {a['thresholds']})")
    return scores


def _compared_rows(names, combination, ensemble, task, masks) -> list[dict]:
    """One image's compared tables as prediction-table rows (column ``model`` = the table's name), for the report."""
    out = []
    for name, ms in fusion.compared_masks(names, combination, ensemble, task, masks, True).items():
        out += lpred.mask_rows(task.image_id, name, ms, task.orig_hw)
    return out


def _report(s: SubmissionSettings, sources: list, indexes: dict, images: pd.DataFrame,
            combination: fusion.Combination, params: Params, gt: Path | None, scores: dict, split) -> Path:
    """The report of a few sampled images (:func:`lib.report.sample_ids`), their compared tables made for them."""
    from .report import sample_ids, train_dirs_from_predictions, write_report
    from .table_stream import ImageTask

    out_dir = Path(s.out_dir)
    predicted = [i for f in dict.fromkeys(src.path for src in sources) for i in indexes[f].rows]
    gt_ids = set(scoring.ground_truth_index(gt)[0]) if gt is not None else set()
    ids = sample_ids(predicted, gt_ids, s.report_images)
    orig = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    tasks = [ImageTask(i, orig.get(i, (0, 0)), orig.get(i, (0, 0))) for i in ids]
    ensemble = _ensemble(s, sources, combination, bool(scores))
    rows = [r for part in map_images(functools.partial(_compared_rows, [src.name for src in sources], combination,
                                                       ensemble),
                                     tasks, len(tasks), sources, indexes, 1, 0.0, False) for r in part]
    table = lpred.make_table(rows)
    tables = {n: table[table["model"] == n] for n in fusion.compared_names([src.name for src in sources],
                                                                          combination, bool(scores))}
    return write_report(out_dir / "report", s.data_dir, tables, params, gt,
                        train_dirs_from_predictions(s.predictions), scores, n_images=s.report_images,
                        image_dir=split["image_dir"] if split else None, image_ids=ids,
                        extra={"submission": str(out_dir / "submission.csv"),
                               "scores": str(out_dir / "scores.json") if scores else None,
                               "predictions": ", ".join(map(str, s.predictions))})


def submission_params(params: Params) -> Params:
    """The post-processing of ``submission.csv``: ``params`` with same-category overlaps removed (``overlap``
    "score") also when they say "none", which the competition's (and :func:`lib.submission_file.validate_submission`'s)
    rule forbids in a submission."""
    return params.replace(overlap="score") if params.overlap == "none" else params


def _test_images(s: SubmissionSettings) -> pd.DataFrame:
    """The test images of ``data_dir`` for predictions that are not of a prepared split or a folder; a
    ``ValueError`` saying what to give when there are none."""
    try:
        return lkaggle.list_test_images(s.data_dir, progress=s.progress)
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
    t0, out_dir = time.time(), Path(s.out_dir)
    edition, theirs, their_ids = _edition(s.data_dir)
    sub_size = lsub.EDITION_MASK_SIZES[edition] if s.mask_size is None else lsub.parse_mask_size(s.mask_size)
    mask_size = sub_size if isinstance(sub_size, int) and sub_size else None  # scores: N x N, else original
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
    sources, indexes, predicted = read_sources(s.predictions, s.models)
    if s.ensemble_weights and len(s.ensemble_weights) != len(sources):
        raise ValueError(f"--ensemble-weights: {len(s.ensemble_weights)} weights for {len(sources)} models "
                         f"{[src.name for src in sources]}")
    params, combination, origin, params_from = choose(s, sources, indexes, images, gt, mask_size, edition)
    ids = images["image_id"].tolist()
    not_predicted = [i for i in ids if i not in predicted]
    if not_predicted:
        print(f"WARNING: {len(not_predicted)} of {len(ids)} test images were not predicted "
              f"(e.g. {not_predicted[:3]}); they get placeholder rows", file=sys.stderr)
    if len(sources) > 1:
        print(f"combination ({origin}): {list(combination.models)} weights "
              f"{[round(w, 3) for w in combination.weights]}, IoU {combination.iou}, "
              f"min votes {combination.min_votes}")
    shown = dict(dataclasses.asdict(params), attr_thresholds=params.attr_thresholds and
                 f"{sum(t != params.attr_thresh for t in params.attr_thresholds)} of {len(params.attr_thresholds)} "
                 f"tuned away from {params.attr_thresh}")
    print(f"post-processing: {shown} (from {params_from})")
    scored = gt.is_file() and s.score
    scores = _score(s, sources, indexes, gt, params, mask_size, images, combination, edition) if scored else {}
    if scores:
        atomic_write_json(out_dir / "scores.json", {"gt": str(gt), "scores": scores,
                                                   "submission": combination.to_json()})
    sizes = {r.image_id: (int(r.orig_height), int(r.orig_width)) for r in images.itertuples(index=False)}
    sub_params = submission_params(params)
    if sub_params is not params:
        print("note: --overlap none applies to the scores and the report; submission.csv has same-category "
              "overlaps removed by score all the same (the competition refuses overlapping masks of one class)")
    sub = lsub.submission_of_sources(sources, indexes, combination, images, sub_params, sub_size, _processes(s),
                                     s.progress)
    if edition == "2020":
        sub = lsub.to_edition_2020(sub, theirs)
    lsub.write_submission(sub, out_dir / "submission.csv", ids, sub_size, sizes, their_ids)
    report = (_report(s, sources, indexes, images, combination, params, gt if gt.is_file() else None, scores, split)
              if s.report_images > 0 else None)
    if report:
        print(f"report: {report}")
    n_placeholder = lsub.count_placeholders(sub)
    meta = {
        "stage": "06_make_submission", "args": s.record, "predictions": [str(p) for p in s.predictions],
        "models": [src.name for src in sources], "combination": combination.to_json(),
        "params": params.to_json(), "mask_size": sub_size or None, "score_mask_size": mask_size,
        "submission_overlap": sub_params.overlap,
        "edition": edition, "num_images": len(ids), "num_rows": len(sub), "num_placeholder_rows": n_placeholder,
        "images_not_predicted": len(not_predicted),
        "scores": {k: {m: v[m] for m in ("kaggle", "AP", "AP50", "AP75", "attributes") if m in v}
                   for k, v in scores.items()},
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
