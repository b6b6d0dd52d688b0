"""One of two gloo processes that join torchrun's group through resnet_engine and then end as argv[1]
says: "ok" returns, "user" raises a UserError, "bug" raises a ValueError. An atexit hook writes
argv[2]/exited<rank> if the interpreter shuts down normally (it should not: run_cli ends the
process). MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE come from the environment
(tests/resnet_engine/test_cli.py)."""

import atexit
import os
import sys

import torch

from resnet_engine import distributed as dist_utils
from resnet_engine.cli import run_cli
from resnet_engine.errors import UserError


def main() -> int:
    mode, markers = sys.argv[1], sys.argv[2]
    rank = int(os.environ["RANK"])
    atexit.register(lambda: open(os.path.join(markers, f"exited{rank}"), "w").close())
    dist_utils.init_distributed(torch.device("cpu"))
    dist_utils.all_gather_objects(rank)  # both joined
    if mode == "user":
        raise UserError(f"rank {rank}: model.depth=51 is not a ResNet depth")
    if mode == "bug":
        raise ValueError(f"rank {rank}: an unexpected failure")
    return 0


if __name__ == "__main__":
    run_cli(main)
