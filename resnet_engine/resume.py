"""Continuing a run from its checkpoint: what must match the current config, and what the current
config decides.

The model and the optimizer's kind and parameter groups must be those of the checkpoint; a change
there stops with one line naming what differs (and the config keys that changed). Everything else
comes from the current config: the learning rate, weight decay and momentum are the config's, and
the schedule continues from the checkpoint's iteration with the config's base LR, steps and warm-up,
so that "lower solver.base_lr and resume" does what it says.

The number of processes may change between the runs (``torchrun --nproc_per_node`` or ``--nnodes``):
solver.ims_per_batch is the global batch and the sampler's batches are a function of the global step,
so the batches, the schedule and the weights continue as in an uninterrupted run.

torchrun ``--max-restarts`` starts the workers again after one of them died; a restarted training run
continues from the last checkpoint of its output_dir without ``--resume`` (:func:`elastic_restart_count`).
"""

from __future__ import annotations

import os

import torch

from .checkpoint import CheckpointError
from .config import config_differences

RESUME_FIX = "resume with the run's own config (its config.yaml), or start the new setting in another output_dir"


def elastic_restart_count() -> int:
    """How many times torchrun has restarted this run's workers (0: the first attempt, or no torchrun)."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)


def world_size_change_note(saved_world: int, world: int, ims_per_batch: int, iteration: int) -> str:
    """The log line of a resume by another number of processes: what changed and what was kept."""
    return (f"the checkpoint was written by {saved_world} process(es), this run has {world}: kept the global "
            f"batch (solver.ims_per_batch={ims_per_batch}, now {ims_per_batch // max(world, 1)} per process), "
            f"the schedule at iteration {iteration} and the data order (the batches are a function of the "
            f"global step); per-process BatchNorm statistics now come from the new per-process batches")


def changed_keys(saved_config: str, current_config: str, section: str | None = None) -> list[str]:
    changes = config_differences(saved_config, current_config) if saved_config and current_config else []
    return [c for c in changes if section is None or c.startswith(section + ".")]


def _examples(changes: list[str], limit: int = 3) -> str:
    shown = ", ".join(changes[:limit])
    return shown + (f" and {len(changes) - limit} more" if len(changes) > limit else "")


def check_fixed_keys_kept(changes: list[str], fixed: dict[str, str], path: str) -> None:
    """Refuse a resume that changes a key of ``fixed`` ({key: why it must stay}); ``changes`` are
    changed_keys' "key: old -> new" lines."""
    for change in changes:
        key = change.split(":", 1)[0]
        if key in fixed:
            raise CheckpointError(f"cannot resume from {path} with {change}: {fixed[key]}; {RESUME_FIX}")


def check_model_fits(model: torch.nn.Module, saved: dict, path: str, changes: list[str]) -> None:
    current = model.state_dict()
    missing = [k for k in current if k not in saved]
    unexpected = [k for k in saved if k not in current]
    reshaped = [k for k in current if k in saved and tuple(saved[k].shape) != tuple(current[k].shape)]
    if not (missing or unexpected or reshaped):
        return
    counts = ", ".join(f"{n} {what}" for n, what in ((len(missing), "missing"), (len(unexpected), "unexpected"),
                                                      (len(reshaped), "of another shape")) if n)
    if reshaped:
        key = reshaped[0]
        example = f"{key} is {list(saved[key].shape)} there, {list(current[key].shape)} here"
    else:
        example = f"{(missing or unexpected)[0]} is {'missing' if missing else 'unexpected'}"
    changed = f"; the config changed {_examples(changes)}" if changes else ""
    raise CheckpointError(f"cannot resume from {path}: its model differs from this config's (parameters: "
                          f"{counts}; e.g. {example}){changed}: {RESUME_FIX}")


def _optimizer_kind(settings: set[str]) -> str:
    if "betas" in settings:
        return "an Adam-type optimizer"
    if "momentum" in settings:
        return "SGD"
    return "an optimizer with " + ", ".join(sorted(settings))


def check_optimizer_fits(optimizer: torch.optim.Optimizer, saved: dict, path: str, changes: list[str]) -> None:
    saved_groups, groups = saved.get("param_groups", []), optimizer.param_groups
    saved_settings = set().union(*(set(g) - {"params"} for g in saved_groups)) if saved_groups else set()
    settings = set().union(*(set(g) - {"params"} for g in groups))
    changed = f"; the config changed {_examples(changes)}" if changes else ""
    # The kind, not the exact keys: PyTorch versions add settings (foreach, fused, ...).
    if _optimizer_kind(saved_settings) != _optimizer_kind(settings):
        raise CheckpointError(f"cannot resume from {path}: it holds the state of {_optimizer_kind(saved_settings)}, "
                              f"this config trains with {_optimizer_kind(settings)}{changed}: {RESUME_FIX}")
    saved_sizes = [len(g["params"]) for g in saved_groups]
    sizes = [len(g["params"]) for g in groups]
    if saved_sizes != sizes:
        raise CheckpointError(f"cannot resume from {path}: its optimizer has parameter groups of {saved_sizes} "
                              f"parameters, this config's has {sizes} (which parameters train changed){changed}: "
                              f"{RESUME_FIX}")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """The checkpoint's per-parameter state (momentum buffers, moments), the current settings."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, current in zip(optimizer.param_groups, settings):
        group.update(current)


def load_scheduler_state(scheduler, optimizer: torch.optim.Optimizer, saved: dict) -> None:
    """The checkpoint's position on the schedule, the current config's base learning rates."""
    base_lrs = list(scheduler.base_lrs)
    scheduler.load_state_dict(saved)
    scheduler.base_lrs = base_lrs
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for group, base, factor in zip(optimizer.param_groups, base_lrs, scheduler.lr_lambdas):
            group["lr"] = base * factor(scheduler.last_epoch)
