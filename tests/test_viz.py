"""lib/viz.py: training curves from a metrics.jsonl written by lib/engine.py."""
import json

import cv2
import numpy as np

from lib import files as lfiles
from lib.viz import learning_curve, plot_curves, plot_learning_curves


def _log(path, n_steps=12, with_val=True):
    for s in range(1, n_steps + 1):
        lfiles.append_jsonl(path, {"kind": "train", "epoch": 1 + (s - 1) // 4, "step": s, "loss": 3.0 / s,
                                   "loss_mask": 1.0 / s, "loss_classifier": 2.0 / s, "lr": 1e-3 * min(1, s / 4)})
        if s % 4 == 0:
            rec = {"kind": "epoch", "epoch": s // 4, "step": s, "train_loss": 3.0 / s}
            if with_val:
                rec.update({"val_kaggle": 0.1 * s / 4, "val_AP": 0.05 * s / 4, "val_AP50": None})
            lfiles.append_jsonl(path, rec)


def _read(png):
    img = cv2.imread(str(png))
    assert img is not None, f"{png} is not a readable PNG"
    return img


def test_plot_curves_writes_png_atomically(tmp_path):
    log = tmp_path / "metrics.jsonl"
    _log(log)
    out = plot_curves(log, tmp_path / "curves.png", title="run")
    assert out == tmp_path / "curves.png"
    img = _read(out)
    assert img.shape[0] > 200 and img.shape[1] > 600
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 20  # lines in several colours, not a blank canvas
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]  # no temp file left


def test_plot_curves_with_data_differs_from_empty(tmp_path):
    log = tmp_path / "metrics.jsonl"
    _log(log)
    full = _read(plot_curves(log, tmp_path / "full.png"))
    empty = _read(plot_curves(tmp_path / "missing.jsonl", tmp_path / "empty.png"))
    assert full.shape == empty.shape and not np.array_equal(full, empty)


def test_plot_curves_tolerates_torn_lines_nan_and_other_records(tmp_path):
    log = tmp_path / "metrics.jsonl"
    _log(log, n_steps=8, with_val=False)
    with open(log, "a") as f:
        f.write(json.dumps({"kind": "resume", "epoch": 2, "step": 8}) + "\n")
        f.write('{"kind": "train", "step": 9, "loss": NaN, "lr": 0.001}\n')  # json allows NaN
        f.write('{"kind": "train", "step": 10, "lo')  # torn final line
    _read(plot_curves(log, tmp_path / "c.png"))
    # overwriting an existing PNG works
    _read(plot_curves(log, tmp_path / "c.png"))


def test_learning_curve_points_and_plot(tmp_path):
    log = tmp_path / "metrics.jsonl"
    for rec in ({"kind": "train", "step": 5, "loss": 1.0}, {"kind": "epoch", "epoch": 1, "step": 10, "val_kaggle": 0.1},
                {"kind": "epoch", "epoch": 2, "step": 20},  # no validation that epoch
                {"kind": "epoch", "epoch": 3, "step": 30, "val_kaggle": float("nan")},
                {"kind": "epoch", "epoch": 4, "step": 40, "val_kaggle": 0.3},
                {"kind": "epoch", "epoch": 4, "step": 40, "val_kaggle": 0.35}):  # a resumed epoch: the last wins
        lfiles.append_jsonl(log, rec)
    assert learning_curve(log) == [(10, 0.1), (40, 0.35)]
    assert learning_curve(tmp_path / "missing.jsonl") == []
    full = _read(plot_learning_curves({"a": learning_curve(log), "b": []}, tmp_path / "lc.png"))
    empty = _read(plot_learning_curves({"b": []}, tmp_path / "lc_empty.png"))
    assert full.shape == empty.shape and not np.array_equal(full, empty)
