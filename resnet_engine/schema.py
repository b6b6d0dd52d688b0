"""Config sections shared by every trainer (detection, localization, classification)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .config import ConfigError, bounded, choice, non_negative, positive

# The ImageNet pixel statistics (0-255 values, RGB) that torchvision's and timm's ResNet weights expect.
IMAGENET_PIXEL_MEAN = (123.675, 116.28, 103.53)
IMAGENET_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclass
class DatasetConfig:
    ann_file: str = ""
    img_dir: str = ""


@dataclass
class MetricWarmupConfig:
    """A warm-up that ends when the network starts to learn rather than at a set iteration: the learning
    rate is ``lr_factor`` times the schedule's until the mean of a training metric over the last ``window``
    iterations falls below ``below``, and the schedule's from the next iteration on (the paper's CIFAR
    ResNet-110: 0.01 until the training error is below 80%, then 0.1)."""

    # A metric the model reports in training, besides its losses (the classifiers' train_error, in
    # percent); empty: no such warm-up.
    metric: str = ""
    # The warm-up ends once the metric's mean over the window is below this value.
    below: float | None = None
    lr_factor: float = bounded(0.1, 0, 1, low_open=True)
    window: int = positive(20)


@dataclass
class SolverConfig:
    optimizer: str = choice("sgd", ("sgd", "adamw"))
    max_iter: int = positive(90000)
    # The global batch: split evenly over all processes of a distributed run.
    ims_per_batch: int = positive(16)
    base_lr: float = positive(0.02)
    # SGD only (AdamW keeps its default betas).
    momentum: float = bounded(0.9, 0, 1, high_open=True)
    weight_decay: float = non_negative(1e-4)
    # Absolute iteration numbers at which the learning rate is multiplied by gamma.
    steps: list[int] = positive([60000, 80000])
    gamma: float = positive(0.1)
    warmup_iters: int = non_negative(1000)
    warmup_factor: float = bounded(0.001, 0, 1, low_open=True)
    # A warm-up until a training metric falls below a threshold (after the linear one, if both are set).
    warmup_until: MetricWarmupConfig = field(default_factory=MetricWarmupConfig)
    # 0: no periodic checkpoints (model_final.pth only).
    checkpoint_period: int = non_negative(5000)
    # Keep the newest N periodic checkpoints (plus model_final.pth and model_best.pth).
    keep_last: int = positive(3)
    # 0: no clipping.
    clip_grad_norm: float = non_negative(0.0)
    amp: str = choice("off", ("off", "bf16", "fp16"))
    # Speed switches: channels_last memory format for the convolutions, torch.compile of the
    # backbone (in place, so checkpoints keep their keys), and the wide 3x3 convolutions as Winograd
    # convolutions on CPUs, forward and backward (resnet_ops/winograd.py; float rounding apart, the
    # same gradients). All are off by default; every trainer applies them (backbones/speed.py).
    channels_last: bool = False
    compile_backbone: bool = False
    # torch.compile's mode for solver.compile_backbone. "reduce-overhead" records the compiled backbone
    # as CUDA graphs on GPUs (one recording per input shape: fixed training sizes keep them few).
    # An H200's R50-FPN step at batch 16 ran no faster with it than without (docs/BENCHMARKS.md).
    compile_mode: str = choice("default", ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"))
    winograd: bool = False
    # Which convolutions solver.winograd converts: [min, max] input and output channels, and the
    # smallest map (pixels) that runs as Winograd; null: 128 to 256 channels, 400 pixels.
    winograd_channels: list[int] | None = positive(None, non_empty=True, hint="[min, max] channels, or null for 128 to 256")
    winograd_min_pixels: int | None = positive(None, hint="or null for 400")
    # Non-finite losses tolerated (the step is skipped) before the run stops.
    max_nonfinite: int = non_negative(0)
    log_period: int = positive(20)


def check_solver_options(solver) -> None:
    """Relations between solver keys, which the ranges of single keys cannot express."""
    warmup = solver.warmup_until
    if warmup.metric and warmup.below is None:
        raise ConfigError(f"solver.warmup_until.metric={warmup.metric} needs solver.warmup_until.below, the value "
                          f"under which the warm-up ends (e.g. solver.warmup_until.below=80 for an error in percent)")
    if warmup.below is not None and not warmup.metric:
        raise ConfigError(f"solver.warmup_until.below={warmup.below:g} needs solver.warmup_until.metric, the "
                          f"training metric it is compared with (e.g. solver.warmup_until.metric=train_error)")
    if warmup.metric == "train_error" and warmup.below is not None and 0 < warmup.below <= 1:
        raise ConfigError(f"solver.warmup_until.below={warmup.below:g}: train_error is in percent (0 to 100), so the "
                          f"warm-up would never end; give e.g. solver.warmup_until.below={warmup.below * 100:g}")
    check_winograd_channels("solver", solver.winograd_channels)


def steps_beyond_the_run(solver) -> str | None:
    """What to say when solver.steps lie at or past solver.max_iter (a run shortened without its steps:
    the learning rate would never be divided), else None."""
    late = [step for step in solver.steps if step >= solver.max_iter]
    if not late:
        return None
    return (f"solver.steps={list(solver.steps)}: {', '.join(map(str, late))} lie{'s' if len(late) == 1 else ''} at "
            f"or past solver.max_iter={solver.max_iter}, so the learning rate is "
            f"{'never divided' if len(late) == len(solver.steps) else 'not divided there'}; scale the steps with "
            f"max_iter if the run was shortened")


def check_winograd_channels(section: str, channels) -> None:
    if channels is not None and (len(channels) != 2 or channels[0] > channels[1]):
        raise ConfigError(f"{section}.winograd_channels={list(channels)}: give [min, max] channels, such as [64, 256], "
                          f"or null for the defaults")


@dataclass
class WandbConfig:
    """A Weights & Biases run mirroring metrics.jsonl (the ``trackers`` extra installs wandb). W&B's own
    environment variables (WANDB_API_KEY, WANDB_MODE, WANDB_DIR, ...) apply as usual."""

    enabled: bool = False
    project: str = "resnet-detection"
    # The user or team the run belongs to; empty: the account's default entity.
    entity: str = ""
    # The run's display name; empty: the name of output_dir.
    name: str = ""
    # online or offline (``wandb sync`` uploads an offline run later); empty: WANDB_MODE, else online.
    mode: str = choice("", ("", "online", "offline"))


@dataclass
class MlflowConfig:
    """An MLflow run mirroring metrics.jsonl (the ``trackers`` extra installs mlflow-skinny)."""

    enabled: bool = False
    # A tracking server (http://host:5000) or a folder (file:/path/mlruns: recent MLflow releases ask for
    # MLFLOW_ALLOW_FILE_STORE=true to use one; a database, sqlite:///mlflow.db, needs the full mlflow
    # package); empty: MLFLOW_TRACKING_URI, else MLflow's default.
    tracking_uri: str = ""
    # The experiment the run is filed under, created when missing; empty: MLflow's "Default" experiment.
    experiment: str = "resnet-detection"
    # The run's name; empty: the name of output_dir.
    run_name: str = ""


@dataclass
class LoggingConfig:
    """Where the main process mirrors the records of metrics.jsonl (which is always written). A run
    resumed in its output_dir continues the same tracker runs (their ids are kept in trackers.json)."""

    tensorboard: bool = True
    wandb: WandbConfig = field(default_factory=WandbConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
