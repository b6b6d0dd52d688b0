"""Run by the multi-process tests, alone or under torchrun: tools/train_cls.py's command line, with two
additions for the tests only.

- Every process writes the image indices of each training step it takes to
  OUTPUT_DIR/batches.rank{R}.restart{N}.jsonl (one record per step: {"step", "indices"}), so that a
  test can compare the data order of two runs.
- With DIE_AT_ITERATION=k (and DIE_ON_RANK=r, default 0), rank r kills itself with SIGKILL at the
  start of iteration k of the first attempt (TORCHELASTIC_RESTART_COUNT=0), as a crashed worker would.
"""

import json
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from resnet_engine.distributed import get_rank  # noqa: E402
from resnet_engine.sampler import GroupedBatchSampler  # noqa: E402
from resnet_engine.trainer import Trainer  # noqa: E402
from tools import train_cls  # noqa: E402

RESTART = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))


def output_dir() -> str:
    return next(arg.split("=", 1)[1] for arg in sys.argv if arg.startswith("output_dir="))


original_iter = GroupedBatchSampler.__iter__


def recording_iter(self):
    path = os.path.join(output_dir(), f"batches.rank{self.rank}.restart{RESTART}.jsonl")
    for step, batch in enumerate(original_iter(self), start=self.start_step):
        with open(path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"step": step, "indices": [index for index, _ in batch]}) + "\n")
        yield batch


original_forward = Trainer._forward


def forward_or_die(self, batch):
    die_at = os.environ.get("DIE_AT_ITERATION")
    if (die_at is not None and RESTART == 0 and self.iteration == int(die_at)
            and get_rank() == int(os.environ.get("DIE_ON_RANK", "0"))):
        os.kill(os.getpid(), signal.SIGKILL)
    return original_forward(self, batch)


if __name__ == "__main__":
    GroupedBatchSampler.__iter__ = recording_iter
    Trainer._forward = forward_or_die
    train_cls.cli()
