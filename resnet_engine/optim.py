"""Optimizer and learning-rate schedule from the ``solver`` config section."""

from __future__ import annotations

from bisect import bisect_right

import torch
from torch import nn

NORM_TYPES = (nn.BatchNorm2d, nn.SyncBatchNorm, nn.GroupNorm, nn.LayerNorm, nn.BatchNorm1d)


def build_optimizer(model: nn.Module, solver) -> torch.optim.Optimizer:
    """SGD with momentum (or AdamW); normalization parameters get no weight decay."""
    decay, no_decay = [], []
    seen = set()
    for module in model.modules():
        for param in module.parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            (no_decay if isinstance(module, NORM_TYPES) else decay).append(param)
    groups = [{"params": decay, "weight_decay": solver.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    if solver.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=solver.base_lr)
    return torch.optim.SGD(groups, lr=solver.base_lr, momentum=solver.momentum)


def lr_factor(iteration: int, steps, gamma: float, warmup_iters: int, warmup_factor: float) -> float:
    """Linear warm-up, then a step decay at absolute iteration numbers."""
    factor = gamma ** bisect_right(list(steps), iteration)
    if iteration < warmup_iters:
        alpha = iteration / warmup_iters
        factor *= warmup_factor * (1 - alpha) + alpha
    return factor


class MetricWarmup:
    """Holds the learning rate at ``lr_factor`` times the schedule's until the mean of a training metric
    over the last ``window`` iterations falls below ``below``; from the next iteration on, the schedule
    alone applies (solver.warmup_until). Only a full window ends it."""

    def __init__(self, metric: str, below: float, lr_factor: float, window: int):
        self.metric, self.below, self.lr_factor, self.window = metric, float(below), float(lr_factor), int(window)
        self.recent: list[float] = []  # the metric of the last ``window`` iterations, oldest first
        self.ended_at: int | None = None  # the first iteration at the schedule's learning rate

    @property
    def active(self) -> bool:
        return self.ended_at is None

    def factor(self) -> float:
        return self.lr_factor if self.active else 1.0

    def observe(self, iteration: int, value: float) -> bool:
        """Take the metric of ``iteration``; True when that ends the warm-up (after ``iteration``)."""
        if not self.active:
            return False
        self.recent = (self.recent + [float(value)])[-self.window:]
        if len(self.recent) == self.window and self.mean() < self.below:
            self.ended_at = iteration + 1
            return True
        return False

    def mean(self) -> float:
        return sum(self.recent) / max(len(self.recent), 1)

    def state_dict(self) -> dict:
        return {"recent": list(self.recent), "ended_at": self.ended_at}

    def load_state_dict(self, state: dict | None) -> None:
        """A checkpoint's progress; none (a checkpoint of a run without this warm-up): it starts now."""
        state = state or {}
        self.recent = [float(v) for v in state.get("recent", [])][-self.window:]
        self.ended_at = state.get("ended_at")


class StepSchedule(torch.optim.lr_scheduler.LambdaLR):
    """The solver's schedule: a linear warm-up, steps at absolute iterations, and the warm-up until a
    training metric falls below a threshold (``metric_warmup``, None when not configured).

    The factor comes from the config, so that a resumed run follows the current config; the saved state
    is the position on the schedule and the metric warm-up's progress (ended or not, its recent values),
    so that a resumed run switches at the iteration an uninterrupted one would."""

    def __init__(self, optimizer: torch.optim.Optimizer, solver):
        steps = sorted(int(s) for s in solver.steps)
        gamma, warmup_iters, warmup_factor = solver.gamma, solver.warmup_iters, solver.warmup_factor
        until = solver.warmup_until
        self.metric_warmup = (MetricWarmup(until.metric, until.below, until.lr_factor, until.window)
                              if until.metric else None)

        def schedule(iteration: int) -> float:
            factor = lr_factor(iteration, steps, gamma, warmup_iters, warmup_factor)
            return factor * (self.metric_warmup.factor() if self.metric_warmup is not None else 1.0)

        super().__init__(optimizer, schedule)

    def state_dict(self) -> dict:
        state = super().state_dict()
        state["metric_warmup"] = self.metric_warmup.state_dict() if self.metric_warmup is not None else None
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state = dict(state_dict)
        warmup_state = state.pop("metric_warmup", None)
        super().load_state_dict(state)
        if self.metric_warmup is not None:
            self.metric_warmup.load_state_dict(warmup_state)


def build_scheduler(optimizer: torch.optim.Optimizer, solver) -> StepSchedule:
    """The schedule of the ``solver`` section (see :class:`StepSchedule`)."""
    return StepSchedule(optimizer, solver)
