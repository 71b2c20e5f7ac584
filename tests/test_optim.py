"""lib/optim.py: optimizer parameter groups, the learning-rate schedule, the global batch / lr, the EMA."""
import warnings

import pytest
import torch

from lib import optim


def test_lr_schedule_values():
    f = optim.lr_factor_fn("cosine", total_steps=110, warmup_steps=10)
    assert f(0) == pytest.approx(1e-3) and f(10) == pytest.approx(1.0)
    assert f(5) == pytest.approx(0.5 * (1 + 1e-3))
    assert f(60) == pytest.approx(0.5) and f(110) == pytest.approx(0.0, abs=1e-12)
    s = optim.lr_factor_fn("step", total_steps=100, warmup_steps=0, milestones_steps=[50, 80], gamma=0.1)
    assert (s(49), s(50), s(79), s(80)) == pytest.approx((1.0, 0.1, 0.1, 0.01))
    assert optim.lr_factor_fn("none", 100, 0)(99) == 1.0


def test_milestone_steps_from_epochs():
    assert optim.milestone_steps("8,11", epochs=12, steps_per_epoch=10) == [80, 110]
    assert optim.milestone_steps("", epochs=12, steps_per_epoch=10) == [80, 110]  # 2/3 and 8/9 of 12 epochs
    assert optim.milestone_steps(" ", epochs=1, steps_per_epoch=7) == [7]  # both round to epoch 1: one milestone
    with pytest.raises(ValueError, match="--lr-milestones '8;11': expected comma-separated epochs"):
        optim.milestone_steps("8;11", epochs=12, steps_per_epoch=10)


@pytest.mark.parametrize("schedule", ["cosine", "step", "none"])
def test_lr_scheduler_steps_the_factor_once_per_optimizer_step(schedule):
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = optim.build_lr_scheduler(opt, schedule, epochs=3, steps_per_epoch=4, warmup_steps=2, lr_milestones="1,2",
                                     gamma=0.5)
    f = optim.lr_factor_fn(schedule, total_steps=12, warmup_steps=2, milestones_steps=[4, 8], gamma=0.5)
    seen = [opt.param_groups[0]["lr"]]
    for _ in range(12):
        opt.step()
        optim.step_scheduler(sched)
        seen.append(opt.param_groups[0]["lr"])
    assert seen == pytest.approx([0.1 * f(k) for k in range(13)], rel=1e-12, abs=1e-15)
    assert sched.last_epoch == 12
    if schedule == "step":
        assert (seen[3], seen[4], seen[8]) == pytest.approx((0.1, 0.05, 0.025))


def test_step_scheduler_silences_only_the_order_warning():
    """A step fp16's scaler skipped leaves optimizer.step() uncalled: no warning about the call order then."""
    for step, warned in ((lambda s: s.step(), True), (optim.step_scheduler, False)):
        opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        sched = optim.build_lr_scheduler(opt, "none", epochs=1, steps_per_epoch=2, warmup_steps=0)
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            step(sched)
        assert any("lr_scheduler.step()" in str(w.message) for w in got) == warned


@pytest.mark.parametrize("name, cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_build_optimizer_leaves_1d_parameters_undecayed_and_frozen_ones_out(name, cls):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    model[2].weight.requires_grad_(False)
    opt = optim.build_optimizer(model, name, lr=0.01, weight_decay=1e-4, momentum=0.8, device=torch.device("cpu"))
    assert type(opt) is cls
    decay, no_decay = opt.param_groups
    assert [p.shape for p in decay["params"]] == [model[0].weight.shape] and decay["weight_decay"] == 1e-4
    assert [id(p) for p in no_decay["params"]] == [id(model[0].bias), id(model[1].weight), id(model[1].bias),
                                                   id(model[2].bias)]
    assert no_decay["weight_decay"] == 0.0 and all(g["lr"] == 0.01 for g in opt.param_groups)
    if name == "sgd":
        assert decay["momentum"] == 0.8
    only_biases = torch.nn.Linear(3, 2)
    only_biases.weight.requires_grad_(False)
    assert len(optim.build_optimizer(only_biases, name, 0.01, 1e-4, 0.9, torch.device("cpu")).param_groups) == 1


def test_optimization_summary_global_batch_and_linear_lr():
    assert optim.optimization_summary(0.02, batch_size=2, accumulate=2, world_size=1, lr_scale="linear") == {
        "global_batch": 4, "accumulate": 2, "lr_scale": "linear", "lr_base_batch": 16, "lr": pytest.approx(0.005),
        "ema_decay": 0.0}
    plain = optim.optimization_summary(0.02, batch_size=4, accumulate=1, world_size=8, ema_decay=0.999)
    assert (plain["global_batch"], plain["lr"], plain["ema_decay"]) == (32, 0.02, 0.999)
    assert optim.optimization_summary(0.1, 4, 1, 8, "linear", lr_base_batch=64)["lr"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="--lr-scale: 'none' or 'linear', got 'sqrt'"):
        optim.optimization_summary(0.02, 2, 1, 1, lr_scale="sqrt")


def test_ema_copies_then_averages_weights_and_buffers():
    assert optim.make_ema(torch.nn.Linear(2, 1), 0.0) is None
    with pytest.raises(ValueError, match=r"--ema-decay must be in \[0, 1\), got 1.0"):
        optim.make_ema(torch.nn.Linear(2, 1), 1.0)
    model = torch.nn.BatchNorm1d(2)
    ema = optim.make_ema(model, 0.75)
    with torch.no_grad():
        model.weight.fill_(2.0)
        model.running_mean.fill_(4.0)
    ema.update_parameters(model)  # the first update copies
    assert torch.equal(ema.module.weight, model.weight) and torch.equal(ema.module.running_mean, model.running_mean)
    with torch.no_grad():
        model.weight.fill_(6.0)
        model.running_mean.fill_(8.0)
    ema.update_parameters(model)
    assert torch.allclose(ema.module.weight, torch.full((2,), 0.75 * 2.0 + 0.25 * 6.0))
    assert torch.allclose(ema.module.running_mean, torch.full((2,), 0.75 * 4.0 + 0.25 * 8.0))  # buffers too
    assert int(ema.n_averaged) == 2
