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


class WholeBatches(torch.utils.data.Dataset):
    """A dataset served by whole batches: ``dataset.batch(indices)`` builds each in one vectorized call,
    in the worker (CIFAR's arrays), where a sample-by-sample dataset is collated into a list."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices):
        return self.dataset.batch(indices)


def batch_loader(dataset, batches, num_workers: int, persistent: bool, whole_batches: bool = False,
                 generator: torch.Generator | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader of ``batches`` (a batch sampler, or lists of indices): each batch as a list of
    samples, or with ``whole_batches`` as what ``dataset.batch`` builds (:class:`WholeBatches`)."""
    if whole_batches:  # batch_size=None: the sampler's items are whole batches, built by the dataset
        return torch.utils.data.DataLoader(WholeBatches(dataset), sampler=batches, batch_size=None,
                                           collate_fn=collate_list, generator=generator,
                                           **worker_options(num_workers, persistent))
    return torch.utils.data.DataLoader(dataset, batch_sampler=batches, collate_fn=collate_list, generator=generator,
                                       **worker_options(num_workers, persistent))


def worker_options(num_workers: int, persistent: bool) -> dict:
    """The DataLoader options of the worker processes, shared by every loader of the toolkit."""
    options = {"num_workers": num_workers, "pin_memory": False}
    if num_workers > 0:
        # A hung worker becomes an error instead of a silent stall.
        options.update(persistent_workers=persistent, prefetch_factor=2, timeout=600)
    return options


def build_train_loader(dataset, images_per_process: int, seed: int, num_workers: int, start_step: int = 0,
                       aspect_ratios: Sequence[float] | None = None,
                       whole_batches: bool = False) -> torch.utils.data.DataLoader:
    """Infinite, resumable batches of this process's share of the training set (from ``start_step`` on,
    the batches a run from step 0 would have had there, whatever the number of workers); with
    ``aspect_ratios`` (one per image) each batch holds images of one orientation, wide or tall;
    ``whole_batches``: see :func:`batch_loader`."""
    grouped = aspect_ratios is not None
    sampler = GroupedBatchSampler(list(aspect_ratios) if grouped else [1.0] * len(dataset), images_per_process, seed,
                                  rank=get_rank(), world_size=get_world_size(), start_step=start_step,
                                  group_by_aspect=grouped)
    # A private generator keeps the loader from drawing on the global RNG (exact resume).
    return batch_loader(dataset, sampler, num_workers, persistent=True, whole_batches=whole_batches,
                        generator=torch.Generator())


def build_test_loader(dataset, batch_size: int, num_workers: int,
                      whole_batches: bool = False) -> torch.utils.data.DataLoader:
    """This process's share of the test set: every world_size-th image, in order, in batches."""
    indices = list(range(get_rank(), len(dataset), get_world_size()))
    batches = [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    return batch_loader(dataset, batches, num_workers, persistent=False, whole_batches=whole_batches)
