"""An HTML report of a submission run: overlays per model, training curves, scores (written by 06).

:func:`write_report` writes into ``report_dir`` (next to ``submission.csv``: ``<submission dir>/report/``)::

    index.html                    one page, all links relative (the folder can be moved or zipped)
    overlays/<image stem>.png     per sampled image: the image | ground truth (when known) | each model | ensemble
    charts/<name>_per_class.png   per-class Kaggle score of each scored model (bar chart)
    curves/<name>.png             the training curves of each model (copied from its training out-dir)
    curves/learning_curves.png    the validation Kaggle metric against step of every model (from metrics.jsonl)

Overlays show the instances as they would be submitted: each table's rows go through
:func:`lib.postprocess.postprocess_image` with the submission's parameters, at the panel's display size.
"""
from __future__ import annotations

import dataclasses
import html
import math
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np
import pandas as pd

from . import kaggle_data as lkaggle
from . import files as lfiles
from . import labels as llabels
from . import viz
from .postprocess import Params, postprocess_image
from .scoring import ground_truth_index

__all__ = ["write_report", "sample_ids", "train_dirs_from_predictions", "category_names"]


def category_names(data_dir: str | Path | None = None) -> list[str]:
    """The 46 category names from ``<data_dir>/label_descriptions.json``, else the competition's table."""
    p = Path(data_dir) / "label_descriptions.json" if data_dir else None
    if p is not None and p.is_file():
        return [c["name"] for c in llabels.load_labels(p).categories]
    from .label_descriptions import label_descriptions

    return [c["name"] for c in label_descriptions()["categories"]]


def train_dirs_from_predictions(prediction_paths: Sequence[str | Path]) -> dict[str, Path]:
    """``{model name: training out-dir}`` from the ``meta.json`` of 05 output dirs (or of their tables' dirs)."""
    out: dict[str, Path] = {}
    for p in map(Path, prediction_paths):
        meta = (p if p.is_dir() else p.parent) / "meta.json"
        if not meta.is_file():
            continue
        for m in lfiles.read_json(meta).get("models", []):
            ck = m.get("checkpoint")
            if ck and m.get("name") and Path(ck).parent.is_dir():
                out.setdefault(m["name"], Path(ck).parent)
    return out


def _class_label(key, names: list[str]) -> str:
    """A score key (category id, its string, or a full ClassId like "6_7_20") -> "name" / "name [attrs]"."""
    s = str(key)
    try:
        cat, attrs = llabels.parse_class_id(s)
    except (ValueError, TypeError):
        return s
    name = names[cat] if 0 <= cat < len(names) else s
    return f"{name} [{'_'.join(map(str, attrs))}]" if attrs else name


def sample_ids(image_ids, gt_ids: set, n: int, seed: int = 0) -> list[str]:
    """The images a report shows: ``n`` of ``image_ids`` (the images predicted, in order) and ``gt_ids``, a seeded
    sample preferring those with ground truth."""
    ids = dict.fromkeys(image_ids)
    ids.update(dict.fromkeys(sorted(gt_ids)))
    pool = [i for i in ids if i in gt_ids] or list(ids)
    if len(pool) < n:
        pool += [i for i in ids if i not in set(pool)]
    if len(pool) <= n:
        return pool
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
    return [pool[k] for k in pick]


def _gt_instances(gt: tuple | None, image_id: str, size: tuple[int, int]):
    """Ground-truth masks of one image at the display ``size`` and their categories (``gt``: the
    :func:`lib.scoring.ground_truth_index` of the ground truth, or None)."""
    if gt is None or image_id not in gt[0]:
        return None
    rows, _ = gt[1](image_id)
    masks = [lkaggle.resize_rle(r.rle, (r.height, r.width), size) for r in rows]
    return (np.stack(masks) if masks else np.zeros((0, *size), np.uint8)), [r.category for r in rows]


def _write_png(path: Path, rgb: np.ndarray) -> None:
    with lfiles.atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
            raise OSError(f"cannot write {path}")


def _fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v)) if v else "-"
    return "-" if v is None else str(v)


