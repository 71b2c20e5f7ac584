"""Plots. ``plot_curves`` draws training curves from a ``metrics.jsonl`` written by ``lib/engine.py``;
``plot_learning_curves`` the validation Kaggle metric against step of several runs (06's report, bench/quality.py).

Records used (one JSON object per line; others are ignored):

* ``{"kind": "train", "step": global_step, "loss": ..., "loss_<part>": ..., "lr": ...}`` every few steps;
* ``{"kind": "epoch", "epoch": e, "step": ..., "train_loss": ..., "val_kaggle": ..., "val_AP": ...,
  "val_AP50": ..., "val_AP75": ...}`` once per epoch (val keys only when validation ran).
"""
from __future__ import annotations

import math
from pathlib import Path

from . import files as lfiles

VAL_KEYS = ("val_kaggle", "val_AP", "val_AP50", "val_AP75")


def save_figure(fig, png_path: str | Path) -> Path:
    """Lay out ``fig``, write it to ``png_path`` atomically (80 dpi) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    png_path = Path(png_path)
    with lfiles.atomic_path(png_path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return png_path


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def plot_curves(jsonl_path: str | Path, png_path: str | Path, title: str | None = None) -> Path:
    """Write a PNG with three panels: losses vs step, learning rate vs step, validation scores vs epoch.

    A missing or empty log gives panels that say "no data" (the PNG is still written, atomically).
    Returns ``png_path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    recs = lfiles.read_jsonl(jsonl_path)
    train = [r for r in recs if r.get("kind") == "train" and _finite(r.get("step"))]
    epochs = [r for r in recs if r.get("kind") == "epoch" and _finite(r.get("epoch"))]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax_loss, ax_lr, ax_val = axes

    loss_keys = sorted({k for r in train for k in r if k == "loss" or k.startswith("loss_")},
                       key=lambda k: (k != "loss", k))
    for k in loss_keys:
        pts = [(r["step"], r[k]) for r in train if _finite(r.get(k))]
        if pts:
            xs, ys = zip(*pts)
            ax_loss.plot(xs, ys, label=k, lw=2.0 if k == "loss" else 1.0, alpha=1.0 if k == "loss" else 0.7)
    ep_pts = [(r["step"], r["train_loss"]) for r in epochs if _finite(r.get("step")) and _finite(r.get("train_loss"))]
    if ep_pts:
        xs, ys = zip(*ep_pts)
        ax_loss.plot(xs, ys, "ko", ms=4, label="epoch mean")
    if loss_keys or ep_pts:
        ys_all = [r[k] for r in train for k in loss_keys if _finite(r.get(k))] + [y for _, y in ep_pts]
        if ys_all and min(ys_all) > 0:
            ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=7)
    else:
        ax_loss.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_loss.transAxes)
    ax_loss.set_xlabel("step")
    ax_loss.set_title("training loss")

    lr_pts = [(r["step"], r["lr"]) for r in train if _finite(r.get("lr"))]
    if lr_pts:
        xs, ys = zip(*lr_pts)
        ax_lr.plot(xs, ys)
    else:
        ax_lr.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_lr.transAxes)
    ax_lr.set_xlabel("step")
    ax_lr.set_title("learning rate")

    any_val = False
    for k in VAL_KEYS:
        pts = [(r["epoch"], r[k]) for r in epochs if _finite(r.get(k))]
        if pts:
            any_val = True
            xs, ys = zip(*pts)
            ax_val.plot(xs, ys, "o-", label=k)
    if any_val:
        ax_val.legend(fontsize=7)
    else:
        ax_val.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")

    if title:
        fig.suptitle(title)
    return save_figure(fig, png_path)


def learning_curve(jsonl_path: str | Path, key: str = "val_kaggle") -> list[tuple[int, float]]:
    """``[(global step, value)]`` of ``key`` in the epoch records of a ``metrics.jsonl``, in step order.

    Records without a finite value (no validation that epoch) are skipped; a missing log gives ``[]``.
    A resumed run's log may hold an epoch twice: the last record of a step wins.
    """
    pts = {}
    for r in lfiles.read_jsonl(jsonl_path) if Path(jsonl_path).is_file() else []:
        if r.get("kind") == "epoch" and _finite(r.get("step")) and _finite(r.get(key)):
            pts[int(r["step"])] = float(r[key])
    return sorted(pts.items())


