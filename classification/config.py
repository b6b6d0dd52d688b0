"""The classification config schema: every key a classifier YAML file or override may set.

One schema for both datasets of the paper; ``data.dataset`` chooses:

* ``imagenet``: the ILSVRC CLS-LOC layout under ``data.root``, an ImageNet ResNet (Table 1). Defaults
  are the paper's ImageNet recipe (ResNet-101, scale jitter [256, 480], 224 crops, SGD lr 0.1 with batch
  256 for 600k iterations); configs/cls_shapes.yaml scales it down to the synthetic set.
* ``cifar10`` / ``cifar100``: the official CIFAR files under ``data.root`` (empty: the embedded synthetic
  CIFAR-10), a CIFAR ResNet of section 4.2 (``model.backbone.depth`` 6n+2 or 9n+2); configs/base_cifar.yaml
  holds the paper's CIFAR recipe.

Keys that apply to one dataset only (the ImageNet augmentation and test views; the CIFAR splits) must be
left at their defaults for the other, so that no setting is silently ignored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import SimpleNamespace

from omegaconf import OmegaConf

from backbones.cifar import cifar_architecture
from backbones.config import BackboneConfig
from backbones.errors import BackboneError
from backbones.resnet import ARCHITECTURES, SHORTCUTS
from resnet_engine.config import (
    ConfigError,
    bounded,
    choice,
    config_task,
    fraction,
    load_config,
    non_negative,
    positive,
    renamed_keys,
)
from resnet_engine.schema import (
    IMAGENET_PIXEL_MEAN,
    IMAGENET_PIXEL_STD,
    LoggingConfig,
    SolverConfig,
    check_solver_options,
)

TEST_MODES = ("1crop", "10crop", "dense")
DATASETS = ("imagenet", "cifar10", "cifar100")
CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}
# The paper's shortcut option and width of each family, for model.backbone.shortcut and base_width left
# unset: one place, so that a CIFAR config cannot silently train the 4x wider ImageNet-width net. The CIFAR
# nets of bottleneck units (the pre-activation ResNet-164 and 1001, whose first unit widens 16 to 64
# channels) take projections where dimensions change, as backbones.CifarResNet does by default.
PAPER_NETWORK = {"imagenet": {"shortcut": "B", "base_width": 64, "stride_in_1x1": False},
                 "cifar": {"shortcut": "A", "base_width": 16, "stride_in_1x1": True},
                 "cifar_bottleneck": {"shortcut": "B", "base_width": 16, "stride_in_1x1": True}}


@dataclass
class ClassifierBackboneConfig(BackboneConfig):
    """The network: an ImageNet ResNet (data.dataset=imagenet) or a CIFAR ResNet (cifar10, cifar100) of
    ``depth``, as ``backbones.create("resnet{depth}")`` and ``create("resnet{depth}_cifar")`` build them."""

    # ImageNet: 18, 34, 50, 101, 152, 200. CIFAR: 6n+2 with basic units (20, 32, 44, 56, 110, 1202) or
    # 9n+2 with bottleneck units (164, 1001). Checked against data.dataset when the config loads.
    depth: int = positive(50)
    # The plain net: the same layers without shortcuts (the paper's Table 2 and Fig. 6).
    plain: bool = False
    # Full pre-activation units ("Identity Mappings in Deep Residual Networks").
    preact: bool = False
    # Empty / 0: the paper's for data.dataset, filled in when the config loads (PAPER_NETWORK): option B
    # projections and width 64 on ImageNet (Table 3's ResNets); option A zero-padding identities and
    # width 16 on CIFAR (section 4.2; projections for the bottleneck nets 164 and 1001). The resolved
    # values are what output_dir/config.yaml records.
    shortcut: str = choice("", ("",) + SHORTCUTS)
    base_width: int = non_negative(0)
    # Where a bottleneck unit strides. Null: filled in as the family's reference does: in the first 1x1 on
    # CIFAR (the pre-activation ResNet-164 and 1001 of "Identity Mappings" and its reference code, as
    # backbones.create builds them), in the 3x3 on ImageNet (torchvision's weights; the paper's MSRA
    # models stride in the 1x1, see configs/base_ilsvrc_cls.yaml). Basic units have no 1x1 to stride in.
    stride_in_1x1: bool | None = None


@dataclass
class ClassifierModelConfig:
    # Trained from scratch with BN updated, as on ImageNet (the detection default freezes it).
    backbone: ClassifierBackboneConfig = field(
        default_factory=lambda: ClassifierBackboneConfig(depth=101, norm="bn", freeze_at=0))
    # Classes of the fc head; 0 = as many as the synset file lists (ImageNet) or the dataset has (CIFAR).
    num_classes: int = non_negative(0)


@dataclass
class IlsvrcDataConfig:
    """Data in the ILSVRC CLS-LOC layout (the classifier's ImageNet and the localizers)."""

    # The folder holding ILSVRC/Data/CLS-LOC, LOC_synset_mapping.txt and LOC_{train,val}_solution.csv.
    root: str = "datasets/ilsvrc"
    # "shapes_loc": generate the synthetic ILSVRC-layout set into data.root on first use.
    synthetic: str = choice("", ("", "shapes_loc"))
    # "folder": every image under ILSVRC/Data/CLS-LOC/train/<wnid>/ (all 1.28M on ImageNet);
    # "csv": only the images of LOC_train_solution.csv (the ones with boxes).
    train_list: str = choice("folder", ("folder", "csv"))
    num_workers: int = non_negative(4)
    on_bad_image: str = choice("skip", ("skip", "fail"))


@dataclass
class ClassificationDataConfig(IlsvrcDataConfig):
    # Empty: the dataset's own default, filled in when the config loads: datasets/ilsvrc for
    # ImageNet; for CIFAR it stays empty, which means the embedded synthetic CIFAR-10.
    root: str = ""
    # "imagenet": the ILSVRC layout under data.root. "cifar10", "cifar100": the official CIFAR files under
    # data.root (binary or python version: docs/CLASSIFICATION.md); an empty data.root is the embedded
    # synthetic CIFAR-10, generated into datasets/cifar_synthetic on first use.
    dataset: str = choice("imagenet", DATASETS)
    # CIFAR: "trainval" trains on every training image and tests on the test set (the paper's reported
    # nets); "train" holds the last val_images training images out as "val", which is tested too and
    # chooses model_best.pth (the paper's 45k/5k split, on which its schedule was chosen).
    train_split: str = choice("trainval", ("trainval", "train"))
    # CIFAR: the number of held-out "val" images; 0: a tenth of the training files (5,000).
    val_images: int = non_negative(0)


@dataclass
class ClassificationInputConfig:
    # The shorter side is drawn uniformly from this inclusive range (the paper's scale augmentation).
    train_short_side: list[int] = positive([256, 480])
    crop: int = positive(224)
    # The probability of a horizontal flip in training.
    random_flip: float = fraction(0.5)
    # Brightness, contrast and saturation factors are drawn from [1 - s, 1 + s]; 0 (the paper's: its colour
    # augmentation is the PCA lighting below) turns them off.
    color_jitter: float = bounded(0.0, 0, 1, high_open=True)
    # AlexNet's PCA lighting noise: the standard deviation of its coefficients (0 turns it off).
    lighting_std: float = non_negative(0.1)
    # Pixel statistics on 0-255 values, in the order of `format`.
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_PIXEL_MEAN))
    pixel_std: list[float] = positive(list(IMAGENET_PIXEL_STD))
    format: str = choice("RGB", ("RGB", "BGR"))