def write_report(report_dir: str | Path, data_dir: str | Path | None, tables: Mapping[str, pd.DataFrame],
                 params: Params | dict | None = None, gt_csv: str | Path | None = None,
                 train_dirs: Mapping[str, str | Path] | Sequence[str | Path] | None = None,
                 scores: Mapping[str, dict] | None = None, n_images: int = 6,
                 class_names: Sequence[str] | None = None, image_dir: str | Path | None = None,
                 panel_height: int = 320, seed: int = 0, title: str = "iMaterialist (Fashion) 2019 - submission report",
                 extra: Mapping[str, object] | None = None, image_ids: Sequence[str] | None = None) -> Path:
    """Write the report (see the module docstring) and return the path of ``index.html``.

    Args:
        report_dir: output folder (created).
        data_dir: Kaggle-layout dir: images from ``<data_dir>/test`` and names from its
            ``label_descriptions.json`` (either may be overridden by ``image_dir`` / ``class_names``).
        tables: ``{name: prediction table}`` (lib.prediction_table format), e.g. each model and "ensemble".
        params: the submission's post-processing parameters (:meth:`lib.postprocess.Params.of`: None = the
            recipe; a dict of some of them), shown and used for overlays.
        gt_csv: ground truth of these images (train.csv-format CSV or COCO JSON; a panel per image), or None.
        train_dirs: training out-dirs (``{name: dir}``, or dirs named after their model) for curves.png
            and val_scores.json.
        scores: ``{name: lib.scoring.score_table result}`` (kaggle, AP, ..., per_class).
        n_images: images to show (a seeded sample, preferring images with ground truth: :func:`sample_ids`).
        image_ids: the images to show instead (``tables`` need hold only their rows).
        image_dir: where ``<ImageId>`` files are (default ``<data_dir>/test``; a prepared set: its ``images/``).
        extra: more key/value lines for the summary (e.g. paths of submission.csv and scores.json).
    """
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    names = list(class_names) if class_names is not None else category_names(data_dir)
    params = Params.of(params)
    image_dir = Path(image_dir) if image_dir else (Path(data_dir) / "test" if data_dir else None)
    gt_csv = Path(gt_csv) if gt_csv and Path(gt_csv).is_file() else None
    gt = ground_truth_index(gt_csv) if gt_csv is not None else None
    scores = dict(scores or {})
    if isinstance(train_dirs, Mapping):
        tdirs = {str(k): Path(v) for k, v in train_dirs.items()}
    else:
        tdirs = {Path(d).name: Path(d) for d in (train_dirs or [])}
    if image_ids is None:
        image_ids = sample_ids([i for t in tables.values() for i in t["image_id"]], set(gt[0]) if gt else set(),
                               n_images, seed)
    ids = list(image_ids)
    overlays = [_overlay(report_dir, i, image_dir, tables, gt, names, params, panel_height) for i in ids]
    charts = _class_charts(report_dir, scores, names)
    learning, learning_rel = _learning_curves(report_dir, tdirs)
    curves = _training_runs(report_dir, tdirs)
    esc = html.escape
    parts = [_HEAD.format(title=esc(title))]
    if extra:
        parts.append(_kv_table(extra))
    parts += _scores_html(scores)
    parts.append("<h2>Post-processing parameters</h2>" + _kv_table(dataclasses.asdict(params)))
    if charts:
        parts.append("<h2>Per-class scores</h2>")
        parts += [f"<h3>{esc(n)}</h3><img src='{esc(r)}' alt='{esc(n)} per-class scores'>" for n, r in charts]
    parts.append(f"<h2>Predictions on {len(overlays)} images</h2><p class='note'>Panels: the image"
                 f"{', the ground truth' if gt_csv else ''}, then {', '.join(map(esc, tables))}; "
                 "labels are 'class score' after post-processing.</p>")
    for image_id, rel, err in overlays:
        parts.append(f"<h3>{esc(image_id)}</h3>" + (f"<img src='{esc(rel)}' alt='{esc(image_id)}'>" if rel
                                                    else f"<p class='note'>{esc(err)}</p>"))
    parts += _training_html(learning, learning_rel, curves)
    parts.append("</body></html>\n")
    index = report_dir / "index.html"
    lfiles.atomic_write_text(index, "\n".join(parts))
    return index


_HEAD = ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>"
         "body{{font-family:sans-serif;margin:20px;max-width:1600px}}table{{border-collapse:collapse;margin:8px 0}}"
         "td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}th{{background:#f0f0f0}}"
         "td:first-child,th:first-child{{text-align:left}}img{{max-width:100%;border:1px solid #ddd}}"
         "h2{{border-bottom:1px solid #ccc;padding-bottom:3px}}.note{{color:#555}}</style></head><body>\n"
         "<h1>{title}</h1>")


def _kv_table(items: Mapping) -> str:
    esc = html.escape
    return "<table>" + "".join(f"<tr><th>{esc(str(k))}</th><td>{esc(_fmt(v))}</td></tr>"
                               for k, v in items.items()) + "</table>"


def _overlay(report_dir: Path, image_id: str, image_dir: Path | None, tables: Mapping[str, pd.DataFrame],
             gt: tuple | None, names: list[str], params: Params, panel_height: int):
    """One image's panels (the image, its ground truth, each table post-processed) as a PNG under
    ``overlays/``: ``(image_id, relative path or None, error or None)``."""
    path = lkaggle.image_file(image_dir, image_id) if image_dir is not None else None
    if path is None or not path.is_file():
        return image_id, None, f"image not found: {path}"
    img = lkaggle.read_image(path)
    h, w = img.shape[:2]
    dh = min(panel_height, h)
    dw = max(1, round(w * dh / h))
    small = cv2.resize(img, (dw, dh), interpolation=cv2.INTER_AREA)
    panels, titles = [small], [f"image {w}x{h}"]
    gt_inst = _gt_instances(gt, image_id, (dh, dw))
    if gt_inst is not None:
        m, cats = gt_inst
        panels.append(viz.draw_overlay(small, m, [names[c] if c < len(names) else str(c) for c in cats]))
        titles.append(f"ground truth ({len(cats)})")
    for name, table in tables.items():
        rows = table[table["image_id"] == image_id]
        insts = postprocess_image(rows, params, (dh, dw)) if len(rows) else []
        masks = np.stack([m for _, m, _ in insts]) if insts else np.zeros((0, dh, dw), np.uint8)
        panels.append(viz.draw_overlay(small, masks, [_class_label(c, names) for c, _, _ in insts],
                                       [s for _, _, s in insts]))
        titles.append(f"{name} ({len(insts)})")
    rel = f"overlays/{Path(image_id).stem}.png"
    _write_png(report_dir / rel, viz.image_grid(panels, titles, height=dh))
    return image_id, rel, None