def plot_learning_curves(curves: dict, png_path: str | Path, ylabel: str = "val Kaggle metric",
                         title: str | None = None) -> Path:
    """One panel, one line per model: ``curves`` maps a name to ``[(step, value)]`` (:func:`learning_curve`).

    Models without points are listed in the legend as "(no validation)". Returns ``png_path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, pts in curves.items():
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, "o-", ms=3, label=name)
        else:
            ax.plot([], [], label=f"{name} (no validation)")
    if curves:
        ax.legend(fontsize=8)
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.set_title(title or "learning curves")
    return save_figure(fig, png_path)


# --------------------------------------------------------------------------------------------- overlays
# Overlay helpers for the prediction report (lib/report.py): instance masks on images, panel grids and a
# per-class score bar chart.


def class_color(name: str) -> tuple[int, int, int]:
    """A stable, saturated RGB colour for a class name (the same class gets the same colour everywhere)."""
    import colorsys
    import zlib

    h = (zlib.crc32(str(name).encode()) % 360) / 360.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_overlay(image_rgb, masks, class_names, scores=None, alpha: float = 0.45, font_scale: float | None = None):
    """Instances drawn on an image: translucent colour fills, contours and ``"name score"`` labels.

    Args:
        image_rgb: (H, W, 3) uint8 RGB (or (H, W) grey).
        masks: (N, H, W) bool/0-1 masks (N may be 0).
        class_names: N label texts, one per mask (the colour follows the text).
        scores: N floats appended to the labels, or None.
        alpha: opacity of the fills.
    Returns:
        (H, W, 3) uint8 RGB; the input is not modified.
    """
    import cv2
    import numpy as np

    img = np.asarray(image_rgb)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"draw_overlay: image must be (H, W, 3), got {img.shape}")
    out = img.astype(np.float32)
    masks = np.asarray(masks).astype(bool).reshape(-1, *img.shape[:2]) if len(masks) else \
        np.zeros((0, *img.shape[:2]), bool)
    if len(class_names) != len(masks) or (scores is not None and len(scores) != len(masks)):
        raise ValueError(f"draw_overlay: {len(masks)} masks, {len(class_names)} names, "
                         f"{'no' if scores is None else len(scores)} scores")
    for m, name in zip(masks, class_names):
        out[m] = (1 - alpha) * out[m] + alpha * np.array(class_color(name), np.float32)
    out = np.ascontiguousarray(np.clip(out, 0, 255).astype(np.uint8))
    fs = font_scale or max(0.3, min(img.shape[:2]) / 700)
    th = max(1, int(round(fs * 2)))
    for k, (m, name) in enumerate(zip(masks, class_names)):
        if not m.any():
            continue
        color = class_color(name)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, color, th)
        text = name if scores is None else f"{name} {float(scores[k]):.2f}"
        ys, xs = np.nonzero(m)
        (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
        x = int(min(max(xs.min(), 0), max(0, img.shape[1] - tw - 2)))
        y = int(min(max(ys.min(), tht + base + 1), img.shape[0] - 1))
        cv2.rectangle(out, (x, y - tht - base - 1), (x + tw + 2, y), color, -1)
        cv2.putText(out, text, (x + 1, y - base), cv2.FONT_HERSHEY_SIMPLEX, fs, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def image_grid(images, titles=None, ncols: int | None = None, height: int = 320, pad: int = 6):
    """Panels side by side (rows of ``ncols``; default one row): each resized to ``height`` px, titled.

    ``images``: (H, W, 3) uint8 RGB arrays; ``titles``: one text per panel or None. Returns (H, W, 3) uint8.
    """
    import cv2
    import numpy as np

    if not len(images):
        raise ValueError("image_grid: no images")
    ncols = ncols or len(images)
    title_h = 22 if titles else 0
    panels = []
    for k, im in enumerate(images):
        im = np.asarray(im, np.uint8)
        if im.ndim == 2:
            im = np.repeat(im[..., None], 3, axis=2)
        w = max(1, round(im.shape[1] * height / im.shape[0]))
        p = cv2.resize(im, (w, height), interpolation=cv2.INTER_AREA if im.shape[0] > height else cv2.INTER_LINEAR)
        if titles:
            bar = np.full((title_h, w, 3), 255, np.uint8)
            cv2.putText(bar, str(titles[k])[: max(1, w // 8)], (3, title_h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
                        (0, 0, 0), 1, cv2.LINE_AA)
            p = np.concatenate([bar, p], axis=0)
        panels.append(p)
    rows = [panels[i:i + ncols] for i in range(0, len(panels), ncols)]
    width = max(sum(p.shape[1] for p in r) + pad * (len(r) + 1) for r in rows)
    ph = height + title_h
    canvas = np.full((len(rows) * (ph + pad) + pad, width, 3), 255, np.uint8)
    for ri, r in enumerate(rows):
        x = pad
        y = pad + ri * (ph + pad)
        for p in r:
            canvas[y:y + ph, x:x + p.shape[1]] = p
            x += p.shape[1] + pad
    return canvas


def plot_class_scores(scores: dict, png_path: str | Path, title: str | None = None) -> Path:
    """Horizontal bar chart of ``{class name: score}`` (sorted, best on top) written to ``png_path`` (Agg)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    items = sorted(((str(k), float(v)) for k, v in scores.items() if _finite(float(v))), key=lambda kv: kv[1])
    fig, ax = plt.subplots(figsize=(7, max(1.6, 0.26 * len(items) + 0.9)))
    if items:
        names, vals = zip(*items)
        ax.barh(range(len(items)), vals, color="#3b7dd8")
        ax.set_yticks(range(len(items)), names, fontsize=8)
        ax.set_xlim(0, max(1.0, max(vals)))
        for i, v in enumerate(vals):
            ax.text(v + 0.01, i, f"{v:.2f}", va="center", fontsize=7)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
    ax.set_xlabel("score")
    if title:
        ax.set_title(title)
    return save_figure(fig, png_path)
