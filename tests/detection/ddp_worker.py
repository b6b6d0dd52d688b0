"""Run by tests under torchrun: trains with tools/train_det.py's code path, then every rank saves its
own parameters to OUT/rank{r}.pt so that the test can compare the ranks."""

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from detection.config import load_detection_config  # noqa: E402
from detection.training import train_detector  # noqa: E402
from resnet_engine.trainer import Trainer  # noqa: E402

original_train = Trainer.train


def train_and_save_rank(self):
    metrics = original_train(self)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    torch.save(self.model.state_dict(), os.path.join(self.output_dir, f"rank{rank}.pt"))
    return metrics


if __name__ == "__main__":
    Trainer.train = train_and_save_rank
    cfg = load_detection_config(sys.argv[1], sys.argv[2:])
    train_detector(cfg)
