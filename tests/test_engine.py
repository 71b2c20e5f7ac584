"""lib/engine.py and the training scripts 02/03/04: outputs, checkpoints, resume, NaN stop, DDP, overfitting.

Quick tests train one or two tiny epochs (2 steps, light models, small images) on the conftest prepared set.
Slow tests (``-m slow``) check that each model overfits a handful of synthetic images from scratch on CPU.
"""
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from lib import prepared as lprepared
from lib import checkpoint as lcheckpoint
from lib import cli, engine, runtime
from lib import files as lfiles
from lib import rle as lrle
from lib.training_data import PreparedDataset, build_transforms

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {"unet": "02_train_unet.py", "maskrcnn": "03_train_maskrcnn.py", "deepmac": "04_train_deepmac.py"}

# Small, fast model settings per arch (CPU, 96-128 px).
TINY_MODEL = {
    "unet": ["--encoder", "resnet18", "--image-size", "96"],
    "maskrcnn": ["--backbone", "resnet18", "--min-size", "96", "--max-size", "96", "--anchor-sizes", "16", "32",
                 "64", "128", "256", "--rpn-post-nms-train", "100", "--rpn-post-nms-test", "100",
                 "--box-batch-size-per-image", "64", "--detections-per-img", "20"],
    "deepmac": ["--backbone", "resnet18", "--min-size", "96", "--max-size", "96", "--anchor-sizes", "16", "32",
                "64", "128", "256", "--rpn-post-nms-train", "100", "--rpn-post-nms-test", "100",
                "--box-batch-size-per-image", "64", "--detections-per-img", "20", "--mask-roi-size", "16",
                "--mask-head-width", "16", "--mask-head-depth", "2", "--mask-head-stacks", "1"],
}


def _script(arch):
    path = REPO / SCRIPTS[arch]
    spec = importlib.util.spec_from_file_location(f"script_{arch}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _args(arch, cache, out, *extra):
    # --device cpu: the runs compare weights and losses exactly, which only the CPU repeats bit for bit (a GPU box
    # runs these on its CPU too; the CUDA tests below run the GPU path)
    flags = ["--prepared-dir", str(cache), "--out-dir", str(out), "--device", "cpu", "--workers", "0", "--batch-size", "2",
             "--max-steps-per-epoch", "2", "--epochs", "1", "--log-every", "1", "--max-val-images", "2",
             "--threads", "1", *TINY_MODEL[arch], *extra]
    return _script(arch).get_args_parser().parse_args(flags)


def _run(arch, cache, out, *extra):
    mod = _script(arch)
    return mod.main(_args(arch, cache, out, *extra))


# --------------------------------------------------------------------------------------------- quick runs
@pytest.mark.parametrize("arch", ["unet", "maskrcnn", "deepmac"])
def test_one_tiny_epoch_writes_everything_and_checkpoint_rebuilds_model(arch, prepared_set, tmp_path):
    out = tmp_path / arch
    extra = {"deepmac": ["--mask-categories", "garments"], "unet": ["--channels-last"]}.get(arch, [])
    assert _run(arch, prepared_set, out, *extra) == 0
    for name in ("checkpoint.pth", "best.pth", "metrics.jsonl", "curves.png", "meta.json", "val_scores.json"):
        assert (out / name).is_file(), name
    recs = lfiles.read_jsonl(out / "metrics.jsonl")
    train = [r for r in recs if r["kind"] == "train"]
    epochs = [r for r in recs if r["kind"] == "epoch"]
    assert [r["step"] for r in train] == [1, 2] and len(epochs) == 1
    assert all(math.isfinite(r["loss"]) and r["lr"] > 0 and r["images_per_s"] > 0 for r in train)
    assert any(k.startswith("loss_") for k in train[0])
    ep = epochs[0]
    assert ep["steps"] == 2 and ep["val_images"] == 2 and 0.0 <= ep["val_kaggle"] <= 1.0
    assert "val_AP" in ep and "train_loss" in ep

    meta = lfiles.read_json(out / "meta.json")
    assert meta["status"] == "done" and meta["arch"] == arch and meta["config"]["arch"] == arch
    assert meta["epochs_done"] == 1 and meta["global_step"] == 2
    assert meta["checkpoints"]["best"] == str(out / "best.pth")
    assert meta["data"]["num_train"] > 0 and meta["data"]["num_categories"] == 46
    assert meta["final_metrics"]["val_kaggle"] == ep["val_kaggle"]
    assert all("data_time" in r and "skipped_steps" in r for r in train)
    _assert_tensorboard_events(out / "tensorboard", train, ep)
    vs = lfiles.read_json(out / "val_scores.json")
    assert vs["latest"]["epoch"] == 1 and vs["best"]["epoch"] == 1 and vs["latest"]["coco"] is not None

    # the checkpoint is plain data: weights_only=True loads it, and it rebuilds the model alone
    raw = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)
    assert raw["format"] == lcheckpoint.CHECKPOINT_FORMAT and raw["epoch"] == 1 and raw["global_step"] == 2
    assert raw["config"]["num_classes"] == 47 and len(raw["labels"]) == 46
    assert raw["args"]["prepared_dir"] == str(prepared_set) and raw["scaler"] is None
    assert raw["args"]["channels_last"] == (arch == "unet")
    assert {"optimizer", "lr_scheduler", "rng", "best_score", "metrics"} <= set(raw)
    assert set(raw) == {*lcheckpoint.CHECKPOINT_KEYS, "digest"}  # as lib/checkpoint.py documents them
    if arch == "deepmac":
        assert raw["config"]["mask_categories"] == list(range(27))
    model, ck = lcheckpoint.load_checkpoint(out / "best.pth")
    assert not model.training and ck["arch"] == arch
    for k, v in model.state_dict().items():
        assert torch.equal(v, raw["model"][k]), k
    image, _ = PreparedDataset(prepared_set, "val", build_transforms(False))[0]
    with torch.no_grad():
        pred = model([image.as_subclass(torch.Tensor)])[0]
    n = pred["boxes"].shape[0]
    assert pred["masks"].shape == (n, 1, *image.shape[-2:]) and pred["labels"].shape == (n,)


