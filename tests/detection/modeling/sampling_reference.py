"""A per-image reference of the balanced sampling rule, in the form of torchvision's fg_bg_sampler.

Our detector samples each image's positives and negatives as those with the highest random
priorities, one uniform draw per candidate from the image's generator. This sampler picks the same
sets one image at a time by sorting in Python, from priorities drawn independently with the same
seeds, so that torchvision's RPN and RoI heads compute their losses on exactly the samples ours drew.
"""

import torch


def seeded_targets(targets, seeds):
    """``targets`` with a fresh per-image sampling generator seeded by ``seeds``."""
    return [{**target, "generator": torch.Generator().manual_seed(seed)} for target, seed in zip(targets, seeds)]


class PrioritySampler:
    """torchvision's BalancedPositiveNegativeSampler interface: per-image label rows (1 foreground,
    0 background, -1 ignored) -> per-image masks of the sampled positives and negatives."""

    def __init__(self, seeds, batch_size_per_image, positive_fraction):
        self.seeds = seeds
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction
        self.drawn = []  # per image: (positives, negatives) candidate indices

    def __call__(self, matched_labels):
        positive_masks, negative_masks = [], []
        for labels, seed, width in zip(matched_labels, self.seeds, self.row_widths(matched_labels)):
            priorities = torch.rand(width, generator=torch.Generator().manual_seed(seed))[: len(labels)].tolist()
            by_priority = sorted(range(len(labels)), key=lambda i: -priorities[i])
            positives = [i for i in by_priority if labels[i] >= 1][: int(self.batch_size_per_image * self.positive_fraction)]
            negatives = [i for i in by_priority if labels[i] == 0][: self.batch_size_per_image - len(positives)]
            self.drawn.append((positives, negatives))
            positive_masks.append(self.mask(positives, len(labels)))
            negative_masks.append(self.mask(negatives, len(labels)))
        return positive_masks, negative_masks

    @staticmethod
    def row_widths(matched_labels):
        """How many priorities each image drew: one per candidate slot of the padded batch, i.e. the
        largest candidate count of the batch (its rows are drawn at that width)."""
        width = max(len(labels) for labels in matched_labels)
        return [width] * len(matched_labels)

    @staticmethod
    def mask(indices, count):
        mask = torch.zeros(count, dtype=torch.uint8)
        mask[indices] = 1
        return mask
