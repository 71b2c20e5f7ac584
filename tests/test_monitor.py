"""lib/monitor.py: TensorBoard event files written by TrainMonitor, read back with TensorBoard's own reader."""
import math
import time

import numpy as np
import pytest
import torch

pytest.importorskip("tensorboard")

from lib import monitor  # noqa: E402


def read_events(log_dir):
    """TensorBoard's EventAccumulator over ``log_dir`` with nothing sampled away."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0,
                                                        "histograms": 0, "compressedHistograms": 0,
                                                        "audio": 0})
    acc.Reload()
    return acc


def scalars(acc, tag):
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def train_record(step, loss):
    return {"kind": "train", "epoch": 1, "iter": step, "step": step, "loss": loss, "loss_classifier": loss / 2,
            "loss_mask": loss / 4, "lr": 1e-3 * step, "grad_norm": 2.5, "step_time": 0.125, "data_time": 0.01,
            "images_per_s": 16.0, "skipped_steps": 1, "max_mem_gb": 3.25}


def test_train_and_epoch_records_become_tagged_scalars(tmp_path):
    with monitor.TrainMonitor(tmp_path / "tb") as mon:
        for step in (1, 2, 3):
            mon.log_train(step, train_record(step, 1.0 / step))
        mon.log_epoch(3, {"kind": "epoch", "epoch": 1, "step": 3, "steps": 3, "epoch_time": 12.5,
                          "images_per_s": 7.0, "lr": 3e-3, "train_loss": 0.6, "train_loss_mask": 0.15,
                          "val_kaggle": 0.25, "val_kaggle_all": 0.2, "val_AP": 0.125, "val_AP50": 0.5,
                          "val_AP75": None, "val_attr_micro_f1": 0.75, "val_images": 4, "val_time": 1.5})
    acc = read_events(tmp_path / "tb")
    tags = set(acc.Tags()["scalars"])
    assert tags == {"train/loss", "train/loss_classifier", "train/loss_mask", "train/lr", "train/grad_norm",
                    "time/step", "time/data", "time/images_per_s", "amp/skipped_steps", "memory/max_gb",
                    "time/epoch", "epoch/images_per_s", "epoch/lr",
                    "epoch/train_loss", "epoch/train_loss_mask", "val/kaggle", "val/kaggle_all", "val/AP",
                    "val/AP50", "val/attr_micro_f1", "time/val"}
    for tag, want in (("train/loss", [1.0, 0.5, 1 / 3]), ("train/lr", [1e-3, 2e-3, 3e-3]),
                      ("train/loss_mask", [0.25, 0.125, 1 / 12]), ("amp/skipped_steps", [1.0] * 3)):
        got = scalars(acc, tag)
        assert [s for s, _ in got] == [1, 2, 3]
        np.testing.assert_allclose([v for _, v in got], np.float32(want), rtol=1e-6)
    assert scalars(acc, "val/kaggle") == [(3, pytest.approx(0.25))]
    assert scalars(acc, "val/AP50") == [(3, pytest.approx(0.5))]
    assert scalars(acc, "time/epoch") == [(3, pytest.approx(12.5))]
    assert scalars(acc, "epoch/train_loss") == [(3, pytest.approx(0.6, rel=1e-6))]


@pytest.mark.parametrize("value", [None, "text", True, float("nan"), math.inf, [1.0, 2.0], torch.ones(2)])
def test_non_numeric_values_are_skipped(tmp_path, value):
    with monitor.TrainMonitor(tmp_path) as mon:
        mon.log_train(5, {"step": 5, "loss": 0.5, "odd": value})
    assert read_events(tmp_path).Tags()["scalars"] == ["train/loss"]


@pytest.mark.parametrize("value,want", [(2, 2.0), (np.float32(0.5), 0.5), (np.int64(3), 3.0),
                                        (torch.tensor(1.5), 1.5), (torch.tensor([4.0]), 4.0)])
def test_scalar_value_accepts_numbers(value, want):
    assert monitor.scalar_value(value) == want


@pytest.mark.parametrize("resume_step", [6, None])
def test_resume_step_drops_the_later_events_of_the_killed_run(tmp_path, resume_step):
    with monitor.TrainMonitor(tmp_path) as first:  # killed after logging step 10; its checkpoint was at 6
        for step in range(1, 11):
            first.log_train(step, {"loss": float(step), "lr": 0.1})
        first.log_epoch(10, {"val_kaggle": 0.5})
    # event files are read in name order and named by the second they were opened in: start a new second
    time.sleep(1.0 - time.time() % 1.0 + 0.01)
    with monitor.TrainMonitor(tmp_path, resume_step=resume_step) as second:
        for step in (7, 8):
            second.log_train(step, {"loss": 100.0 + step})
    assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 2
    acc = read_events(tmp_path)
    loss, lr, val = (scalars(acc, tag) for tag in ("train/loss", "train/lr", "val/kaggle"))
    if resume_step is None:  # without the marker TensorBoard keeps the killed process's later points
        assert (9, 9.0) in loss and (10, 0.5) in val
        return
    assert loss == [(s, float(s)) for s in range(1, 7)] + [(7, 107.0), (8, 108.0)]
    assert [s for s, _ in lr] == [1, 2, 3, 4, 5, 6] and val == []


def test_disabled_monitor_writes_nothing(tmp_path):
    log_dir = tmp_path / "tb"
    with monitor.TrainMonitor(log_dir, enabled=False, resume_step=3) as mon:
        mon.log_train(1, {"loss": 1.0})
        mon.log_epoch(1, {"val_kaggle": 0.5})
        mon.log_overlays(1, [torch.rand(3, 8, 8)], [{}])
        mon.flush()
    assert not log_dir.exists()


def _prediction(h, w):
    masks = torch.zeros(3, 1, h, w)
    masks[0, 0, 2:10, 3:12] = 0.9   # drawn
    masks[1, 0, 10:20, 10:20] = 0.3  # below mask_thresh: an empty mask
    masks[2, 0, :, :] = 1.0          # below score_thresh: not drawn
    return {"masks": masks, "labels": torch.tensor([1, 2, 3]), "scores": torch.tensor([0.9, 0.8, 0.1])}


def test_overlay_image_draws_kept_masks_only():
    image = torch.full((3, 24, 32), 0.5)
    out = monitor.overlay_image(image, _prediction(24, 32), class_names=["shirt", "pants", "shoe"])
    assert out.shape == (3, 24, 32) and out.dtype == torch.uint8
    gray = torch.full((3,), 128, dtype=torch.uint8)
    assert not torch.equal(out[:, 5, 6], gray)     # inside the kept mask
    assert torch.equal(out[:, 22, 2], gray)        # only the low-score full-image mask covers this pixel
    empty = {"masks": torch.zeros(0, 1, 24, 32), "labels": torch.zeros(0, dtype=torch.long),
             "scores": torch.zeros(0)}
    assert torch.equal(monitor.overlay_image(image, empty), torch.full((3, 24, 32), 128, dtype=torch.uint8))


def test_log_overlays_writes_images(tmp_path):
    images = [torch.rand(3, 24, 32) for _ in range(3)]
    preds = [_prediction(24, 32)] * 3
    with monitor.TrainMonitor(tmp_path) as mon:
        mon.log_overlays(7, images, preds, class_names=["a", "b", "c"], max_images=2)
    acc = read_events(tmp_path)
    assert sorted(acc.Tags()["images"]) == ["val/overlay/0", "val/overlay/1"]
    (ev,) = acc.Images("val/overlay/0")
    assert (ev.step, ev.height, ev.width) == (7, 24, 32)


def test_tensorboard_dir_is_beside_metrics():
    assert monitor.tensorboard_dir("work/maskrcnn").as_posix() == "work/maskrcnn/tensorboard"


def test_missing_tensorboard_names_the_fix(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(ImportError, match="pip install.*--no-tensorboard"):
        monitor.TrainMonitor(tmp_path)
    monitor.TrainMonitor(tmp_path, enabled=False).close()  # the off switch needs no tensorboard


# the (loss, loss parts) of the fake steps: the second is an fp16 step the gradient scaler skipped
STEP_LOSSES = [(2.0, {"loss_a": 1.5, "loss_b": 0.5}), (math.inf, {"loss_a": math.inf, "loss_b": 0.5}),
               (4.0, {"loss_a": 3.0, "loss_b": 1.0})]


def _epoch(logger, now, steps, micro=1, wait=0.25, compute=1.75):
    """Run ``steps`` fake optimizer steps of ``micro`` batches through ``logger`` on the clock ``now`` (a 1-list):
    each batch waits ``wait`` s for the loader, each step computes ``compute`` s and has the losses
    ``STEP_LOSSES[logger.steps]``; returns each step's meters."""
    def batches():
        for _ in range(steps * micro):
            now[0] += wait
            yield "batch"

    seen, group = [], 0
    for _ in logger.timed(batches()):
        group += 1
        if group < micro:
            continue
        group = 0
        now[0] += compute
        loss, parts = STEP_LOSSES[logger.steps]
        logger.update(loss, parts, images=4)
        seen.append(logger.step_meters())
    return seen