def _class_charts(report_dir: Path, scores: Mapping[str, dict], names: list[str]) -> list[tuple[str, str]]:
    """A per-class bar chart of each scored table: ``[(name, relative path)]``."""
    charts = []
    for name, s in scores.items():
        pc = s.get("per_class") if isinstance(s, dict) else None
        if pc:
            rel = f"charts/{name}_per_class.png"
            viz.plot_class_scores({_class_label(k, names): v for k, v in pc.items()}, report_dir / rel,
                                  title=f"{name}: Kaggle score per class")
            charts.append((name, rel))
    return charts


def _learning_curves(report_dir: Path, tdirs: Mapping[str, Path]) -> tuple[dict, str | None]:
    """Each run's validation Kaggle metric against step, and their plot (relative path, None without any)."""
    learning = {name: viz.learning_curve(d / "metrics.jsonl") for name, d in tdirs.items()
                if (d / "metrics.jsonl").is_file()}
    if not any(learning.values()):
        return learning, None
    rel = "curves/learning_curves.png"
    (report_dir / "curves").mkdir(exist_ok=True)
    viz.plot_learning_curves(learning, report_dir / rel, title="validation Kaggle metric vs step")
    return learning, rel


def _training_runs(report_dir: Path, tdirs: Mapping[str, Path]) -> list[tuple]:
    """Per training run: ``(name, dir, copied curves.png or None, {"best"/"latest": (epoch, kaggle, AP)})``."""
    runs = []
    for name, d in tdirs.items():
        src, rel = d / "curves.png", None
        if src.is_file():
            rel = f"curves/{name}.png"
            (report_dir / "curves").mkdir(exist_ok=True)
            shutil.copyfile(src, report_dir / rel)
        val = {}
        if (d / "val_scores.json").is_file():
            vs = lfiles.read_json(d / "val_scores.json")
            for which in ("best", "latest"):
                e = vs.get(which) or {}
                val[which] = (e.get("epoch"), e.get("kaggle"), (e.get("coco") or {}).get("AP"))
        if rel or val:
            runs.append((name, str(d), rel, val))
    return runs


def _scores_html(scores: Mapping[str, dict]) -> list[str]:
    esc = html.escape
    if not scores:
        return ["<h2>Scores</h2>", "<p class='note'>No ground truth: no scores.</p>"]
    cols = ["kaggle", "AP", "AP50", "AP75", "num_images"]
    rows = [f"<tr><td>{esc(name)}</td>" + "".join(f"<td>{esc(_fmt(s.get(c)))}</td>" for c in cols) + "</tr>"
            for name, s in scores.items()]
    return ["<h2>Scores</h2>", "<table><tr><th>model</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>",
            *rows, "</table><p class='note'>Kaggle metric (IoU 0.50:0.05:0.95) and COCO mask AP after "
            "post-processing, masks compared at the submission size.</p>"]


def _training_html(learning: dict, learning_rel: str | None, runs: list[tuple]) -> list[str]:
    esc = html.escape
    parts = ["<h2>Training</h2>"] if runs or learning_rel else []
    if learning_rel:
        steps = sorted({s for pts in learning.values() for s, _ in pts})
        head = "<tr><th>val Kaggle at step</th>" + "".join(f"<th>{s}</th>" for s in steps) + "</tr>"
        body = "".join(f"<tr><td>{esc(n)}</td>" + "".join(f"<td>{esc(_fmt(dict(pts).get(s)))}</td>" for s in steps)
                       + "</tr>" for n, pts in learning.items())
        parts.append(f"<h3>Learning curves</h3><img src='{esc(learning_rel)}' alt='learning curves'>"
                     f"<table>{head}{body}</table>")
    for name, d, rel, val in runs:
        parts.append(f"<h3>{esc(name)}</h3><p class='note'>{esc(d)}</p>")
        if val:
            head = "<tr><th>validation</th><th>epoch</th><th>kaggle</th><th>mask AP</th></tr>"
            body = "".join(f"<tr><td>{w}</td>" + "".join(f"<td>{esc(_fmt(x))}</td>" for x in v) + "</tr>"
                           for w, v in val.items())
            parts.append(f"<table>{head}{body}</table>")
        if rel:
            parts.append(f"<img src='{esc(rel)}' alt='{esc(name)} training curves'>")
    return parts