def test_a_loader_worker_dying_stops_training_at_once(prepared_set, tmp_path, monkeypatch):
    """--workers 2 with a loader process killed (the OOM killer) on one image: training stops at once (no hang)
    with an error naming that image and the signal; checkpoint.pth keeps the last good state for --resume auto."""
    import signal

    real = PreparedDataset.load

    def dies_on_3(self, i):
        if i == 3 and self.split == "train":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(self, i)

    monkeypatch.setattr(PreparedDataset, "load", dies_on_3)  # the forked loader processes inherit it
    old = signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("training hung")))
    signal.alarm(300)
    try:
        with pytest.raises(RuntimeError, match=r"a DataLoader worker process died at batch \d+ of the epoch: image "
                                               r"\S+ \(dataset index 3\) kills the process reading it: killed by SIGKILL"):
            _run("unet", prepared_set, tmp_path / "run", "--workers", "2", "--val-every", "0",
                 "--max-steps-per-epoch", "8", "--aspect-ratio-group-factor", "0")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _assert_tensorboard_events(log_dir, train, ep):
    """The run's TensorBoard files, read back with TensorBoard's reader: the train records' losses, lr, gradient
    norm, step and data time at their steps; the epoch's validation scores; validation overlays."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm", "time/step", "time/data", "amp/skipped_steps",
                "val/kaggle", "val/AP75", "epoch/train_loss"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [r["step"] for r in train]
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)
    assert [(e.step, e.value) for e in acc.Scalars("val/kaggle")] == [(ep["step"], pytest.approx(ep["val_kaggle"]))]
    overlays = [t for t in tags["images"] if t.startswith("val/overlay/")]
    assert overlays and all(acc.Images(t)[0].step == ep["step"] for t in overlays)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(prepared_set, tmp_path):
    common = ["--epochs", "2", "--val-every", "0", "--warmup-steps", "2", "--schedule", "cosine", "--lr", "1e-3",
              "--seed", "3"]
    _run("maskrcnn", prepared_set, tmp_path / "full", *common)
    _run("maskrcnn", prepared_set, tmp_path / "split", *common, "--stop-after-epoch", "1")
    meta = lfiles.read_json(tmp_path / "split" / "meta.json")
    assert meta["status"] == "stopped" and meta["epochs_done"] == 1
    # written as a checkpoint from before the schedule's key was renamed: "scheduler", not "lr_scheduler"
    from lib.checkpoint import read_checkpoint, save_checkpoint

    old = read_checkpoint(tmp_path / "split" / "checkpoint.pth")
    old["scheduler"] = old.pop("lr_scheduler")
    old.pop("digest", None)
    save_checkpoint(tmp_path / "split" / "checkpoint.pth", old)
    _run("maskrcnn", prepared_set, tmp_path / "split", *common, "--resume", "auto")
    a = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    b = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2 and a["global_step"] == b["global_step"] == 4
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6, rtol=0), k
    assert a["lr_scheduler"]["last_epoch"] == b["lr_scheduler"]["last_epoch"] == 4
    la = [r["loss"] for r in lfiles.read_jsonl(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["loss"] for r in lfiles.read_jsonl(tmp_path / "split" / "metrics.jsonl") if r["kind"] == "train"]
    assert np.allclose(la, lb, rtol=1e-6)
    assert any(r["kind"] == "resume" for r in lfiles.read_jsonl(tmp_path / "split" / "metrics.jsonl"))
    assert lfiles.read_json(tmp_path / "split" / "meta.json")["status"] == "done"


def test_keep_epochs_saves_model_epoch_checkpoints(prepared_set, tmp_path):
    out = tmp_path / "run"
    _run("unet", prepared_set, out, "--epochs", "3", "--max-steps-per-epoch", "1", "--val-every", "0",
         "--keep-epochs", "1", "3")
    assert sorted(p.name for p in out.glob("model_*.pth")) == ["model_1.pth", "model_3.pth"]
    meta = lfiles.read_json(out / "meta.json")
    assert meta["checkpoints"]["epochs"] == {"1": str(out / "model_1.pth"), "3": str(out / "model_3.pth")}
    first, last = (lcheckpoint.read_checkpoint(out / f"model_{e}.pth") for e in (1, 3))
    final = lcheckpoint.read_checkpoint(out / "checkpoint.pth")
    assert (first["epoch"], last["epoch"]) == (1, 3)
    assert all(torch.equal(v, final["model"][k]) for k, v in last["model"].items())
    assert not all(torch.equal(v, final["model"][k]) for k, v in first["model"].items())
    model, _ = lcheckpoint.load_checkpoint(out / "model_1.pth")
    assert not model.training


def _patch_forward(monkeypatch, on_call: int, action):
    """Make every model built from now on apply ``action(losses)`` to its ``on_call``-th training forward."""
    import lib.models as lmodels

    real_build = lmodels.build_model

    def build(config):
        model = real_build(config)
        forward = model.forward
        calls = {"n": 0}

        def patched(images, targets=None):
            out_ = forward(images, targets)
            if model.training:
                calls["n"] += 1
                if calls["n"] == on_call:
                    out_ = action(out_)
            return out_

        model.forward = patched
        return model

    monkeypatch.setattr(lmodels, "build_model", build)


def _crash_and_resume(prepared_set, tmp_path, monkeypatch, common, on_call):
    """A U-Net run of ``common`` flags straight through (``full``), and one killed at its ``on_call``-th training
    forward after a checkpoint every step, then resumed (``split``): ``(the mid-epoch checkpoint, full's last
    checkpoint, split's last checkpoint)``."""
    _run("unet", prepared_set, tmp_path / "full", *common)

    def crash(losses):
        raise RuntimeError("simulated crash")

    _patch_forward(monkeypatch, on_call, crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run("unet", prepared_set, tmp_path / "split", *common, "--checkpoint-every-steps", "1")
    monkeypatch.undo()
    mid = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)
    _run("unet", prepared_set, tmp_path / "split", *common, "--resume", "auto")
    return (mid, torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True),
            torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True))