@pytest.mark.parametrize("micro", [1, 2])
def test_metric_logger_times_steps_and_means_the_finite_losses(micro):
    now = [10.0]
    logger = monitor.MetricLogger(clock=lambda: now[0])
    seen = _epoch(logger, now, 3, micro=micro)
    step_time, data_time = 1.75 + 0.25 * micro, 0.25 * micro  # a step's time holds its waits for data
    assert seen == [{"step_time": step_time, "data_time": data_time, "images_per_s": round(4 / step_time, 3)}] * 3
    # the inf step counts as a step, but not in the means
    assert (logger.steps, logger.finite_steps, logger.images) == (3, 2, 12)
    assert logger.means() == {"loss": 3.0, "loss_a": 2.25, "loss_b": 0.75}
    assert list(logger.means()) == ["loss", "loss_a", "loss_b"]
    logger.stop()
    now[0] += 100.0  # e.g. validation after the epoch: not in its time
    assert logger.epoch_meters() == {"steps": 3, "epoch_time": 3 * step_time,
                                     "images_per_s": round(12 / (3 * step_time), 3)}


def test_metric_logger_state_resumes_an_epoch_with_the_same_means():
    now = [0.0]
    whole = monitor.MetricLogger(clock=lambda: now[0])
    _epoch(whole, now, 3)
    first = monitor.MetricLogger(clock=lambda: now[0])
    _epoch(first, now, 1)
    state = first.state()
    assert state == {"sums": {"loss": 2.0, "loss_a": 1.5, "loss_b": 0.5}, "steps": 1, "images": 4, "finite_steps": 1}
    state["sums"]["loss"] = 99.0
    assert first.sums["loss"] == 2.0  # a copy: a checkpoint holding it does not change with the epoch
    resumed = monitor.MetricLogger(first.state(), clock=lambda: now[0])
    _epoch(resumed, now, 2)
    assert resumed.state() == whole.state() and resumed.means() == whole.means()
    old = monitor.MetricLogger({"sums": {"loss": 3.0}, "steps": 2, "images": 8})  # saved without finite_steps
    assert (old.finite_steps, old.means()) == (2, {"loss": 1.5})
    assert monitor.MetricLogger(None).state() == {"sums": {}, "steps": 0, "images": 0, "finite_steps": 0}