@dataclass
class ClassificationTestConfig:
    mode: str = choice("10crop", TEST_MODES)
    # 1-crop and 10-crop: the shorter side before cropping input.crop.
    resize: int = positive(256)
    # Dense (fully convolutional) testing: shorter sides whose class scores are averaged.
    dense_scales: list[int] = positive([224, 256, 384, 480, 640], non_empty=True)
    # Dense testing also averages the horizontally flipped image at every scale.
    dense_flip: bool = True
    ims_per_batch: int = positive(32)
    # Evaluate every N iterations during training (0: only at the end).
    eval_period: int = non_negative(0)
    # Evaluate at most this many val images (0: all), for quick checks.
    max_images: int = non_negative(0)


# Keys of the classification and localization configs that were renamed; the old names still load until 0.2.
INPUT_RENAMED_KEYS = {"input.flip": "input.random_flip"}


@config_task("classification", tool="tools/train_cls.py", model="classifier")
@renamed_keys(INPUT_RENAMED_KEYS)
@dataclass
class ClassificationConfig:
    output_dir: str = "output/cls"
    seed: int = bounded(42, 0, 2**63 - 1)
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    model: ClassifierModelConfig = field(default_factory=ClassifierModelConfig)
    input: ClassificationInputConfig = field(default_factory=ClassificationInputConfig)
    data: ClassificationDataConfig = field(default_factory=ClassificationDataConfig)
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(
        max_iter=600000, ims_per_batch=256, base_lr=0.1, steps=[150000, 300000, 450000], warmup_iters=0,
        checkpoint_period=10000))
    test: ClassificationTestConfig = field(default_factory=ClassificationTestConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


# Keys that only one dataset reads: a CIFAR run uses the paper's CIFAR views (4-pixel padding, a random
# 32x32 crop and flip in training, the image itself at test) and the CIFAR splits.
IMAGENET_ONLY_KEYS = tuple(f"input.{f.name}" for f in dataclasses.fields(ClassificationInputConfig)) + (
    "data.synthetic", "data.train_list", "data.on_bad_image", "test.mode", "test.resize", "test.dense_scales",
    "test.dense_flip", "test.max_images")
CIFAR_ONLY_KEYS = ("data.train_split", "data.val_images")


def load_classification_config(path: str | None = None, overrides=()):
    cfg = load_config(ClassificationConfig, path, overrides)
    fill_in_dataset_defaults(cfg)
    check_classification_options(cfg)
    return cfg


def fill_in_dataset_defaults(cfg) -> None:
    """The keys whose default depends on data.dataset, left unset: model.backbone.shortcut and base_width
    take the paper's values (:func:`paper_network`); data.root is the ILSVRC folder for ImageNet and stays
    empty for CIFAR (the embedded set), so that a CIFAR run without a root never reads the ImageNet folder."""
    paper = paper_network(cfg)
    backbone = cfg.model.backbone
    if not backbone.shortcut:
        backbone.shortcut = paper["shortcut"]
    if not backbone.base_width:
        backbone.base_width = paper["base_width"]
    if backbone.stride_in_1x1 is None:
        backbone.stride_in_1x1 = paper["stride_in_1x1"]
    if not cfg.data.root and not is_cifar(cfg):
        cfg.data.root = IlsvrcDataConfig.root


def paper_network(cfg) -> dict:
    """The paper's {"shortcut", "base_width", "stride_in_1x1"} for the network of a classification config."""
    if not is_cifar(cfg):
        return PAPER_NETWORK["imagenet"]
    try:
        unit = cifar_architecture(cfg.model.backbone.depth)[0]
    except BackboneError:  # a depth of no CIFAR net: check_cifar_options says so
        unit = "basic"
    return PAPER_NETWORK["cifar_bottleneck" if unit == "bottleneck" else "cifar"]


def is_cifar(cfg) -> bool:
    return cfg.data.dataset in CIFAR_CLASSES


def check_classification_options(cfg) -> None:
    """Relations between keys, which the ranges of single keys in the schema cannot express."""
    check_solver_options(cfg.solver)
    check_keys_of_the_dataset(cfg)
    if is_cifar(cfg):
        check_cifar_options(cfg)
        return
    depth = cfg.model.backbone.depth
    if depth not in ARCHITECTURES:
        raise ConfigError(f"model.backbone.depth={depth}: no ImageNet ResNet has this depth (data.dataset=imagenet): "
                          f"choose one of {', '.join(map(str, ARCHITECTURES))}")
    low_high = list(cfg.input.train_short_side)
    crop = cfg.input.crop
    if len(low_high) != 2 or low_high[0] > low_high[1]:
        raise ConfigError(f"input.train_short_side={low_high}: give the range [low, high] of shorter sides, "
                          f"such as [256, 480]")
    if low_high[0] < crop:
        raise ConfigError(f"input.train_short_side={low_high} starts below input.crop={crop}: a crop must fit "
                          f"in the resized image")
    if cfg.test.resize < crop:
        raise ConfigError(f"test.resize={cfg.test.resize} is smaller than input.crop={crop}: the test crops "
                          f"must fit in the resized image")
    check_pixel_statistics(cfg.input)


def check_keys_of_the_dataset(cfg) -> None:
    """A key of the other dataset, changed from its default, would be ignored: stop instead."""
    defaults = OmegaConf.structured(ClassificationConfig)
    foreign = IMAGENET_ONLY_KEYS if is_cifar(cfg) else CIFAR_ONLY_KEYS
    for key in foreign:
        value = OmegaConf.select(cfg, key)
        if value != OmegaConf.select(defaults, key):
            shown = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
            used_by = "ImageNet" if is_cifar(cfg) else "CIFAR"
            raise ConfigError(f"{key}={shown} applies to {used_by} only and data.dataset={cfg.data.dataset}: "
                              f"remove it (or set data.dataset)")


def check_cifar_options(cfg) -> None:
    depth, dataset = cfg.model.backbone.depth, cfg.data.dataset
    try:
        cifar_architecture(depth)
    except BackboneError as error:
        raise ConfigError(f"model.backbone.depth={depth} (data.dataset={dataset}): {error}") from None
    if cfg.data.train_split == "trainval" and cfg.data.val_images:
        raise ConfigError(f"data.val_images={cfg.data.val_images} holds images out of data.train_split=train only: "
                          f"data.train_split=trainval trains on every training image; set data.train_split=train "
                          f"(or leave data.val_images at 0)")
    classes = CIFAR_CLASSES[dataset]
    if cfg.model.num_classes not in (0, classes):
        raise ConfigError(f"model.num_classes={cfg.model.num_classes} but {dataset} has {classes} classes: set "
                          f"model.num_classes=0 to take the dataset's count")


def check_pixel_statistics(input_cfg) -> None:
    if len(input_cfg.pixel_mean) != 3 or len(input_cfg.pixel_std) != 3:
        raise ConfigError("input.pixel_mean and input.pixel_std need 3 values each, one per colour channel")


def backbone_without_weights(backbone_cfg) -> SimpleNamespace:
    """A copy of a ``model.backbone`` section with ``weights`` unset: for a network whose weights come
    next from a whole checkpoint (classifier, localizer), so that the ImageNet ones are not loaded first."""
    schema = backbone_cfg if dataclasses.is_dataclass(backbone_cfg) else OmegaConf.get_type(backbone_cfg)
    copy = SimpleNamespace(**{f.name: getattr(backbone_cfg, f.name) for f in dataclasses.fields(schema)})
    copy.weights = None
    return copy
