"""The optimizer's parameter groups and one update of each kind by hand; the learning-rate schedule
(linear warm-up, then steps) at hand-computed iterations, through the LambdaLR the trainer steps; the
warm-up until a training metric falls below a threshold, on a scripted metric."""

from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from resnet_engine.config import ConfigError
from resnet_engine.optim import MetricWarmup, build_optimizer, build_scheduler, lr_factor
from resnet_engine.resume import load_scheduler_state
from resnet_engine.schema import MetricWarmupConfig, check_solver_options, steps_beyond_the_run


def solver(**changes):
    values = {"optimizer": "sgd", "base_lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "steps": [3000, 4000],
              "gamma": 0.1, "warmup_iters": 1000, "warmup_factor": 0.001, "warmup_until": MetricWarmupConfig(), "winograd_channels": None}
    return SimpleNamespace(**{**values, **changes})


class Mixed(nn.Module):
    """Every kind of parameter: convolution, linear, four norms, a frozen layer and a tied weight."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gn = nn.GroupNorm(2, 4)
        self.ln = nn.LayerNorm(4)
        self.bn1d = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 4)
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.tied = nn.Linear(4, 4, bias=False)
        self.tied.weight = self.fc.weight  # one parameter, two modules


def ids(params):
    return {id(p) for p in params}


def test_norm_parameters_get_no_weight_decay_and_frozen_ones_no_group():
    model = Mixed()
    optimizer = build_optimizer(model, solver())
    assert isinstance(optimizer, torch.optim.SGD)
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert ids(decay["params"]) == ids([model.conv.weight, model.conv.bias, model.fc.weight, model.fc.bias])
    assert len(decay["params"]) == 4  # the tied weight once
    norms = [model.bn, model.gn, model.ln, model.bn1d]
    assert ids(no_decay["params"]) == ids([p for m in norms for p in (m.weight, m.bias)])
    assert all(g["lr"] == 0.02 and g["momentum"] == 0.9 for g in optimizer.param_groups)


def test_resnet18_groups_by_hand():
    """torchvision's ResNet-18: 20 BatchNorms (stem, 16 in the blocks, 3 in the shortcuts), two
    tensors each, undecayed; 20 convolutions and the classifier's weight and bias decayed."""
    model = torchvision.models.resnet18()
    decay, no_decay = build_optimizer(model, solver()).param_groups
    assert len(no_decay["params"]) == 40 and len(decay["params"]) == 22
    norm_names = {name for name, _ in model.named_parameters() if ".bn" in name or name.startswith("bn1")
                  or ".downsample.1." in name}
    named = dict(model.named_parameters())
    assert ids(no_decay["params"]) == ids(named[name] for name in norm_names)


def test_one_sgd_step_by_hand():
    """Plain SGD's first step (the momentum buffer is the gradient): p - lr * (g + wd * p), without
    the wd term for a norm's parameters."""
    model = Mixed()
    optimizer = build_optimizer(model, solver(base_lr=0.5, weight_decay=0.1))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    optimizer.step()
    torch.testing.assert_close(model.fc.bias, before["fc.bias"] - 0.5 * (0.25 + 0.1 * before["fc.bias"]))
    torch.testing.assert_close(model.bn.weight, before["bn.weight"] - 0.5 * 0.25)
    assert torch.equal(model.frozen.weight, before["frozen.weight"])


def test_one_adamw_step_by_hand():
    """AdamW's first step: the decoupled decay p * (1 - lr * wd), then lr * g / (|g| + eps) for a
    constant gradient; norms undecayed."""
    model = Mixed()
    optimizer = build_optimizer(model, solver(optimizer="adamw", base_lr=0.01, weight_decay=0.5))
    assert isinstance(optimizer, torch.optim.AdamW)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.full_like(p, -2.0)
    optimizer.step()
    step = 0.01 * -2.0 / (2.0 + 1e-8)
    torch.testing.assert_close(model.conv.weight, before["conv.weight"] * (1 - 0.01 * 0.5) - step)
    torch.testing.assert_close(model.gn.bias, before["gn.bias"] - step)


@pytest.mark.parametrize("iteration, factor", [
    (0, 0.001),            # the warm-up starts at warmup_factor
    (500, 0.5005),         # half way: 0.001 * 0.5 + 0.5
    (999, 0.999001),       # 0.001 / 1000 + 0.999
    (1000, 1.0),           # warm-up done
    (2999, 1.0),
    (3000, 0.1),           # first step: gamma
    (3999, 0.1),
    (4000, 0.01),          # second step: gamma^2
    (10**7, 0.01),
])
def test_warmup_then_steps_by_hand(iteration, factor):
    assert lr_factor(iteration, [3000, 4000], 0.1, 1000, 0.001) == pytest.approx(factor, rel=1e-12)


