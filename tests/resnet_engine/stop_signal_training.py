"""A toy training run whose batches come from worker processes, slowly, until it is stopped: the run
of tests/resnet_engine/test_trainer.py's process-group signal test (argv: output folder)."""

import sys
import time

import torch

from resnet_engine.cli import run_cli
from resnet_engine.loaders import build_train_loader
from tests.resnet_engine.toy_training import ToyModel, make_trainer


class SlowSamples(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, item):
        index, _ = item  # (position, the sample's seed) from the training sampler
        time.sleep(0.02)
        return {"x": torch.randn(2, generator=torch.Generator().manual_seed(index))}


def main() -> int:
    def make_loader(start):
        return build_train_loader(SlowSamples(), 4, seed=0, num_workers=int(sys.argv[2]) if len(sys.argv) > 2 else 2, start_step=start)

    make_trainer(ToyModel(), sys.argv[1], make_loader=make_loader, max_iter=int(sys.argv[3]) if len(sys.argv) > 3 else 100000, log_period=1).train()
    return 0


if __name__ == "__main__":
    run_cli(main)