def test_resume_from_a_mid_epoch_checkpoint(prepared_set, tmp_path, monkeypatch):
    common = ["--epochs", "2", "--val-every", "0", "--warmup-steps", "2", "--lr", "1e-3", "--seed", "5"]
    mid, a, b = _crash_and_resume(prepared_set, tmp_path, monkeypatch, common, 4)  # epoch 2, step 2
    assert (mid["epoch"], mid["iter_in_epoch"], mid["global_step"]) == (1, 1, 3)
    assert set(mid) == {*lcheckpoint.CHECKPOINT_KEYS, "epoch_sums", "digest"}  # rng_ranks: under DDP only
    assert set(mid["epoch_sums"]) == {"sums", "steps", "images", "finite_steps"} and mid["epoch_sums"]["steps"] == 1
    assert b["global_step"] == 4 and b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6, rtol=0), k


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(prepared_set, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _run("unet", prepared_set, out, "--val-every", "0", "--epochs", "2", "--stop-after-epoch", "1")
    before = (out / "checkpoint.pth").read_bytes()

    def to_nan(losses):
        first = next(iter(losses))
        return dict(losses, **{first: losses[first] * float("nan")})

    _patch_forward(monkeypatch, 2, to_nan)
    with pytest.raises(FloatingPointError, match=r"epoch 2, step 2 .*global step 4.*loss=nan.*loss_") as e:
        _run("unet", prepared_set, out, "--val-every", "0", "--epochs", "2", "--resume", "auto")
    assert "checkpoint.pth" in str(e.value)
    monkeypatch.undo()
    assert (out / "checkpoint.pth").read_bytes() == before
    model, ck = lcheckpoint.load_checkpoint(out / "checkpoint.pth")
    assert ck["epoch"] == 1 and ck["global_step"] == 2


class _GroundTruthModel(torch.nn.Module):
    """Eval-mode stand-in that predicts the ground truth of the images it is given, in dataset order."""

    def __init__(self, dataset, drop=False):
        super().__init__()
        self.targets = [dataset[i][1] for i in range(len(dataset))]
        self.i, self.drop = 0, drop

    def forward(self, images, targets=None):
        outs = []
        for im in images:
            t = self.targets[self.i]
            self.i += 1
            n = 0 if self.drop else len(t["labels"])
            outs.append({"boxes": t["boxes"][:n].as_subclass(torch.Tensor), "labels": t["labels"][:n],
                         "scores": torch.linspace(0.9, 0.6, n) if n else torch.zeros(0),
                         "masks": t["masks"][:n, None].float()})
        return outs


def test_evaluate_scores_perfect_and_empty_predictions(prepared_set):
    ds = PreparedDataset(prepared_set, "val", build_transforms(False))
    res = engine.evaluate(_GroundTruthModel(ds), ds, torch.device("cpu"), progress=False)
    assert res["num_images"] == len(ds) and res["kaggle"] == pytest.approx(1.0)
    assert res["coco"]["AP"] == pytest.approx(1.0)
    res0 = engine.evaluate(_GroundTruthModel(ds, drop=True), ds, torch.device("cpu"), progress=False)
    assert res0["kaggle"] == 0.0
    # detections under the score threshold count for COCO AP but not for the Kaggle metric
    res_hi = engine.evaluate(_GroundTruthModel(ds), ds, torch.device("cpu"), score_thresh=0.95, progress=False)
    assert res_hi["kaggle"] == 0.0 and res_hi["kaggle_all"] == pytest.approx(1.0)


def _tiny_detector():
    from lib import models as lmodels

    torch.manual_seed(0)
    cfg = lmodels.default_config("maskrcnn", backbone="resnet18", min_size=96, max_size=96, box_score_thresh=0.0,
                                 box_detections_per_img=20, attr_head=True,
                                 anchor_sizes=[[16], [32], [64], [128], [256]])
    return lmodels.build_model(cfg).eval()


class _ShiftedTruthModel(torch.nn.Module):
    """Eval stand-in that finds each image's ground truth by its pixels and predicts it shifted by 0-3 pixels
    (so the scores lie between 0 and 1), in any order and on any shard."""

    def __init__(self, dataset):
        super().__init__()
        self.truth = {}
        for i in range(len(dataset)):
            image, t = dataset[i]
            self.truth[round(float(image.sum()), 2)] = (i, t)

    def forward(self, images, targets=None):
        outs = []
        for im in images:
            i, t = self.truth[round(float(im.sum()), 2)]
            n = len(t["labels"])
            outs.append({"boxes": t["boxes"].as_subclass(torch.Tensor), "labels": t["labels"],
                         "scores": torch.linspace(0.9, 0.3, n) if n else torch.zeros(0),
                         "masks": torch.roll(t["masks"].as_subclass(torch.Tensor), i % 4, -1)[:, None].float()})
        return outs


def _eval_ds(prepared_set):
    ds = PreparedDataset(prepared_set, "train", build_transforms(False))
    return PreparedDataset(prepared_set, "train", build_transforms(False), image_ids=ds.image_ids[:5])


def _eval_model(which, prepared_set):
    return _tiny_detector() if which == "detector" else _ShiftedTruthModel(_eval_ds(prepared_set))


def _ddp_eval_worker(rank, world, init_file, prepared_set, out, which):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = engine.evaluate(_eval_model(which, prepared_set), _eval_ds(prepared_set), torch.device("cpu"),
                              batch_size=2, score_thresh=0.0, progress=False, distributed=True, examples=2)
        if rank == 0:
            torch.save({"res": lfiles.json_safe({k: v for k, v in res.items() if k != "examples"}),
                        "n_examples": len(res["examples"])}, out)
        else:
            assert res is None
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("which", ["detector", "shifted_truth"])
def test_distributed_evaluation_equals_single_process(which, prepared_set, tmp_path):
    """Validation on 2 gloo ranks (each its contiguous share of whole batches, merged on rank 0) gives exactly
    the single-process scores: Kaggle metric, COCO mask AP, per class (a tiny Mask R-CNN: its pasted crops and
    attribute scores; ground truth shifted by a few pixels: scores between 0 and 1)."""
    import torch.multiprocessing as mp

    assert engine.shard_indices(5, 2, 0, 2) == [0, 1] and engine.shard_indices(5, 2, 1, 2) == [2, 3, 4]
    assert sum((engine.shard_indices(7, 3, r, 3) for r in range(3)), []) == list(range(7))
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_eval_worker, args=(2, str(tmp_path / "init"), prepared_set, str(out), which), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    torch.set_num_threads(1)
    single = engine.evaluate(_eval_model(which, prepared_set), _eval_ds(prepared_set), torch.device("cpu"),
                             batch_size=2, score_thresh=0.0, progress=False, examples=2)
    assert ddp["n_examples"] == 2 and len(single["examples"]) == 2
    single = lfiles.json_safe({k: v for k, v in single.items() if k != "examples"})
    assert single["num_images"] == ddp["res"]["num_images"] == 5
    if which == "detector":
        assert single["attr"] is not None and single["attr"]["num_pred"] > 0
    else:
        assert 0.05 < single["kaggle"] < 0.95 and 0.05 < single["coco"]["AP"] < 0.95
    assert json.dumps(ddp["res"], sort_keys=True) == json.dumps(single, sort_keys=True)  # NaN == NaN here


def test_train_step_reads_losses_once_and_stops_before_a_bad_update():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    params = list(net.parameters())
    x = torch.randn(4, 3)

    def model(scale):
        return lambda images, targets: {"loss_a": net(images).pow(2).mean() * scale, "loss_b": net(images).mean() * 0}

    before = net.weight.detach().clone()
    total, parts, gn, skipped = engine.train_step(model(1.0), [(x, None)], opt, params, 0.0, torch.device("cpu"))
    assert isinstance(total, float) and set(parts) == {"loss_a", "loss_b"} and total == pytest.approx(sum(parts.values()))
    assert gn > 0 and not skipped and not torch.equal(net.weight, before)  # a step was taken
    before = net.weight.detach().clone()
    with pytest.raises(engine.NonFiniteLossError, match=r"non-finite loss: loss=nan \(loss_a=nan, loss_b=-?0\)"):
        engine.train_step(model(float("nan")), [(x, None)], opt, params, 0.0, torch.device("cpu"))
    assert torch.equal(net.weight, before)  # no update from the bad step
    with pytest.raises(engine.NonFiniteLossError, match="non-finite gradient norm"):
        engine.train_step(lambda i, t: {"loss": torch.sqrt(net(i).pow(2) * 0).mean()}, [(x, None)], opt, params,
                          0.0, torch.device("cpu"))  # loss 0, gradient 0 * inf = nan
    assert torch.equal(net.weight, before)


def test_fp16_train_step_with_scaler_skips_an_overflow_and_counts_it():
    """fp16's GradScaler (on the CPU, as on a T4): an inf loss is a skipped update, not an error; the next step
    updates again; without a scaler (fp32) the same loss stops the step."""
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    params = list(net.parameters())
    x = torch.randn(4, 3)
    scaler = runtime.make_grad_scaler(torch.float16, torch.device("cpu"))
    assert scaler.is_enabled() and not runtime.make_grad_scaler(torch.bfloat16, torch.device("cpu")).is_enabled()
    scale0 = scaler.get_scale()

    def loss(factor):
        return lambda images, targets: {"loss": net(images).pow(2).mean() * factor}

    before = net.weight.detach().clone()
    step = engine.train_step(loss(float("inf")), [(x, None)], opt, params, 1.0, torch.device("cpu"), torch.float16,
                             scaler=scaler)
    assert step.skipped and not math.isfinite(step.grad_norm) and torch.equal(net.weight, before)
    assert scaler.get_scale() == scale0 / 2  # the scaler backed off
    step = engine.train_step(loss(1.0), [(x, None)], opt, params, 1.0, torch.device("cpu"), torch.float16, scaler=scaler)
    assert not step.skipped and math.isfinite(step.loss) and not torch.equal(net.weight, before)
    with pytest.raises(engine.NonFiniteLossError, match="non-finite loss"):
        engine.train_step(loss(float("inf")), [(x, None)], opt, params, 1.0, torch.device("cpu"), None)


@pytest.mark.parametrize("amp", ["fp16", "off"])
def test_train_step_under_ddp_reports_the_same_as_single_process(amp, tmp_path):
    """distributed=True (a 1-rank gloo group): the same loss parts, gradient norm and skip verdict as one process,
    fp16 with the scaler (ranks skip together, no flag exchanged) and fp32 (the non-finite flag is shared)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        results = []
        for distributed in (False, True):
            torch.manual_seed(0)
            net = torch.nn.Linear(3, 1)
            opt = torch.optim.SGD(net.parameters(), lr=0.1)
            dtype = torch.float16 if amp == "fp16" else None
            scaler = runtime.make_grad_scaler(dtype, torch.device("cpu"))
            x = torch.randn(4, 3)
            loss = lambda f: lambda i, t: {"loss_a": net(i).pow(2).mean() * f, "loss_b": net(i).mean() * 0}  # noqa: E731
            steps = [engine.train_step(loss(1.0), [(x, None)], opt, list(net.parameters()), 1.0, torch.device("cpu"),
                                       dtype, distributed, scaler)]
            if amp == "fp16":
                steps.append(engine.train_step(loss(float("inf")), [(x, None)], opt, list(net.parameters()), 1.0,
                                               torch.device("cpu"), dtype, distributed, scaler))
            else:
                with pytest.raises(engine.NonFiniteLossError, match="non-finite loss"):
                    engine.train_step(loss(float("nan")), [(x, None)], opt, list(net.parameters()), 1.0,
                                      torch.device("cpu"), dtype, distributed, scaler)
            results.append([(set(s.parts), s.grad_norm, s.skipped) for s in steps])
        assert results[0][0][0] == {"loss_a", "loss_b"}
        assert json.dumps(results[1], default=sorted) == json.dumps(results[0], default=sorted)
        if amp == "fp16":
            assert results[1][1][2] is True  # the inf step: skipped
    finally:
        dist.destroy_process_group()


def test_fp16_run_skips_an_overflow_step_and_resumes_exactly(prepared_set, tmp_path, monkeypatch):
    """--amp fp16 on the CPU: a tiny run with the gradient scaler; a forced overflow (inf loss at the 2nd step)
    is skipped and counted in metrics.jsonl, the scaler's state is in the checkpoint, and a run split by
    --stop-after-epoch + --resume equals the uninterrupted one exactly."""
    def to_inf(losses):
        first = next(iter(losses))
        return dict(losses, **{first: losses[first] * float("inf")})

    common = ["--amp", "fp16", "--device", "cpu", "--epochs", "2", "--val-every", "0", "--warmup-steps", "1",
              "--lr", "1e-3", "--seed", "4", "--encoder-depth", "3", "--decoder-channels", "16", "8", "8",
              "--image-size", "64"]
    _patch_forward(monkeypatch, 2, to_inf)
    _run("unet", prepared_set, tmp_path / "full", *common)
    monkeypatch.undo()
    full = lfiles.read_jsonl(tmp_path / "full" / "metrics.jsonl")
    train = [r for r in full if r["kind"] == "train"]
    skips = [r["skipped_steps"] for r in train]  # cumulative; the first fp16 steps may overflow on their own
    assert len(skips) == 4 and skips[1] == skips[0] + 1 and skips == sorted(skips)  # the inf step counted
    epochs = [r for r in full if r["kind"] == "epoch"]
    assert [r["skipped_steps"] for r in epochs] == [skips[1], skips[3]]
    assert train[1]["loss"] is None or not math.isfinite(train[1]["loss"])  # the inf step, logged as it was
    assert all(math.isfinite(r["train_loss"]) for r in epochs)  # and left out of the epoch means
    ck = torch.load(tmp_path / "full" / "checkpoint.pth", weights_only=True)
    assert ck["skipped_steps"] == skips[3] and ck["scaler"]["scale"] == 2.0 ** (16 - skips[3])  # halved per skip
    assert lfiles.read_json(tmp_path / "full" / "meta.json")["amp"] == "float16"

    _patch_forward(monkeypatch, 2, to_inf)
    _run("unet", prepared_set, tmp_path / "split", *common, "--stop-after-epoch", "1")
    monkeypatch.undo()
    _run("unet", prepared_set, tmp_path / "split", *common, "--resume", "auto")
    _assert_same_training(tmp_path / "full", tmp_path / "split")
    split = torch.load(tmp_path / "split" / "checkpoint.pth", weights_only=True)
    assert split["scaler"] == ck["scaler"] and split["skipped_steps"] == ck["skipped_steps"]


def test_fp16_steps_that_never_update_stop_the_run(prepared_set, tmp_path, monkeypatch):
    """A loss that is never finite is not an fp16 overflow: after MAX_CONSECUTIVE_SKIPS skipped steps in a row
    the run stops like a non-finite fp32 loss."""
    import lib.models as lmodels

    monkeypatch.setattr(engine, "MAX_CONSECUTIVE_SKIPS", 3)
    real_build = lmodels.build_model

    def build(config):
        model = real_build(config)
        forward = model.forward
        model.forward = lambda images, targets=None: (
            {k: v * float("nan") for k, v in forward(images, targets).items()} if model.training
            else forward(images, targets))
        return model

    monkeypatch.setattr(lmodels, "build_model", build)
    with pytest.raises(FloatingPointError, match=r"3 fp16 steps in a row .*checkpoint.pth"):
        _run("unet", prepared_set, tmp_path / "run", "--amp", "fp16", "--device", "cpu", "--val-every", "0",
             "--max-steps-per-epoch", "5", "--encoder-depth", "3", "--decoder-channels", "16", "8", "8",
             "--image-size", "64")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("arch", ["unet", "maskrcnn", "deepmac"])
def test_cuda_amp_auto_tiny_epoch(arch, prepared_set, tmp_path):
    """--amp auto on the GPU there is: bf16 where it is native (Ampere and newer), fp16 with the scaler before."""
    _run(arch, prepared_set, tmp_path / arch, "--device", "cuda", "--amp", "auto")
    meta = lfiles.read_json(tmp_path / arch / "meta.json")
    native_bf16 = torch.cuda.get_device_capability()[0] >= 8
    assert meta["device"].startswith("cuda") and meta["amp"] == ("bfloat16" if native_bf16 else "float16")
    ck = torch.load(tmp_path / arch / "checkpoint.pth", weights_only=True)
    assert (ck["scaler"] is None) == native_bf16
    model, _ = lcheckpoint.load_checkpoint(tmp_path / arch / "checkpoint.pth")
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_ddp_two_processes_gloo_cpu(prepared_set, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / SCRIPTS["maskrcnn"]), "--prepared-dir", str(prepared_set), "--out-dir", str(out),
           "--workers", "0", "--batch-size", "1", "--max-steps-per-epoch", "2", "--epochs", "1",
           "--log-every", "1", "--max-val-images", "1", "--device", "cpu", "--threads", "1", *TINY_MODEL["maskrcnn"],
           "--attr-head", "--attr-refit-steps", "5"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    t = time.time()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert time.time() - t < 600
    meta = lfiles.read_json(out / "meta.json")
    assert meta["world_size"] == 2 and meta["status"] == "done"
    assert meta["attr_refit"]["rows"] > 0  # rank 0 refits once the other rank is released
    ck = torch.load(out / "checkpoint.pth", weights_only=True)
    assert ck["world_size"] == 2 and ck["global_step"] == 2
    assert not any(k.startswith("module.") for k in ck["model"])  # saved unwrapped
    train = [r for r in lfiles.read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in train] == [1, 2]  # rank 0 alone logs
    assert train[0]["images_per_s"] > 0
    lcheckpoint.load_checkpoint(out / "checkpoint.pth")


# --------------------------------------------------------------------------------------------- overfitting
OVERFIT_IMAGES = 3  # training images with the fewest large instances
OVERFIT_MIN_AREA = 300  # px at the prepared set's 160 px long side; smaller instances are removed


def large_instance_set(src: Path, dst: Path, n_images: int, min_area: int, repeat: int) -> list[str]:
    """A derived prepared set of ``n_images`` train images keeping only instances of >= ``min_area`` pixels.

    The chosen images are both the train split (listed ``repeat`` times, so an epoch is ``repeat`` passes)
    and the val split, so the engine's validation measures how well the model fits them.
    """
    (dst / "ann").mkdir(parents=True)
    shutil.copytree(src / "images", dst / "images")
    shutil.copy(src / "meta.json", dst / "meta.json")
    rows = []
    for _, r in lprepared.load_index(src, "train").iterrows():
        ann = lprepared.read_ann(src, r["image_id"])
        keep = [a for a in ann["instances"] if lrle.area(a["rle"]) >= min_area]
        lfiles.atomic_write_json(lprepared.ann_path(dst, r["image_id"]), dict(ann, instances=keep))
        rows.append(dict(r, num_instances=len(keep),
                         categories=" ".join(str(c) for c in sorted({a["category"] for a in keep}))))
    df = pd.DataFrame(rows)
    df = df[df["num_instances"] > 0].sort_values(["num_instances", "image_id"]).head(n_images)
    index = pd.concat([df.assign(split="train")] * repeat + [df.assign(split="val")]).reset_index(drop=True)
    index.to_parquet(dst / "index.parquet")
    return list(df["image_id"])


# Per arch: model and optimisation flags, passes over the images per epoch, epochs, and the Kaggle score the
# fitted model must beat (measured on these same images; an untrained model scores ~0).
OVERFIT = {
    "unet": dict(flags=["--encoder", "resnet18", "--image-size", "128", "--batch-size", "2", "--lr", "3e-3"],
                 repeat=10, epochs=6, min_kaggle=0.3),
    "maskrcnn": dict(flags=["--backbone", "resnet18", "--min-size", "128", "--max-size", "128", "--anchor-sizes",
                            "16", "32", "64", "128", "256", "--box-batch-size-per-image", "128",
                            "--rpn-post-nms-train", "300", "--batch-size", "2", "--lr", "1e-3"],
                     repeat=10, epochs=8, min_kaggle=0.3),
    "deepmac": dict(flags=["--backbone", "resnet18", "--min-size", "128", "--max-size", "128", "--anchor-sizes",
                           "16", "32", "64", "128", "256", "--box-batch-size-per-image", "128",
                           "--rpn-post-nms-train", "300", "--mask-head-width", "32", "--mask-head-depth", "2",
                           "--mask-head-stacks", "1", "--mask-roi-size", "32", "--batch-size", "2", "--lr", "1e-3"],
                    repeat=10, epochs=8, min_kaggle=0.3),
}


def _untrained_score(arch, args, cache) -> float:
    """Val Kaggle score of the model the run starts from (same seed, same config)."""
    from lib.models import build_model, default_config

    mod = _script(arch)
    overrides = {k: v for k, v in mod.model_overrides(args).items() if v is not None}
    runtime.seed_everything(args.seed)
    model = build_model(default_config(arch, **overrides))
    ds = PreparedDataset(cache, "val", build_transforms(False))
    return engine.evaluate(model, ds, torch.device("cpu"), score_thresh=args.val_score_thresh,
                           progress=False)["kaggle"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["unet", "maskrcnn", "deepmac"])
def test_overfits_a_few_images(arch, prepared_set, tmp_path):
    cfg = OVERFIT[arch]
    cache = tmp_path / "cache"
    ids = large_instance_set(prepared_set, cache, OVERFIT_IMAGES, OVERFIT_MIN_AREA, repeat=cfg["repeat"])
    out = tmp_path / "out"
    args = _script(arch).get_args_parser().parse_args(
        ["--prepared-dir", str(cache), "--out-dir", str(out), "--workers", "0", "--no-hflip", "--color-jitter", "0",
         "--seed", "0", "--log-every", "1", "--warmup-steps", "10", "--epochs", str(cfg["epochs"]),
         "--val-every", str(cfg["epochs"]), *cfg["flags"]])
    untrained = _untrained_score(arch, args, cache)
    t = time.time()
    _script(arch).main(args)
    elapsed = time.time() - t
    recs = lfiles.read_jsonl(out / "metrics.jsonl")
    losses = [r["loss"] for r in recs if r["kind"] == "train"]
    final = [r for r in recs if r["kind"] == "epoch"][-1]
    first, last = float(np.mean(losses[:3])), float(np.mean(losses[-3:]))
    print(f"{arch}: {len(ids)} images, {len(losses)} steps in {elapsed:.0f}s, loss {first:.3f} -> {last:.3f}, "
          f"val kaggle {untrained:.3f} -> {final['val_kaggle']:.3f}, COCO AP {final['val_AP']}")
    assert last < 0.5 * first, (first, last)
    assert untrained < 0.05
    assert final["val_kaggle"] > cfg["min_kaggle"], (untrained, final)


# --------------------------------------------------------------------------------------------- reliability
# (docs/RELIABILITY.md) SIGKILL and resume, full disk, read-only output, tampered checkpoints, no pickle,
# determinism. The kill tests run the real scripts as subprocesses.
import hashlib  # noqa: E402
import re  # noqa: E402

from conftest import (file_size_limit, fuzz_sizes, kill_when, read_only_dirs_work, run_stage,  # noqa: E402
                      snapshot_files, without_root_override)

# Lighter than TINY_MODEL["unet"]: a 3-stage encoder at 64 px, so a checkpoint every step stays cheap.
KILL_MODEL = dict(TINY_MODEL, unet=["--encoder", "resnet18", "--encoder-depth", "3", "--decoder-channels", "16", "8",
                                    "8", "--image-size", "64"])
KILL_FLAGS = ["--device", "cpu", "--workers", "0", "--batch-size", "2", "--max-steps-per-epoch", "3", "--epochs", "2", "--log-every", "1",
              "--max-val-images", "2", "--threads", "1", "--warmup-steps", "2", "--lr", "1e-3", "--seed", "7",
              "--checkpoint-every-steps", "1", "--resume", "auto"]


def _train_cmd(arch, cache, out, *extra, launcher=()):
    return ["python", *launcher, REPO / SCRIPTS[arch], "--prepared-dir", cache, "--out-dir", out, *KILL_FLAGS,
            *KILL_MODEL[arch], *extra]


def _reference_run(arch, cache, out, *extra):
    mod = _script(arch)
    mod.main(mod.get_args_parser().parse_args(
        [str(c) for c in _train_cmd(arch, cache, out, *extra)[2:]]))


def _assert_same_training(a: Path, b: Path, atol=0.0):
    """Same final weights, optimizer step and logged losses; ``b`` has no temporary files left."""
    ca = torch.load(a / "checkpoint.pth", weights_only=True)
    cb = torch.load(b / "checkpoint.pth", weights_only=True)
    assert (ca["epoch"], ca["global_step"]) == (cb["epoch"], cb["global_step"])
    for k, v in ca["model"].items():
        assert torch.allclose(v.float(), cb["model"][k].float(), atol=atol, rtol=0), k
    losses = lambda d: [(r["kind"], r["step"], r.get("loss", r.get("train_loss")))  # noqa: E731
                        for r in lfiles.read_jsonl(d / "metrics.jsonl") if r["kind"] in ("train", "epoch")]
    la, lb = losses(a), losses(b)
    assert [x[:2] for x in la] == [x[:2] for x in lb]  # the same records, none lost or doubled
    nan = lambda xs: [np.nan if x[2] is None else x[2] for x in xs]  # noqa: E731 - an fp16 step's inf loss: null
    assert np.allclose(nan(la), nan(lb), rtol=1e-6, atol=atol, equal_nan=True)
    assert lfiles.read_json(b / "meta.json")["status"] == "done"
    assert not [p.name for p in b.iterdir() if p.name.startswith(".tmp.")]


def _kill_then_resume(arch, cache, tmp_path, delay, launcher=(), extra=()):
    """Kill a run after its first checkpoint (+ ``delay`` s), check what it left, rerun the same command."""
    out = tmp_path / "killed"
    cmd = _train_cmd(arch, cache, out, *extra, launcher=launcher)
    assert kill_when(cmd, lambda: (out / "checkpoint.pth").exists(), delay=delay), "the run ended before the kill"
    assert lfiles.read_json(out / "meta.json")["status"] == "running"
    left = lcheckpoint.read_checkpoint(out / "checkpoint.pth")  # whatever the kill interrupted, this loads
    step = int(left["global_step"])
    r = run_stage(cmd)
    assert r.returncode == 0, r.stderr[-3000:]
    resumes = [x for x in lfiles.read_jsonl(out / "metrics.jsonl") if x["kind"] == "resume"]
    assert [x["step"] for x in resumes] == [step]  # it continued from the last checkpoint, not from scratch
    return out, step


@pytest.mark.parametrize("arch", ["unet", pytest.param("maskrcnn", marks=pytest.mark.long),
                                  pytest.param("deepmac", marks=pytest.mark.long)])
def test_sigkill_during_training_then_rerun_equals_an_uninterrupted_run(arch, prepared_set, tmp_path):
    ref = tmp_path / "ref"
    _reference_run(arch, prepared_set, ref)
    out, step = _kill_then_resume(arch, prepared_set, tmp_path, delay=0.2)
    _assert_same_training(ref, out, atol=1e-6)
    print(f"{arch}: killed with the checkpoint at step {step}, resumed, same result as uninterrupted")


def test_sigkill_during_fp16_training_then_rerun_equals_an_uninterrupted_run(prepared_set, tmp_path):
    """fp16 with the gradient scaler (CPU autocast): the scaler's state resumes with the weights."""
    ref = tmp_path / "ref"
    _reference_run("unet", prepared_set, ref, "--amp", "fp16")
    out, step = _kill_then_resume("unet", prepared_set, tmp_path, delay=0.2, extra=("--amp", "fp16"))
    _assert_same_training(ref, out)
    a, b = (torch.load(d / "checkpoint.pth", weights_only=True) for d in (ref, out))
    assert a["scaler"] is not None and a["scaler"] == b["scaler"] and a["skipped_steps"] == b["skipped_steps"]


@pytest.mark.long
def test_sigkill_during_torchrun_training_then_rerun_equals_an_uninterrupted_run(prepared_set, tmp_path):
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    ref = tmp_path / "ref"
    r = run_stage(_train_cmd("unet", prepared_set, ref, launcher=launcher))
    assert r.returncode == 0, r.stderr[-3000:]
    out, step = _kill_then_resume("unet", prepared_set, tmp_path, delay=0.5, launcher=launcher)
    assert torch.load(out / "checkpoint.pth", weights_only=True)["world_size"] == 2
    _assert_same_training(ref, out, atol=1e-6)
    print(f"torchrun x2: killed with the checkpoint at step {step}, resumed, same result as uninterrupted")


def test_resume_drops_log_records_after_the_checkpoint(prepared_set, tmp_path):
    """What a kill between a log write and the next checkpoint leaves: records past the checkpoint, a torn
    last line, val history of an epoch not in the checkpoint, a temporary file. A resume cleans them up."""
    out = tmp_path / "run"
    common = ["--epochs", "2", "--val-every", "1", "--seed", "3", "--max-val-images", "1"]
    _run("unet", prepared_set, out, *common, "--stop-after-epoch", "1")
    good = (out / "metrics.jsonl").read_text()
    lfiles.append_jsonl(out / "metrics.jsonl", {"kind": "train", "epoch": 2, "iter": 1, "step": 3, "loss": 9.0})
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "epoch": 2, "it')
    vs = lfiles.read_json(out / "val_scores.json")
    lfiles.atomic_write_json(out / "val_scores.json", dict(vs, history=vs["history"] + [{"epoch": 2, "kaggle": 0.5}]))
    (out / ".tmp.checkpoint.abc.pth").write_bytes(b"half a checkpoint")
    _run("unet", prepared_set, out, *common, "--resume", "auto")
    recs = lfiles.read_jsonl(out / "metrics.jsonl")
    assert (out / "metrics.jsonl").read_text().startswith(good)
    assert [r["step"] for r in recs if r["kind"] == "train"] == [1, 2, 3, 4]
    assert not any(r.get("loss") == 9.0 for r in recs)
    assert [h["epoch"] for h in lfiles.read_json(out / "val_scores.json")["history"]] == [1, 2]
    assert not (out / ".tmp.checkpoint.abc.pth").exists()


def test_disk_full_during_training_keeps_the_last_checkpoint(prepared_set, tmp_path):
    out = tmp_path / "run"
    _reference_run("unet", prepared_set, out, "--stop-after-epoch", "1")
    before = (out / "checkpoint.pth").read_bytes()
    r = run_stage(_train_cmd("unet", prepared_set, out, "--checkpoint-every-steps", "0"),
                  preexec_fn=file_size_limit(2 * 2**20))
    assert r.returncode != 0
    assert re.search(r"\n\w*Error: .*cannot write checkpoint .*checkpoint.pth: \[Errno 27\] File too large"
                     r".*the previous checkpoint.pth is kept", r.stderr), r.stderr[-3000:]
    assert (out / "checkpoint.pth").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".tmp.")]
    lcheckpoint.read_checkpoint(out / "checkpoint.pth")
    r = run_stage(_train_cmd("unet", prepared_set, out, "--checkpoint-every-steps", "0"))  # space again
    assert r.returncode == 0, r.stderr[-3000:]
    assert lfiles.read_json(out / "meta.json")["status"] == "done"