def test_a_step_inside_the_warmup_multiplies_it():
    # at 10: gamma (0.1) times the warm-up factor 0.5 * (1 - 0.5) + 0.5 = 0.75
    assert lr_factor(10, [10], 0.1, 20, 0.5) == pytest.approx(0.075, rel=1e-12)
    assert lr_factor(0, [], 0.1, 0, 0.5) == 1.0  # no warm-up: no division by zero


def test_scheduler_sets_every_groups_lr_and_sorts_the_steps():
    model = Mixed()
    config = solver(base_lr=0.2, steps=[8, 4], warmup_iters=4, warmup_factor=0.25)
    optimizer = build_optimizer(model, config)
    scheduler = build_scheduler(optimizer, config)
    seen = []
    for _ in range(10):
        seen.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    # warm-up 0.25 -> 1 over 4 iterations; x0.1 from iteration 4, x0.01 from 8 (steps sorted)
    expected = [0.2 * f for f in (0.25, 0.4375, 0.625, 0.8125, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01)]
    assert [lrs[0] for lrs in seen] == pytest.approx(expected, rel=1e-12)
    assert all(lrs[0] == lrs[1] for lrs in seen)


def test_scheduler_state_is_the_position_and_the_function_comes_from_the_config():
    """A resumed run's scheduler is built from the current config and takes only the position from
    the checkpoint: the schedule it then follows is the current config's."""
    config = solver(steps=[10], warmup_iters=0)
    optimizer = build_optimizer(Mixed(), config)
    scheduler = build_scheduler(optimizer, config)
    for _ in range(5):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 5 and state["lr_lambdas"] == [None, None]
    changed = solver(steps=[3], warmup_iters=0, gamma=0.5)
    resumed = build_scheduler(build_optimizer(Mixed(), changed), changed)
    resumed.load_state_dict(state)
    assert resumed.last_epoch == 5
    assert resumed.lr_lambdas[0](resumed.last_epoch) == 0.5  # past the changed config's step at 3


# --------------------------------------------------------------------------------------------- the metric warm-up

# A scripted training metric, one value per iteration, and its means over windows of 3 by hand:
#   iteration  0    1    2    3      4      5   6    7      8
#   value      70   70   100  90     85     80  75   60     99
#   mean       -    -    80   86.67  91.67  85  80   71.67
# Iterations 0 and 1 are below 80 but their window is not full; 2 and 6 are at 80, not below; 7 is the
# first full window below 80, so the schedule's rate applies from iteration 8 on, whatever comes next.
SCRIPTED = [70, 70, 100, 90, 85, 80, 75, 60, 99, 99, 99, 99]
SWITCH = 8


def warmup_solver(**changes):
    until = MetricWarmupConfig(metric="train_error", below=80, lr_factor=0.1, window=3)
    return solver(**{"warmup_until": until, "base_lr": 0.1, "steps": [10], "warmup_iters": 0, **changes})


def test_the_metric_warmup_ends_after_the_first_full_window_below_the_threshold():
    warmup = MetricWarmup("train_error", below=80, lr_factor=0.1, window=3)
    factors, ended = [], []
    for iteration, value in enumerate(SCRIPTED):
        factors.append(warmup.factor())
        ended.append(warmup.observe(iteration, value))
    assert factors == [0.1] * SWITCH + [1.0] * (len(SCRIPTED) - SWITCH)
    assert ended.index(True) == SWITCH - 1 and ended.count(True) == 1
    assert warmup.ended_at == SWITCH and not warmup.active
    assert warmup.mean() == pytest.approx((80 + 75 + 60) / 3)  # the window that ended it, kept for the log


def test_the_metric_warmup_state_round_trip():
    """A warm-up stopped after iteration 5 and rebuilt from its state ends at the same iteration; one that
    lost its recent values would need a new full window and end later."""
    first = MetricWarmup("train_error", below=80, lr_factor=0.1, window=3)
    for iteration, value in enumerate(SCRIPTED[:6]):
        first.observe(iteration, value)
    state = first.state_dict()
    assert state == {"recent": [90.0, 85.0, 80.0], "ended_at": None}
    resumed, forgetful = (MetricWarmup("train_error", below=80, lr_factor=0.1, window=3) for _ in range(2))
    resumed.load_state_dict(state)
    forgetful.load_state_dict(None)  # a checkpoint of a run without the warm-up: it starts now
    for iteration, value in enumerate(SCRIPTED[6:], start=6):
        resumed.observe(iteration, value)
        forgetful.observe(iteration, value)
    assert resumed.ended_at == SWITCH
    assert forgetful.ended_at == SWITCH + 1  # its first full window is (75, 60, 99), at iteration 8
    finished = MetricWarmup("train_error", below=80, lr_factor=0.1, window=3)
    finished.load_state_dict(resumed.state_dict())
    assert finished.factor() == 1.0 and not finished.observe(20, 100.0)  # an ended warm-up stays ended


