"""resnet_engine/sampler.py: an image that tops up an epoch's last batch is a second view of it, not a copy."""

import itertools

from resnet_engine.sampler import GroupedBatchSampler, _sample_seed


def first_epoch(sampler: GroupedBatchSampler, steps: int) -> list[tuple[int, int]]:
    return [pair for batch in itertools.islice(iter(sampler), steps) for pair in batch]


def test_the_images_that_top_up_an_epoch_get_views_of_their_own():
    """10 images in global batches of 4: 3 batches, the last topped up with 2 images seen before."""
    sampler = GroupedBatchSampler([1.0] * 10, batch_size=4, seed=3, group_by_aspect=False)
    assert sampler.steps_per_epoch(0) == 3
    pairs = first_epoch(sampler, 3)
    indices = [index for index, _ in pairs]
    assert sorted(set(indices)) == list(range(10)) and len(indices) == 12
    assert len(set(pairs)) == 12  # the two repeated images have other seeds the second time
    firsts = {}
    for index, seed in pairs:
        firsts.setdefault(index, seed)
    assert firsts == {index: _sample_seed(3, 0, index) for index in range(10)}  # first views as before


def test_the_repeated_views_are_the_same_on_resume_and_whatever_the_number_of_processes():
    whole = first_epoch(GroupedBatchSampler([1.0] * 10, batch_size=4, seed=3, group_by_aspect=False), 6)
    resumed = first_epoch(GroupedBatchSampler([1.0] * 10, batch_size=4, seed=3, group_by_aspect=False,
                                              start_step=2), 4)
    assert resumed == whole[8:]
    shards = [first_epoch(GroupedBatchSampler([1.0] * 10, batch_size=2, seed=3, rank=rank, world_size=2,
                                              group_by_aspect=False), 6) for rank in (0, 1)]
    merged = [pair for step in range(6) for rank in (0, 1) for pair in shards[rank][2 * step:2 * step + 2]]
    assert merged == whole
