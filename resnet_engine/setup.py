"""Start-of-run chores shared by the trainers: device, process group, seeds, output folder, config."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from . import distributed as dist_utils
from .config import config_to_text, save_config
from .resume import elastic_restart_count
from .run_dir import claim_run_directory

logger = logging.getLogger(__name__)

# How long restarted workers wait for the dead attempt's processes (data-loading workers that inherited
# the lock) to let go of output_dir's lock.
RESTART_LOCK_WAIT_SECONDS = 60


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(cfg, save: bool = True, resume: bool = False, overwrite: bool = False) -> torch.device:
    """Select the device, join torchrun's process group and seed; for a training run (``save``), also
    claim ``output_dir`` (resnet_engine/run_dir.py: lock, clean-up, no fresh run over an earlier one unless
    ``overwrite``) and write ``output_dir/config.yaml`` (a fresh run's), before any other work."""
    device = dist_utils.select_device(cfg.device)
    dist_utils.init_distributed(device)
    seed_everything(cfg.seed)
    # Workers restarted by torchrun continue the run (Trainer.train): the earlier attempt's checkpoints
    # are theirs, and the lock may still be held for a moment by the processes of the dead attempt.
    restarted = elastic_restart_count() > 0
    if save:
        dist_utils.on_main_process(lambda: _claim(cfg.output_dir, resume or restarted, overwrite, restarted))
        if dist_utils.is_main_process():
            if not (resume or restarted):  # a resumed run's config.yaml is replaced once its checkpoint fits (Trainer.resume)
                save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
            logger.info("config:\n%s", config_to_text(cfg))
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and dist_utils.get_world_size() > 1:
        # Processes sharing one machine's cores should not each start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_utils.get_world_size()))
    return device


def _claim(output_dir: str, resume: bool, overwrite: bool, restarted: bool) -> None:
    claim = claim_run_directory(output_dir, wait_seconds=RESTART_LOCK_WAIT_SECONDS if restarted else 0)
    if not resume:
        claim.refuse_earlier_run(overwrite)

