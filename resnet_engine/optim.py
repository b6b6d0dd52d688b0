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


def build_scheduler(optimizer: torch.optim.Optimizer, solver) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR whose function comes from the config, so that a resumed run follows the current config.

    Its saved state is only the iteration counter: resuming restores the position on the schedule.
    """
    steps = sorted(int(s) for s in solver.steps)
    gamma, warmup_iters, warmup_factor = solver.gamma, solver.warmup_iters, solver.warmup_factor

    def schedule(iteration: int) -> float:
        return lr_factor(iteration, steps, gamma, warmup_iters, warmup_factor)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
