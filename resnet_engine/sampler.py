"""Deterministic, resumable, sharded batch sampling with aspect-ratio grouping.

The sequence of global batches is a pure function of (seed, epoch): each epoch shuffles the
images, groups them by orientation (landscape / portrait) so that padding wastes little, cuts the
groups into global batches (``batch_size * world_size`` images), and shuffles the batches. At
global step ``s`` process ``r`` takes the ``r``-th slice of global batch ``s``: the images of a step
do not depend on the number of processes, and resuming at step ``s`` needs nothing but ``s``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def _sample_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The augmentation seed of an image's ``repeat``-th extra appearance in an epoch (the images that top
    up its last batch appear twice): a view of its own, not a copy of the first."""
    entropy = [seed, epoch, index] if repeat == 0 else [seed, epoch, index, repeat]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0] % (2**31))


class GroupedBatchSampler(torch.utils.data.Sampler):
    """Yields lists of ``(index, augmentation seed)`` for this process, forever.

    Args:
        aspect_ratios: width / height per image (None disables grouping).
        batch_size: images per batch on this process.
        seed: the run's seed.
        rank, world_size: this process and the number of processes.
        start_step: the global step to start from (resume).
    """

    def __init__(self, aspect_ratios, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 start_step: int = 0, group_by_aspect: bool = True):
        self.num_images = len(aspect_ratios)
        self.groups = (np.asarray(aspect_ratios) >= 1.0).astype(np.int64) if group_by_aspect else None
        self.batch_size = batch_size
        self.global_batch_size = batch_size * world_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_step = start_step
        if self.num_images == 0:
            raise ValueError("cannot sample from an empty dataset")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.num_images)
        if self.groups is None:
            chunks = [order]
        else:
            chunks = [order[self.groups[order] == g] for g in (0, 1)]
        batches, leftovers = [], []
        size = self.global_batch_size
        for chunk in chunks:
            full = len(chunk) // size * size
            batches += [chunk[i:i + size].tolist() for i in range(0, full, size)]
            leftovers += chunk[full:].tolist()
        # Leftovers of both groups form mixed batches; the last short one is topped up from the start.
        while leftovers:
            batch = leftovers[:size]
            leftovers = leftovers[size:]
            if len(batch) < size:
                batch += (order.tolist() * size)[: size - len(batch)]
            batches.append(batch)
        return [batches[i] for i in rng.permutation(len(batches))]

    def steps_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_batches(epoch))

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch, step = 0, 0
        # Skip whole epochs quickly when resuming.
        while True:
            batches = self.epoch_batches(epoch)
            per_epoch = len(batches)
            if step + per_epoch <= self.start_step:
                step += per_epoch
                epoch += 1
                continue
            seen = np.zeros(self.num_images, dtype=np.int64)  # appearances so far this epoch
            for global_batch in batches:
                repeats = []
                for index in global_batch:
                    repeats.append(int(seen[index]))
                    seen[index] += 1
                if step >= self.start_step:
                    share = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
                    yield [(index, _sample_seed(self.seed, epoch, index, repeat))
                           for index, repeat in zip(global_batch[share], repeats[share])]
                step += 1
            epoch += 1

    def __len__(self) -> int:  # an infinite stream; DataLoader only needs a number
        return 2**62