def test_read_only_out_dir_stops_training_with_a_clear_error(prepared_set, tmp_path):
    if not read_only_dirs_work(tmp_path):
        pytest.skip("directory permissions do not bind this user here (root without a droppable "
                    "CAP_DAC_OVERRIDE)")
    out = tmp_path / "run"
    _reference_run("unet", prepared_set, out, "--stop-after-epoch", "1")
    before = snapshot_files(out)
    out.chmod(0o555)
    try:
        r = run_stage(_train_cmd("unet", prepared_set, out, "--checkpoint-every-steps", "0"),
                      preexec_fn=without_root_override())
    finally:
        out.chmod(0o755)
    assert r.returncode != 0
    assert re.search(rf"\n\w*Error: .*--out-dir {re.escape(str(out))} is not writable: Permission denied",
                     r.stderr), r.stderr[-3000:]
    assert snapshot_files(out) == before


def test_a_modified_weight_in_a_real_checkpoint_is_refused(prepared_set, tmp_path):
    out = tmp_path / "run"
    _run("unet", prepared_set, out, "--val-every", "0")
    raw = torch.load(out / "checkpoint.pth", weights_only=True)
    name = next(k for k, v in raw["model"].items() if v.is_floating_point() and v.numel() > 100)
    raw["model"][name].view(-1)[7] += 1.0  # a silent edit: torch.load alone cannot tell
    torch.save(raw, tmp_path / "edited.pth")
    assert torch.load(tmp_path / "edited.pth", weights_only=True)["model"][name].view(-1)[7] != 0
    with pytest.raises(ValueError, match="edited.pth: checkpoint content does not match its digest"):
        lcheckpoint.load_checkpoint(tmp_path / "edited.pth")
    raw.pop("digest")  # a digest is required from format /2 on ...
    torch.save(raw, tmp_path / "stripped.pth")
    with pytest.raises(ValueError, match="stripped.pth: checkpoint of format .*/2' has no digest"):
        lcheckpoint.load_checkpoint(tmp_path / "stripped.pth")
    raw["format"] = "imat-train-checkpoint/1"  # ... files of format /1 (before digests) still load
    torch.save(raw, tmp_path / "legacy.pth")
    lcheckpoint.load_checkpoint(tmp_path / "legacy.pth")


