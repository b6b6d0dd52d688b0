"""One of two gloo processes of a toy run whose evaluation at iteration 2 is stopped while rank 0
already waits in the evaluation's gather and rank 1 still scores: the run of
tests/resnet_engine/test_trainer.py's distributed evaluation-stop test (argv: rank, output folder,
folder of the marker files). MASTER_ADDR, MASTER_PORT and WORLD_SIZE come from the environment."""

import datetime
import os
import sys
import time

import torch.distributed as dist

from resnet_engine import distributed as dist_utils
from resnet_engine.cli import run_cli
from tests.resnet_engine.toy_training import ToyModel, make_trainer


def main() -> int:
    rank, output_dir, markers = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", rank=rank, timeout=datetime.timedelta(seconds=60))

    def evaluate(model):
        open(os.path.join(markers, f"in_eval{rank}"), "w").close()
        end = time.monotonic() + (0.2 if rank == 0 else 60)  # rank 1 scores long enough to be stopped
        while time.monotonic() < end:
            time.sleep(0.05)
        dist_utils.all_gather_objects({"rank": rank})  # what every evaluator gathers
        return {"m": {"score": 1.0}}

    trainer = make_trainer(ToyModel(), output_dir, evaluate=evaluate, max_iter=4, log_period=1)
    trainer.eval_period = 2
    trainer.train()
    return 0


if __name__ == "__main__":
    run_cli(main)
