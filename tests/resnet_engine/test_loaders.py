"""The loaders every task shares: each process's share of a test set, and training batches that group
images by orientation and resume mid-epoch."""

import itertools

import pytest
import torch

from resnet_engine import loaders


class Indexed(torch.utils.data.Dataset):
    """Samples that say which image they are; items come as (index, seed) from the training sampler."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, item):
        return {"index": item[0] if isinstance(item, tuple) else item}


def indices(batches) -> list[list[int]]:
    return [[sample["index"] for sample in batch] for batch in batches]


@pytest.mark.parametrize("rank, expected", [(0, [[0, 3], [6]]), (1, [[1, 4]]), (2, [[2, 5]])])
def test_each_process_tests_every_world_size_th_image(monkeypatch, rank, expected):
    monkeypatch.setattr(loaders, "get_rank", lambda: rank)
    monkeypatch.setattr(loaders, "get_world_size", lambda: 3)
    assert indices(loaders.build_test_loader(Indexed(7), batch_size=2, num_workers=0)) == expected


def test_training_batches_hold_one_orientation_and_cover_an_epoch_once():
    ratios = [0.5, 0.5, 0.5, 0.5, 2.0, 2.0, 2.0, 2.0]  # images 0-3 tall, 4-7 wide

    def one_orientation(batches) -> bool:
        return all(set(batch) <= {0, 1, 2, 3} or set(batch) <= {4, 5, 6, 7} for batch in batches)

    grouped = indices(itertools.islice(loaders.build_train_loader(Indexed(8), images_per_process=2, seed=0,
                                                                  num_workers=0, aspect_ratios=ratios), 4))
    assert one_orientation(grouped)
    assert sorted(i for batch in grouped for i in batch) == list(range(8))
    # The same seed without the ratios mixes them: the grouping, not chance, kept them apart.
    mixed = indices(itertools.islice(loaders.build_train_loader(Indexed(8), 2, seed=0, num_workers=0), 4))
    assert not one_orientation(mixed)


def test_training_batches_resume_at_their_step():
    def first_batches(start: int, count: int) -> list[list[int]]:
        loader = loaders.build_train_loader(Indexed(5), images_per_process=2, seed=7, num_workers=0,
                                            start_step=start)
        return indices(itertools.islice(loader, count))

    assert first_batches(3, 4) == first_batches(0, 7)[3:]
    assert len({i for batch in first_batches(0, 2) for i in batch}) == 4  # an epoch is a permutation
