"""The data loaders of every task: infinite, resumable, sharded training batches, and each process's share
of a test set. A batch is the list of its samples (dicts): images of different sizes are batched by the
models themselves."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .distributed import get_rank, get_world_size
from .sampler import GroupedBatchSampler


def collate_list(batch: list[dict]) -> list[dict]:
    return batch


def loader_options(num_workers: int, persistent: bool) -> dict:
    return {"collate_fn": collate_list, **worker_options(num_workers, persistent)}


def worker_options(num_workers: int, persistent: bool) -> dict:
    """The DataLoader options of the worker processes, shared by every loader of the toolkit."""
    options = {"num_workers": num_workers, "pin_memory": False}
    if num_workers > 0:
        # A hung worker becomes an error instead of a silent stall.
        options.update(persistent_workers=persistent, prefetch_factor=2, timeout=600)
    return options


def build_train_loader(dataset, images_per_process: int, seed: int, num_workers: int, start_step: int = 0,
                       aspect_ratios: Sequence[float] | None = None) -> torch.utils.data.DataLoader:
    """Infinite, resumable batches of this process's share of the training set; with ``aspect_ratios``
    (one per image) each batch holds images of one orientation, wide or tall."""
    grouped = aspect_ratios is not None
    sampler = GroupedBatchSampler(list(aspect_ratios) if grouped else [1.0] * len(dataset), images_per_process, seed,
                                  rank=get_rank(), world_size=get_world_size(), start_step=start_step,
                                  group_by_aspect=grouped)
    # A private generator keeps the loader from drawing on the global RNG (exact resume).
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, generator=torch.Generator(),
                                       **loader_options(num_workers, persistent=True))


def build_test_loader(dataset, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """This process's share of the test set: every world_size-th image."""
    indices = list(range(get_rank(), len(dataset), get_world_size()))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, **loader_options(num_workers, persistent=False))
