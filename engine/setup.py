"""Start-of-run chores shared by the trainers: device, process group, seeds, output folder, config."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from . import distributed as dist_utils
from .config import config_to_text, save_config

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_run(cfg, save: bool = True) -> torch.device:
    """Select the device, join torchrun's process group, seed, and write ``output_dir/config.yaml``."""
    device = dist_utils.select_device(cfg.device)
    dist_utils.init_distributed(device)
    seed_everything(cfg.seed)
    if dist_utils.is_main_process():
        os.makedirs(cfg.output_dir, exist_ok=True)
        if save:
            save_config(cfg, os.path.join(cfg.output_dir, "config.yaml"))
            logger.info("config:\n%s", config_to_text(cfg))
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ and dist_utils.get_world_size() > 1:
        # Processes sharing one machine's cores should not each start a thread per core.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist_utils.get_world_size()))
    return device
