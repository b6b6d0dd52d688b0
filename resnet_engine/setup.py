"""Start-of-run chores shared by the trainers: device, process group, seeds, output folder, config."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from . import distributed as dist_utils
from .config import config_to_text, save_config
from .run_dir import claim_run_directory

logger = logging.getLogger(__name__)


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
    if save:
        dist_utils.on_main_process(lambda: _claim(cfg.output_dir, resume, overwrite))
        if dist_utils.is_main_process():
            if not resume:  # a resumed run's config.yaml is replaced once its checkpoint fits (Trainer.resume)
                save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
            logger.info("config:\n%s", config_to_text(cfg))
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and dist_utils.get_world_size() > 1:
        # Processes sharing one machine's cores should not each start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_utils.get_world_size()))
    return device


def _claim(output_dir: str, resume: bool, overwrite: bool) -> None:
    claim = claim_run_directory(output_dir)
    if not resume:
        claim.refuse_earlier_run(overwrite)

