"""The ImageNet classification config schema: every key a classifier YAML file or override may set.

Defaults are the paper's ImageNet recipe (ResNet-101, scale jitter [256, 480], 224 crops, SGD lr 0.1 with
batch 256 for 600k iterations); configs/cls_shapes.yaml scales it down to the synthetic set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backbones.config import BackboneConfig
from engine.config import ConfigError, choice, load_config
from engine.schema import SolverConfig

TEST_MODES = ("1crop", "10crop", "dense")


@dataclass
class ClassifierModelConfig:
    # Trained from scratch with BN updated, as on ImageNet (the detection default freezes it).
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(depth=101, norm="bn", freeze_at=0))
    # Classes of the fc head; 0 = as many as the synset file lists.
    num_classes: int = 0


@dataclass
class ClassificationDataConfig:
    # The folder holding ILSVRC/Data/CLS-LOC, LOC_synset_mapping.txt and LOC_{train,val}_solution.csv.
    root: str = "datasets/ilsvrc"
    # "shapes_loc": generate the synthetic ILSVRC-layout set into data.root on first use.
    synthetic: str = choice("", ("", "shapes_loc"))
    # "folder": every image under ILSVRC/Data/CLS-LOC/train/<wnid>/ (all 1.28M on ImageNet);
    # "csv": only the images of LOC_train_solution.csv (the ones with boxes).
    train_list: str = choice("folder", ("folder", "csv"))
    num_workers: int = 4
    on_bad_image: str = choice("skip", ("skip", "fail"))


@dataclass
class ClassificationInputConfig:
    # The shorter side is drawn uniformly from this inclusive range (the paper's scale augmentation).
    train_short_side: list[int] = field(default_factory=lambda: [256, 480])
    crop: int = 224
    flip: float = 0.5
    # Brightness, contrast and saturation factors are drawn from [1 - s, 1 + s]; 0 turns them off.
    color_jitter: float = 0.4
    # AlexNet's PCA lighting noise: the standard deviation of its coefficients (0 turns it off).
    lighting_std: float = 0.1
    # Pixel statistics on 0-255 values, in the order of `format`.
    pixel_mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    pixel_std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    format: str = choice("RGB", ("RGB", "BGR"))


@dataclass
class ClassificationTestConfig:
    mode: str = choice("10crop", TEST_MODES)
    # 1-crop and 10-crop: the shorter side before cropping input.crop.
    resize: int = 256
    # Dense (fully convolutional) testing: shorter sides whose class scores are averaged.
    dense_scales: list[int] = field(default_factory=lambda: [224, 256, 384, 480, 640])
    # Dense testing also averages the horizontally flipped image at every scale.
    dense_flip: bool = True
    ims_per_batch: int = 32
    # Evaluate every N iterations during training (0: only at the end).
    eval_period: int = 0
    # Evaluate at most this many val images (0: all), for quick checks.
    max_images: int = 0


@dataclass
class ClassificationConfig:
    output_dir: str = "output/cls"
    seed: int = 42
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    input: ClassificationInputConfig = field(default_factory=ClassificationInputConfig)
    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(
        max_iter=600000, ims_per_batch=256, base_lr=0.1, momentum=0.9, weight_decay=1e-4,
        steps=[150000, 300000, 450000], warmup_iters=0, checkpoint_period=10000))
    test: ClassificationTestConfig = field(default_factory=ClassificationTestConfig)


def load_classification_config(path: str | None = None, overrides=()):
    cfg = load_config(ClassificationConfig, path, overrides)
    check_classification_options(cfg)
    return cfg


def check_classification_options(cfg) -> None:
    """Values the schema's types cannot rule out, with the fix in the message."""
    low_high = list(cfg.input.train_short_side)
    crop = cfg.input.crop
    if crop <= 0:
        raise ConfigError(f"input.crop={crop}: give a positive crop side such as 224")
    if len(low_high) != 2 or low_high[0] > low_high[1]:
        raise ConfigError(f"input.train_short_side={low_high}: give the range [low, high] of shorter sides, "
                          f"such as [256, 480]")
    if low_high[0] < crop:
        raise ConfigError(f"input.train_short_side={low_high} starts below input.crop={crop}: a crop must fit "
                          f"in the resized image")
    if cfg.test.resize < crop:
        raise ConfigError(f"test.resize={cfg.test.resize} is smaller than input.crop={crop}: the test crops "
                          f"must fit in the resized image")
    scales = list(cfg.test.dense_scales)
    if not scales or any(s <= 0 for s in scales):
        raise ConfigError(f"test.dense_scales={scales}: give positive shorter sides such as [224, 256, 384]")
    if not 0 <= cfg.input.color_jitter < 1:
        raise ConfigError(f"input.color_jitter={cfg.input.color_jitter}: give a strength in [0, 1)")
    if len(cfg.input.pixel_mean) != 3 or len(cfg.input.pixel_std) != 3 or min(cfg.input.pixel_std) <= 0:
        raise ConfigError("input.pixel_mean and input.pixel_std need 3 values each (std positive)")
