"""A toy training job for the engine's tests: a linear regression whose forward can misbehave at a
chosen iteration, its batches, and a Trainer around it."""

import math

import torch
from torch import nn

from resnet_engine.optim import build_optimizer, build_scheduler
from resnet_engine.schema import SolverConfig
from resnet_engine.trainer import Trainer


class ToyModel(nn.Module):
    """A linear regression whose forward can misbehave at a chosen iteration."""

    def __init__(self, on_forward=None, inputs: int = 2):
        super().__init__()
        self.linear = nn.Linear(inputs, 1)  # another width makes another model, for resume checks
        self.calls = 0
        self.on_forward = on_forward

    def forward(self, batch):
        if self.on_forward is not None:
            self.on_forward(self.calls)
        self.calls += 1
        x = torch.stack([sample["x"] for sample in batch])
        loss = ((self.linear(x).squeeze(1) - x.sum(1)) ** 2).mean()
        return {"loss": loss * batch[0].get("scale", 1.0)}


def toy_batches(start: int, nan_at: tuple[int, ...] = ()):
    generator = torch.Generator().manual_seed(start)
    iteration = start
    while True:
        scale = math.nan if iteration in nan_at else 1.0
        yield [{"x": torch.randn(2, generator=generator), "scale": scale} for _ in range(4)]
        iteration += 1


def make_trainer(model, out_dir, make_loader=toy_batches, evaluate=None, config_text="", logging_cfg=None,
                 **solver_keys):
    """A Trainer of ``model`` with the engine's own optimizer and schedule builders."""
    keys = {"max_iter": 6, "ims_per_batch": 4, "base_lr": 0.01, "warmup_iters": 0, "steps": [100],
            "checkpoint_period": 0, "log_period": 2, **solver_keys}
    solver = SolverConfig(**keys)
    optimizer = build_optimizer(model, solver)
    scheduler = build_scheduler(optimizer, solver)
    return Trainer(model, optimizer, scheduler, solver, str(out_dir), make_loader, torch.device("cpu"),
                   evaluate=evaluate, eval_period=1 if evaluate else 0, primary_metric="m/score",
                   config_text=config_text, logging_cfg=logging_cfg)
