"""Config sections shared by every trainer (detection, localization, classification)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import choice


@dataclass
class DatasetConfig:
    ann_file: str = ""
    img_dir: str = ""


@dataclass
class SolverConfig:
    optimizer: str = choice("sgd", ("sgd", "adamw"))
    max_iter: int = 90000
    # The global batch: split evenly over all processes of a distributed run.
    ims_per_batch: int = 16
    base_lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Absolute iteration numbers at which the learning rate is multiplied by gamma.
    steps: list[int] = field(default_factory=lambda: [60000, 80000])
    gamma: float = 0.1
    warmup_iters: int = 1000
    warmup_factor: float = 0.001
    checkpoint_period: int = 5000
    # Keep the newest N periodic checkpoints (plus model_final.pth and model_best.pth).
    keep_last: int = 3
    clip_grad_norm: float = 0.0
    amp: str = choice("off", ("off", "bf16", "fp16"))
    # Speed switches: channels_last memory format for the convolutions, torch.compile of the
    # backbone (in place, so checkpoints keep their keys), and the wide 3x3 convolutions as Winograd
    # convolutions on CPUs, forward and backward (backbones/winograd.py; float rounding apart, the
    # same gradients). All are off by default.
    channels_last: bool = False
    compile_backbone: bool = False
    winograd: bool = False
    # Non-finite losses tolerated (the step is skipped) before the run stops.
    max_nonfinite: int = 0
    log_period: int = 20
