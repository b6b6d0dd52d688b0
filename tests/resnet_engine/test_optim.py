"""The optimizer's parameter groups and one update of each kind by hand; the learning-rate schedule
(linear warm-up, then steps) at hand-computed iterations, through the LambdaLR the trainer steps."""

from types import SimpleNamespace

import pytest
import torch
import torchvision
from torch import nn

from resnet_engine.optim import build_optimizer, build_scheduler, lr_factor
from resnet_engine.schema import MetricWarmupConfig


def solver(**changes):
    values = {"optimizer": "sgd", "base_lr": 0.02, "momentum": 0.9, "weight_decay": 1e-4, "steps": [3000, 4000],
              "gamma": 0.1, "warmup_iters": 1000, "warmup_factor": 0.001, "warmup_until": MetricWarmupConfig()}
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