def scheduled_lrs(scheduler, optimizer, iterations, start=0):
    """The learning rate of each iteration, the scripted metric observed as the trainer does (after the
    optimizer's step, before the scheduler's)."""
    seen = []
    for iteration in range(start, start + iterations):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.metric_warmup.observe(iteration, SCRIPTED[iteration])
        scheduler.step()
    return seen


def test_the_schedule_with_a_metric_warmup_by_hand():
    """lr 0.1 x 0.1 until the switch, 0.1 from iteration 8, 0.01 from the step at 10; a linear warm-up over
    the first 2 iterations (factor 0.5) multiplies the metric warm-up's factor."""
    config = warmup_solver(warmup_iters=2, warmup_factor=0.5)
    optimizer = build_optimizer(Mixed(), config)
    lrs = scheduled_lrs(build_scheduler(optimizer, config), optimizer, 12)
    expected = [0.1 * 0.1 * 0.5, 0.1 * 0.1 * 0.75] + [0.01] * 6 + [0.1] * 2 + [0.01] * 2
    assert lrs == pytest.approx(expected, rel=1e-12)


def test_the_schedule_state_keeps_the_warmups_progress():
    config = warmup_solver()
    optimizer = build_optimizer(Mixed(), config)
    scheduler = build_scheduler(optimizer, config)
    uninterrupted = scheduled_lrs(scheduler, optimizer, 12)

    optimizer = build_optimizer(Mixed(), config)
    scheduler = build_scheduler(optimizer, config)
    before = scheduled_lrs(scheduler, optimizer, 6)
    state = scheduler.state_dict()
    assert state["metric_warmup"] == {"recent": [90.0, 85.0, 80.0], "ended_at": None} and state["last_epoch"] == 6
    optimizer = build_optimizer(Mixed(), config)
    resumed = build_scheduler(optimizer, config)
    load_scheduler_state(resumed, optimizer, state)
    assert before + scheduled_lrs(resumed, optimizer, 6, start=6) == uninterrupted

    without = dict(state)
    del without["metric_warmup"]  # saved by a run that had no such warm-up
    plain = build_scheduler(build_optimizer(Mixed(), config), config)
    plain.load_state_dict(without)
    assert plain.metric_warmup.active and plain.metric_warmup.recent == []


@pytest.mark.parametrize("until, message", [
    (MetricWarmupConfig(metric="train_error"),
     "solver.warmup_until.metric=train_error needs solver.warmup_until.below, the value under which the warm-up "
     "ends (e.g. solver.warmup_until.below=80 for an error in percent)"),
    (MetricWarmupConfig(below=80),
     "solver.warmup_until.below=80 needs solver.warmup_until.metric, the training metric it is compared with "
     "(e.g. solver.warmup_until.metric=train_error)"),
])
def test_a_metric_warmup_needs_both_its_metric_and_its_threshold(until, message):
    with pytest.raises(ConfigError) as error:
        check_solver_options(solver(warmup_until=until))
    assert str(error.value) == message
    check_solver_options(solver(warmup_until=MetricWarmupConfig(metric="train_error", below=80)))
    check_solver_options(solver())  # none at all



def test_a_train_error_threshold_given_as_a_fraction_is_refused():
    """train_error is in percent: below=0.8 would never be reached, the whole run at lr_factor."""
    with pytest.raises(ConfigError) as error:
        check_solver_options(solver(warmup_until=MetricWarmupConfig(metric="train_error", below=0.8)))
    assert str(error.value) == ("solver.warmup_until.below=0.8: train_error is in percent (0 to 100), so the warm-up "
                                "would never end; give e.g. solver.warmup_until.below=80")


def test_steps_at_or_past_the_end_of_the_run_are_said():
    assert steps_beyond_the_run(solver(max_iter=64000, steps=[32000, 48000])) is None
    assert steps_beyond_the_run(solver(max_iter=30000, steps=[32000, 48000])) == (
        "solver.steps=[32000, 48000]: 32000, 48000 lie at or past solver.max_iter=30000, so the learning rate is never "
        "divided; scale the steps with max_iter if the run was shortened")
    assert steps_beyond_the_run(solver(max_iter=40000, steps=[32000, 48000])) == (
        "solver.steps=[32000, 48000]: 48000 lies at or past solver.max_iter=40000, so the learning rate is not "
        "divided there; scale the steps with max_iter if the run was shortened")