def test_no_pickle_anywhere_and_every_torch_load_is_weights_only():
    """Every .py file and notebook code cell of the repo: no pickle-based loading, and each torch.load call
    passes weights_only=True."""
    import json

    banned = re.compile(r"^\s*(import|from)\s+(pickle|cPickle|dill|cloudpickle|joblib|shelve|marshal)\b|"
                        r"\b(pickle|dill|cloudpickle|joblib|marshal)\.loads?\(|read_pickle\(|"
                        r"allow_pickle\s*=\s*True|weights_only\s*=\s*False", re.M)
    files = [p for p in list(REPO.rglob("*.py")) + list(REPO.rglob("*.ipynb"))
             if not any(part.startswith(".") or part in ("work", "data") for part in p.relative_to(REPO).parts)]
    assert len(files) > 20
    n_loads = 0
    for p in files:
        text = p.read_text()
        if p.suffix == ".ipynb":
            text = "\n".join("".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code")
        if p.name == "test_engine.py":  # leave out this test's own patterns
            text = re.sub(r"def test_no_pickle_anywhere.*?(?=\ndef )", "", text, flags=re.S)
        m = banned.search(text)
        assert m is None, f"{p.relative_to(REPO)}: {m.group(0)!r}"
        for call in re.finditer(r"torch\.load\(", text):
            depth, j = 1, call.end()
            while depth and j < len(text):
                depth += {"(": 1, ")": -1}.get(text[j], 0)
                j += 1
            assert "weights_only=True" in text[call.end():j], f"{p.relative_to(REPO)}: {text[call.start():j]}"
            n_loads += 1
    assert n_loads >= 5


def test_same_seed_gives_the_same_first_epoch_losses_on_cpu(prepared_set, tmp_path):
    common = ["--val-every", "0", "--max-steps-per-epoch", "3", "--warmup-steps", "1", "--lr", "1e-3"]
    runs = {}
    for name, seed in (("a", "5"), ("b", "5"), ("c", "6")):
        _run("unet", prepared_set, tmp_path / name, *common, "--seed", seed)
        runs[name] = [r["loss"] for r in lfiles.read_jsonl(tmp_path / name / "metrics.jsonl") if r["kind"] == "train"]
    assert len(runs["a"]) == 3 and runs["a"] == runs["b"]  # bit-identical
    assert runs["c"] != runs["a"]
    digest = lambda d: hashlib.sha256(b"".join(  # noqa: E731
        v.numpy().tobytes() for v in torch.load(d / "checkpoint.pth", weights_only=True)["model"].values())).hexdigest()
    assert digest(tmp_path / "a") == digest(tmp_path / "b")


@pytest.mark.parametrize("arch", ["unet", "maskrcnn", "deepmac"])
def test_channels_last_model_trains_like_the_default_layout(arch, prepared_set):
    """--channels-last: the same weights in NHWC layout give the same losses and the same update (fp32)."""
    from lib import models as lmodels
    from lib.training_data import collate_fn

    cfg = {"unet": dict(encoder="resnet18", min_size=64, max_size=64, decoder_channels=[32, 16, 16, 8, 8]),
           "maskrcnn": dict(backbone="resnet18", min_size=64, max_size=64),
           "deepmac": dict(backbone="resnet18", min_size=64, max_size=64, mask_head_width=16, mask_head_depth=2,
                           mask_head_stacks=1, mask_roi_size=16)}[arch]
    ds = PreparedDataset(prepared_set, "train", build_transforms(False))
    images, targets = engine._to_device(*collate_fn([ds[0], ds[1]]), torch.device("cpu"))
    results = []
    for channels_last in (False, True):
        torch.manual_seed(0)
        model = lmodels.build_model(lmodels.default_config(arch, **cfg)).train()
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
            conv = next(p for p in model.parameters() if p.ndim == 4 and p.shape[1] > 1 and p.shape[-1] > 1)
            assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(params, lr=0.01)
        feats = None
        if arch != "unet":  # the detectors' backbone + FPN maps, before any sampling
            with torch.no_grad():
                batch, _ = model.transform([im.as_subclass(torch.Tensor) for im in images])
                feats = model.backbone(batch.tensors)
        torch.manual_seed(1)  # the same RoI sampling on both sides
        total, parts, _, _ = engine.train_step(model, [(images, targets)], opt, params, 0.0, torch.device("cpu"), None)
        results.append((total, [p.detach().clone() for p in params], feats))
    (t0, p0, f0), (t1, p1, f1) = results
    assert math.isfinite(t1) and t1 == pytest.approx(t0, rel=1e-3)
    if arch == "unet":  # no sampling: the whole update agrees
        assert all(torch.allclose(a, b, rtol=1e-3, atol=1e-5) for a, b in zip(p0, p1))
    else:  # proposals can swap places on float-level score ties, so compare the features, not the update
        assert f0.keys() == f1.keys()
        assert all((f0[k] - f1[k]).abs().max() <= 1e-4 * f0[k].abs().max() for k in f0)


@pytest.mark.parametrize("arch", ["unet", "maskrcnn", "deepmac"])
def test_bf16_autocast_train_step_on_cpu(arch, prepared_set):
    """The bf16 autocast step the engine takes on CUDA (--amp auto there), run on the CPU: finite losses
    (attribute head included) and an update of the weights."""
    from lib import models as lmodels
    from lib.training_data import collate_fn

    cfg = {"unet": dict(encoder="resnet18", min_size=96, max_size=96, decoder_channels=[32, 16, 16, 8, 8]),
           "maskrcnn": dict(backbone="resnet18", min_size=96, max_size=96, attr_head=True, attr_prior=True,
                            train_scale_range=[0.8, 1.0]),
           "deepmac": dict(backbone="resnet18", min_size=96, max_size=96, mask_head_width=16, mask_head_depth=2,
                           mask_head_stacks=1, mask_roi_size=16)}[arch]
    torch.manual_seed(0)
    model = lmodels.build_model(lmodels.default_config(arch, **cfg)).train()
    ds = PreparedDataset(prepared_set, "train", build_transforms(True))
    images, targets = collate_fn([ds[0], ds[1]])
    images, targets = engine._to_device(images, targets, torch.device("cpu"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    before = [p.detach().clone() for p in params]
    total, parts, gn, _ = engine.train_step(model, [(images, targets)], opt, params, 1.0, torch.device("cpu"),
                                         torch.bfloat16)
    assert math.isfinite(total) and math.isfinite(gn) and all(math.isfinite(v) for v in parts.values())
    assert ("loss_attr" in parts) == (arch == "maskrcnn")
    assert any(not torch.equal(b, p) for b, p in zip(before, params))
    assert all(p.dtype == torch.float32 for p in params)  # autocast leaves the weights in fp32


def test_attribute_prior_starts_from_the_train_split(prepared_set, tmp_path, capsys):
    """03 --attr-head: the head's per-category logits start at the train split's attribute frequencies (lr 0
    keeps them there), saved in the checkpoint with the config key that rebuilds them."""
    from lib.models import maskrcnn
    from lib.training_data import attribute_counts

    _run("maskrcnn", prepared_set, tmp_path / "m", "--attr-head", "--lr", "0", "--val-every", "0",
         "--attr-refit-steps", "0")
    ck = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    assert ck["config"]["attr_head"] is True and ck["config"]["attr_prior"] is True
    counts, totals = attribute_counts(PreparedDataset(prepared_set, "train"), 47)
    want = maskrcnn.AttributePredictor(1, 92, 0, 47)
    want.init_prior(counts, totals)
    torch.testing.assert_close(ck["model"]["roi_heads.attr_predictor.category_logits"], want.category_logits.detach())
    assert f"attribute prior: {int(totals.sum())} training instances" in capsys.readouterr().out


def test_attribute_refit_rewrites_best_pth_after_training(prepared_set, tmp_path):
    """03 --attr-head --attr-refit-steps: after the last epoch best.pth's attribute head is refit (recorded in the
    checkpoint and meta.json), the rest of its weights and checkpoint.pth are the training's; without the head the
    flag is refused before anything trains."""
    _run("maskrcnn", prepared_set, tmp_path / "m", "--attr-head", "--attr-refit-steps", "3")
    meta = lfiles.read_json(tmp_path / "m" / "meta.json")
    best = torch.load(tmp_path / "m" / "best.pth", weights_only=True)
    last = torch.load(tmp_path / "m" / "checkpoint.pth", weights_only=True)
    assert meta["attr_refit"]["steps"] == 3 and meta["attr_refit"]["rows"] > 0
    assert meta["attr_refit"]["checkpoint"] == str(tmp_path / "m" / "best.pth")
    assert best["attr_refit"]["rows"] == meta["attr_refit"]["rows"] and "attr_refit" not in last
    changed = {k for k, v in best["model"].items() if not torch.equal(v, last["model"][k])}
    assert changed and all(k.startswith("roi_heads.attr_predictor.") for k in changed)  # one epoch: best = last
    with pytest.raises(SystemExit, match="needs --attr-head"):
        _run("maskrcnn", prepared_set, tmp_path / "n", "--attr-refit-steps", "3")
    assert not (tmp_path / "n").exists()
    _run("maskrcnn", prepared_set, tmp_path / "p", "--val-every", "0")  # no head: resumed, the saved config says so
    with pytest.raises(SystemExit, match="needs --attr-head"):
        _run("maskrcnn", prepared_set, tmp_path / "p", "--attr-refit-steps", "3", "--resume",
             str(tmp_path / "p" / "checkpoint.pth"))
    assert lfiles.read_json(tmp_path / "p" / "meta.json")["status"] == "done"


# --------------------------------------------------------------------------------------------- recipe options
def test_accumulated_micro_batches_step_like_the_large_batch():
    """--accumulate: two micro-batches of 2 (each loss / 2) give the gradient, update and reported losses of one
    batch of 4 whose loss is the mean over images."""
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))
    results = []
    for batches in ([(x, None)], [(x[:2], None), (x[2:], None)]):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        loss = lambda i, t: {"loss_a": net(i).pow(2).mean(), "loss_b": net(i).mean()}  # noqa: E731
        step = engine.train_step(loss, batches, opt, list(net.parameters()), 0.0, torch.device("cpu"))
        results.append((step, net.weight.detach().clone(), net.bias.detach().clone()))
    (a, wa, ba), (b, wb, bb) = results
    assert torch.allclose(wa, wb, atol=1e-7) and torch.allclose(ba, bb, atol=1e-7)
    assert b.loss == pytest.approx(a.loss, rel=1e-6) and b.grad_norm == pytest.approx(a.grad_norm, rel=1e-6)
    assert b.parts == pytest.approx(a.parts, rel=1e-6)


def test_accumulate_counts_optimizer_steps_and_resumes_mid_epoch_exactly(prepared_set, tmp_path, monkeypatch):
    common = ["--epochs", "2", "--val-every", "0", "--warmup-steps", "2", "--lr", "1e-3", "--seed", "5",
              "--accumulate", "2", "--batch-size", "1"]
    # epoch 2, step 2, its first micro-batch (forwards 1-4 are epoch 1)
    mid, a, b = _crash_and_resume(prepared_set, tmp_path, monkeypatch, common, 7)
    full = lfiles.read_json(tmp_path / "full" / "meta.json")
    assert full["global_step"] == 4 and full["optimization"]["global_batch"] == 2  # 1 image x 2 micro-batches
    epochs = [r for r in lfiles.read_jsonl(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "epoch"]
    assert [r["steps"] for r in epochs] == [2, 2]
    assert (mid["epoch"], mid["iter_in_epoch"], mid["global_step"]) == (1, 1, 3)
    assert b["global_step"] == 4
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6, rtol=0), k
    with pytest.raises(SystemExit, match="02: error: --accumulate 1000: needs 1 to"):
        _run("unet", prepared_set, tmp_path / "bad", "--accumulate", "1000")


def test_lr_scale_linear_scales_with_the_global_batch(prepared_set, tmp_path):
    _run("unet", prepared_set, tmp_path / "run", "--lr", "0.02", "--lr-scale", "linear", "--accumulate", "2",
         "--max-steps-per-epoch", "1", "--val-every", "0", "--schedule", "none", "--warmup-steps", "0")
    opt = lfiles.read_json(tmp_path / "run" / "meta.json")["optimization"]
    assert opt == {"global_batch": 4, "accumulate": 2, "lr_scale": "linear", "lr_base_batch": 16,
                   "lr": pytest.approx(0.02 * 4 / 16), "ema_decay": 0.0}
    ck = torch.load(tmp_path / "run" / "checkpoint.pth", weights_only=True)
    assert ck["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005)


def test_ema_is_validated_saved_resumed_and_loaded_by_05(prepared_set, tmp_path, monkeypatch):
    common = ["--epochs", "2", "--val-every", "1", "--warmup-steps", "2", "--lr", "1e-3", "--seed", "2",
              "--ema-decay", "0.5"]
    _run("unet", prepared_set, tmp_path / "full", *common)
    ck = lcheckpoint.read_checkpoint(tmp_path / "full" / "checkpoint.pth")
    ema = lcheckpoint.ema_weights(ck)
    assert int(ck["model_ema"]["n_averaged"]) == 4 and set(ema) == set(ck["model"])
    assert any(not torch.equal(ema[k], v) for k, v in ck["model"].items() if v.is_floating_point())
    model, _ = lcheckpoint.load_checkpoint(tmp_path / "full" / "checkpoint.pth")  # 05's load: the average
    assert all(torch.equal(v, ema[k]) for k, v in model.state_dict().items())
    raw, _ = lcheckpoint.load_checkpoint(tmp_path / "full" / "checkpoint.pth", ema=False)
    assert all(torch.equal(v, ck["model"][k]) for k, v in raw.state_dict().items())
    # validation scored the average: evaluating it again gives the recorded score
    val = PreparedDataset(prepared_set, "val", build_transforms(False), image_ids=None)
    val.image_ids = val.image_ids[:2]
    res = engine.evaluate(model, val, torch.device("cpu"), batch_size=2, progress=False)
    assert res["kaggle"] == pytest.approx(lfiles.read_json(tmp_path / "full" / "val_scores.json")["latest"]["kaggle"])
    # resumed after epoch 1, the average goes on exactly
    _run("unet", prepared_set, tmp_path / "split", *common, "--stop-after-epoch", "1")
    _run("unet", prepared_set, tmp_path / "split", *common, "--resume", "auto")
    b = lcheckpoint.read_checkpoint(tmp_path / "split" / "checkpoint.pth")
    for k, v in ck["model_ema"].items():
        assert torch.allclose(v.float(), b["model_ema"][k].float(), atol=1e-6, rtol=0), k
    assert lfiles.read_json(tmp_path / "full" / "meta.json")["optimization"]["ema_decay"] == 0.5


# --------------------------------------------------------------------------------------------- LSJ and copy-paste
@pytest.mark.parametrize("flag", ["lsj", "copy_paste"])
@pytest.mark.parametrize("arch", ["unet", "maskrcnn"])
def test_one_tiny_epoch_with_lsj_or_copy_paste(arch, flag, prepared_set, tmp_path, monkeypatch):
    """--lsj 96 (the tiny models resize to 96, so they keep 96 x 96 images) / --copy-paste 1: the batches the
    model trains on are as the flag says (boxes on the masks), the losses finite, the flag in the checkpoint."""
    import lib.training_data as ltd
    from lib.boxes import mask_boxes

    seen, pastes = [], []
    real_step, real_paste = engine.train_step, ltd.paste_instances

    def step(net, group, *a, **k):
        seen.extend((im, t) for images, targets in group for im, t in zip(images, targets))
        return real_step(net, group, *a, **k)

    def paste(*a, **k):
        pastes.append(a[3]["labels"])
        return real_paste(*a, **k)

    monkeypatch.setattr(engine, "train_step", step)
    monkeypatch.setattr(ltd, "paste_instances", paste)
    extra = ["--lsj", "96"] if flag == "lsj" else ["--copy-paste", "1.0"]
    out = tmp_path / "run"
    assert _run(arch, prepared_set, out, *extra, "--val-every", "0") == 0
    assert len(seen) == 4  # 2 steps x 2 images
    for image, t in seen:
        assert t["masks"].shape[1:] == image.shape[1:] and t["labels"].shape[0] == t["attributes"].shape[0]
        assert torch.equal(t["boxes"], mask_boxes(t["masks"])) if len(t["masks"]) else t["boxes"].shape == (0, 4)
        if flag == "lsj":
            assert image.shape == (3, 96, 96)
    # p = 1: every image of a batch gets the other's instances (the loop reads a batch past its last step too)
    assert len(pastes) >= 4 if flag == "copy_paste" else not pastes
    train = [r for r in lfiles.read_jsonl(out / "metrics.jsonl") if r["kind"] == "train"]
    assert len(train) == 2 and all(math.isfinite(r["loss"]) for r in train)
    args = torch.load(out / "checkpoint.pth", map_location="cpu", weights_only=True)["args"]
    assert (args["lsj"], args["copy_paste"]) == ((96, 0.0) if flag == "lsj" else (0, 1.0))


def test_lsj_and_copy_paste_resume_mid_epoch_exactly(prepared_set, tmp_path, monkeypatch):
    common = ["--epochs", "2", "--val-every", "0", "--warmup-steps", "2", "--lr", "1e-3", "--seed", "5",
              "--lsj", "96", "--copy-paste", "0.5"]
    _, a, b = _crash_and_resume(prepared_set, tmp_path, monkeypatch, common, 4)  # epoch 2, step 2
    assert b["global_step"] == 4 and b["epoch"] == 2
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), atol=1e-6, rtol=0), k
    la = [r["loss"] for r in lfiles.read_jsonl(tmp_path / "full" / "metrics.jsonl") if r["kind"] == "train"]
    lb = [r["loss"] for r in lfiles.read_jsonl(tmp_path / "split" / "metrics.jsonl") if r["kind"] == "train"]
    assert la == lb


def test_lsj_with_scale_range_or_copy_paste_without_a_second_image_is_an_error(prepared_set, tmp_path):
    with pytest.raises(SystemExit, match="02: error: --lsj and --scale-range"):
        _run("unet", prepared_set, tmp_path / "a", "--lsj", "96", "--scale-range", "0.8", "1.0")
    with pytest.raises(SystemExit, match="^02: error: .*--batch-size >= 2"):
        _run("unet", prepared_set, tmp_path / "b", "--copy-paste", "0.5", "--batch-size", "1")
    with pytest.raises(SystemExit,
                       match=r"03: error: --lsj 64: the model would resize its 64 x 64 crops to \{'min_size': 96, "):
        _run("maskrcnn", prepared_set, tmp_path / "c", "--lsj", "64")  # the tiny model's --min-size 96
