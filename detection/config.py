"""The detection config schema: every key a detection YAML file or override may set."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from backbones.config import BackboneConfig
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
    DatasetConfig,
    LoggingConfig,
    SolverConfig,
    check_solver_options,
    check_winograd_channels,
)

from .data.augment import check_augmentations


@dataclass
class AnchorConfig:
    # One list of sizes (pixels, square-root of the area) per feature level. The default, 4 areas x 3 ratios =
    # 12 anchors on one level, is the COCO setting of Faster R-CNN.
    sizes: list[list[float]] = positive([[64.0, 128.0, 256.0, 512.0]], non_empty=True)
    aspect_ratios: list[float] = positive([0.5, 1.0, 2.0], non_empty=True)
    # false: anchors at the network's stride of each level (detectron2's rule). true: at padded size //
    # map size, torchvision's rule, which gives another stride where the padded image is not a multiple
    # of the level's (P6 of an 800-pixel side: 61 rather than 64): only to reproduce torchvision's
    # detections with its converted weights (configs/tv_fasterrcnn_r50_fpn.yaml).
    torchvision_strides: bool = False


@dataclass
class RPNConfig:
    # Width of the 3x3 conv; 0 means "as many channels as the input feature".
    conv_channels: int = non_negative(0)
    batch_size_per_image: int = positive(256)
    positive_fraction: float = fraction(0.5)
    fg_iou_thresh: float = fraction(0.7)
    bg_iou_thresh: float = fraction(0.3)
    pre_nms_topk_train: int = positive(12000)
    post_nms_topk_train: int = positive(2000)
    pre_nms_topk_test: int = positive(6000)
    post_nms_topk_test: int = positive(300)  # the paper tests with 300 proposals
    nms_thresh: float = fraction(0.7)
    # Proposals smaller than this (pixels of the network input) are dropped.
    min_size: float = non_negative(0.0)
    smooth_l1_beta: float = non_negative(1.0 / 9.0)
    loss_weight: float = non_negative(1.0)
    # In training, ignore anchors crossing the image border by more than this (pixels); < 0 keeps all.
    boundary_thresh: float = -1.0


@dataclass
class RoIHeadConfig:
    batch_size_per_image: int = positive(512)
    positive_fraction: float = fraction(0.25)
    fg_iou_thresh: float = fraction(0.5)
    # Background RoIs have IoU in [bg_iou_low, fg_iou_thresh).
    bg_iou_low: float = fraction(0.0)
    pooler: str = choice("roi_align", ("roi_align", "roi_pool"))
    # 14 for the C4 head (res5 halves it to 7x7), 7 for FPN.
    pooler_resolution: int = positive(14)
    # Sampling points per bin side; 0: adaptive (as many as the bin is wide).
    sampling_ratio: int = non_negative(0)
    # RoIAlign: "auto" runs a multi-threaded gather on CPUs (torchvision's numbers to float
    # rounding, several times faster) and torchvision's op on GPUs, where the gather was 11% slower
    # (an H200's bf16 training step, docs/BENCHMARKS.md); "gather" or "torchvision" force one.
    roi_align_impl: str = choice("auto", ("auto", "gather", "torchvision"))
    # FPN box head: fully connected layers and their width.
    num_fc: int = non_negative(2)
    fc_dim: int = positive(1024)
    bbox_reg_weights: list[float] = positive([10.0, 10.0, 5.0, 5.0])
    # torchvision's 1/9; py-faster-rcnn's Fast R-CNN loss uses 1 (configs/base_det_paper.yaml sets it).
    smooth_l1_beta: float = non_negative(1.0 / 9.0)
    # Whole-image RoI through the same head, concatenated to each region (paper, Appendix B).
    global_context: bool = False


@dataclass
class FPNConfig:
    out_channels: int = positive(256)
    in_features: list[str] = field(default_factory=lambda: ["res2", "res3", "res4", "res5"])


@dataclass
class DetectionBackboneConfig(BackboneConfig):
    # A timm model name ("resnet50d", "seresnet50", ...) to use instead of this toolkit's ResNet;
    # "" keeps our own. With it, `weights` is a timm state dict and depth/base_width/shortcut/
    # stride_in_1x1/zero_init_residual are ignored (see docs/BACKBONES.md).
    timm_name: str = ""


@dataclass
class ModelConfig:
    arch: str = choice("c4", ("c4", "fpn"))
    backbone: DetectionBackboneConfig = field(default_factory=DetectionBackboneConfig)
    fpn: FPNConfig = field(default_factory=FPNConfig)
    anchors: AnchorConfig = field(default_factory=AnchorConfig)
    rpn: RPNConfig = field(default_factory=RPNConfig)
    roi_head: RoIHeadConfig = field(default_factory=RoIHeadConfig)
    # Foreground classes; 0 = the number of categories in the training annotation file.
    num_classes: int = non_negative(0)
    # Output category ids are the contiguous labels themselves (torchvision-trained models).
    labels_are_category_ids: bool = False
    # A detector file to start training from (ours or a converted torchvision one). Trained on other
    # classes, its classifier and per-class box regressor are re-initialized for this dataset's.
    weights: str = ""
    # With model.weights: keep the classifier and box-regressor rows of the background and of the
    # classes whose names the file and this dataset share (docs/CUSTOM_DATA.md).
    weights_keep_classes_by_name: bool = False


@dataclass
class InputConfig:
    # Pixel statistics on 0-255 values, in the order of `format`.
    pixel_mean: list[float] = field(default_factory=lambda: list(IMAGENET_PIXEL_MEAN))
    pixel_std: list[float] = positive(list(IMAGENET_PIXEL_STD))
    format: str = choice("RGB", ("RGB", "BGR"))
    # Shorter sides drawn from for each training image; the longer side is capped at max_size_train.
    min_size_train: list[int] = positive([600], non_empty=True)
    max_size_train: int = positive(1000)
    min_size_test: int = positive(600)
    max_size_test: int = positive(1000)
    # The batch is padded to a multiple of this (the largest stride of the backbone).
    size_divisibility: int = positive(32)
    # The probability of a horizontal flip in training.
    random_flip: float = fraction(0.5)
    # Training augmentations beyond the paper's, off by default (docs/CUSTOM_DATA.md#augmentation): named
    # presets (color_jitter, large_scale_jitter, random_crop), then albumentations transforms by class
    # name with their arguments, such as [{name: ColorJitter, brightness: 0.2, p: 0.8}]. They run after
    # the resize and flip, so that sizes given here are pixels of the network's input and the resize and
    # flip draw, per sample, what they draw without them.
    augment_presets: list[str] = field(default_factory=list)
    augmentations: list[Any] = field(default_factory=list)


DATASET_FORMATS = ("coco", "yolo", "voc", "imagenet_det")
# The format of the files each synthetic set generates.
SYNTHETIC_FORMATS = {"shapes": "coco", "shapes_voc": "voc", "shapes_det": "imagenet_det"}


@dataclass
class DetectionDatasetConfig(DatasetConfig):
    # "coco": a json (ann_file) and its image folder (img_dir). "yolo": root/images/<split>/ and one
    # root/labels/<split>/NAME.txt per image (detection/data/yolo.py); ann_file and img_dir are then unused.
    # "voc": root is a VOCdevkit folder and split YEAR_SET parts joined by "+", such as
    # 2007_trainval+2012_trainval (detection/data/voc.py). "imagenet_det": root holds Data/, Annotations/ and
    # ImageSets/ of the ILSVRC DET devkit and split ImageSets/DET list names joined by "+", such as train+val1
    # (detection/data/imagenet_det.py).
    format: str = choice("coco", DATASET_FORMATS)
    root: str = ""
    split: str = ""
    # The class names of a YOLO set: a data.yaml with names:, or a file of one name a line;
    # "": the first of data.yaml, classes.txt and obj.names in root. Of a VOC set: such a file, or ""
    # for the 20 VOC classes. Of an ImageNet DET set: the devkit's map_det.txt, or "" for the synsets
    # of the annotations.
    names: str = ""


@dataclass
class DataConfig:
    train: DetectionDatasetConfig = field(default_factory=lambda: DetectionDatasetConfig(
        "datasets/coco/annotations/instances_train2017.json", "datasets/coco/train2017"))
    # More training sets, concatenated to data.train: a list of entries with the keys of data.train, such
    # as [{ann_file: b/instances.json, img_dir: b/images}, {format: yolo, root: c, split: train}], each
    # with an optional rename: {name in its file: name in data.train}. Categories are matched by name;
    # data.train's give the labels, and a name it lacks becomes a new class after them (docs/CUSTOM_DATA.md).
    train_extra: list[Any] = field(default_factory=list)
    # The evaluation runs on this one set, whose category ids must be those of the training set.
    test: DetectionDatasetConfig = field(default_factory=lambda: DetectionDatasetConfig(
        "datasets/coco/annotations/instances_val2017.json", "datasets/coco/val2017"))
    # "shapes": generate the synthetic dataset into the paths above on first use; "shapes_voc": the same
    # images as a VOCdevkit folder into data.train.root; "shapes_det": in the ILSVRC DET layout into
    # data.train.root.
    synthetic: str = choice("", ("", *SYNTHETIC_FORMATS))
    num_workers: int = non_negative(2)
    aspect_ratio_grouping: bool = True
    on_bad_image: str = choice("skip", ("skip", "fail"))
    filter_empty: bool = False


@dataclass
class TestConfig:
    # Evaluate every N iterations during training (0: only at the end).
    eval_period: int = non_negative(0)
    detections_per_img: int = positive(100)
    score_thresh: float = fraction(0.05)
    nms_thresh: float = fraction(0.5)
    ims_per_batch: int = positive(1)
    # Evaluate at most this many images (0: all), for quick checks.
    max_images: int = non_negative(0)
    # COCO scoring: "auto" is faster_coco_eval when installed (pip install 'resnet-detection[fast-eval]'),
    # else pycocotools; both give the same 12 numbers. metrics.json names the one that scored.
    eval_backend: str = choice("auto", ("auto", "pycocotools", "faster_coco_eval"))
    # "coco": COCO AP (pycocotools). "voc2007": the VOC devkit's AP at IoU 0.5, difficult objects
    # ignored, interpolated at 11 recalls (VOC2007 test); "voc2010": the area under the precision
    # envelope (VOC2010 and later). detection/evaluation/voc_eval.py. "imagenet_det": the ILSVRC DET
    # devkit's AP at IoU min(0.5, wh / ((w + 10)(h + 10))), detection/evaluation/det_eval.py.
    metric: str = choice("coco", ("coco", "voc2007", "voc2010", "imagenet_det"))
    # The paper's test-time improvements (Appendix B); see detection/modeling/test_time.py.
    box_refinement: bool = False
    refine_nms_thresh: float = fraction(0.3)
    box_voting: bool = False
    box_voting_iou: float = fraction(0.5)
    # Multi-scale testing: shorter sides of the image pyramid, e.g. [200, 400, 600, 800, 1000]
    # (null: single scale at input.min_size_test).
    scales: list[int] | None = positive(None, non_empty=True, hint="such as [400, 600, 800], or null for single-scale testing")
    # "paper": proposals at rpn_scale, each RoI's features from two adjacent scales merged by max;
    # "union": detections at every scale (and flips) merged by NMS / box voting.
    multiscale_mode: str = choice("paper", ("paper", "union"))
    rpn_scale: int = non_negative(0)  # 0: input.min_size_test
    # "paper" mode picks, per RoI, the scales where its side is nearest this (224: ImageNet objects).
    canonical_size: float = positive(224.0)
    flip: bool = False  # also test the horizontally flipped image
    # eval_det.py and infer.py fold BatchNorm into the convolutions and run channels_last: the
    # same detections to float rounding, faster (detection/modeling/speed.py).
    fast: bool = True
    # With test.fast: the wide 3x3 convolutions as Winograd F(4x4, 3x3) on CPUs, a quarter of the
    # multiply-adds, same detections to float rounding (resnet_ops/winograd.py).
    winograd: bool = True
    # With test.winograd and test.amp=bf16 on CPUs: those convolutions as Winograd in bfloat16, about
    # 2.7x faster than autocast's bf16 convolution with 10x its rounding error (docs/BENCHMARKS.md
    # measures the AP change); false keeps autocast's convolutions.
    winograd_bf16: bool = True
    # Which convolutions test.winograd converts: [min, max] input and output channels, and the
    # smallest map (pixels) that runs as Winograd. null: 64 to 256 channels, 400 pixels, defaults
    # measured on one CPU (docs/OPERATORS.md): other CPUs may gain from other limits.
    winograd_channels: list[int] | None = positive(None, non_empty=True, hint="[min, max] channels, or null for 64 to 256")
    winograd_min_pixels: int | None = positive(None, hint="or null for 400")
    # Autocast at inference ("bf16" on CPUs with AVX-512 BF16 or AMX, and on GPUs; "fp16" on GPUs).
    # Changes results slightly (docs/BENCHMARKS.md measures the AP change), so off by default.
    amp: str = choice("off", ("off", "bf16", "fp16"))


@dataclass
class AlternatingConfig:
    """The settings of solver.scheme=alternating (detection/alternating.py); each step runs solver's other keys."""

    # Images a mini-batch in the RPN steps (1 and 3) and in the Fast R-CNN steps (2 and 4); 0: solver.ims_per_batch.
    rpn_ims_per_batch: int = non_negative(0)
    fast_rcnn_ims_per_batch: int = non_negative(0)
    # The schedule of each of the four steps; 0 / null: solver.max_iter / solver.steps.
    max_iter: int = non_negative(0)
    steps: list[int] | None = positive(None, hint="such as [240000], or null for solver.steps")


@dataclass
class DetectionSolverConfig(SolverConfig):
    # "joint": one model, the RPN and Fast R-CNN losses summed on each mini-batch. "alternating": Faster
    # R-CNN's 4-step training (RPN, Fast R-CNN on its proposals, then each fine-tuned on the shared layers
    # of the second), each step in its own folder of output_dir (detection/alternating.py).
    scheme: str = choice("joint", ("joint", "alternating"))
    alternating: AlternatingConfig = field(default_factory=AlternatingConfig)


@config_task("detection", tool="tools/train_det.py", model="detector")
@renamed_keys({"model.roi_head.bg_iou_lo": "model.roi_head.bg_iou_low"})
@dataclass
class DetectionConfig:
    output_dir: str = "output/det"
    seed: int = bounded(42, 0, 2**63 - 1)
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    model: ModelConfig = field(default_factory=ModelConfig)
    input: InputConfig = field(default_factory=InputConfig)
    data: DataConfig = field(default_factory=DataConfig)
    solver: DetectionSolverConfig = field(default_factory=DetectionSolverConfig)
    test: TestConfig = field(default_factory=TestConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_detection_config(path=None, overrides=()):
    cfg = load_config(DetectionConfig, path, overrides)
    check_detection_options(cfg)
    return cfg


def check_detection_options(cfg) -> None:
    """Relations between keys, which the ranges of single keys in the schema cannot express."""
    check_datasets(cfg)
    rpn, head = cfg.model.rpn, cfg.model.roi_head
    if rpn.bg_iou_thresh > rpn.fg_iou_thresh:
        raise ConfigError(f"model.rpn.bg_iou_thresh={rpn.bg_iou_thresh} is above model.rpn.fg_iou_thresh="
                          f"{rpn.fg_iou_thresh}: anchors below bg are background, above fg foreground")
    if head.bg_iou_low > head.fg_iou_thresh:
        raise ConfigError(f"model.roi_head.bg_iou_low={head.bg_iou_low} is above model.roi_head.fg_iou_thresh="
                          f"{head.fg_iou_thresh}: background RoIs have IoU in [bg_iou_low, fg_iou_thresh)")
    if cfg.model.weights_keep_classes_by_name and not cfg.model.weights:
        raise ConfigError("model.weights_keep_classes_by_name=true keeps class rows of a detector file: give it as "
                          "model.weights=PATH, or leave the key out")
    if len(head.bbox_reg_weights) != 4:
        raise ConfigError(f"model.roi_head.bbox_reg_weights={list(head.bbox_reg_weights)}: give 4 divisors "
                          f"(x, y, w, h), such as [10, 10, 5, 5]")
    if len(cfg.input.pixel_mean) != 3 or len(cfg.input.pixel_std) != 3:
        raise ConfigError("input.pixel_mean and input.pixel_std need 3 values each, one per colour channel")
    check_augmentations(cfg.input)
    check_anchor_levels(cfg.model)
    check_alternating(cfg.solver)
    check_solver_options(cfg.solver)
    check_winograd_channels("test", cfg.test.winograd_channels)


def check_anchor_levels(model_cfg) -> None:
    """One list of anchor sizes per feature map the RPN sees: the C4 trunk's one map, or the FPN's maps
    of fpn.in_features and P6. Otherwise the first forward would fail, after the data has been read."""
    levels = 1 if model_cfg.arch == "c4" else len(model_cfg.fpn.in_features) + 1
    given = len(model_cfg.anchors.sizes)
    if given == levels:
        return
    examples = {1: "[[64, 128, 256, 512]]", 5: "[[32], [64], [128], [256], [512]]"}
    raise ConfigError(f"model.anchors.sizes gives {given} list{'s' if given != 1 else ''}, one per feature level, "
                      f"and model.arch={model_cfg.arch} has {levels} level{'s' if levels != 1 else ''}: give "
                      f"{examples.get(levels, f'{levels} lists')}")


def alternating_schedule(solver) -> tuple[int, list[int]]:
    """(max_iter, steps) of each step of the alternating training."""
    steps = solver.alternating.steps
    return solver.alternating.max_iter or solver.max_iter, list(solver.steps if steps is None else steps)


def check_alternating(solver) -> None:
    if solver.scheme != "alternating":
        return
    max_iter, steps = alternating_schedule(solver)
    late = [step for step in steps if step >= max_iter]
    if late:
        raise ConfigError(f"solver.alternating.steps={steps} has {late[0]}, not below the {max_iter} iterations of "
                          f"each step: set solver.alternating.steps below solver.alternating.max_iter")


def check_datasets(cfg) -> None:
    """Each set's keys fit its format, and the entries of data.train_extra are well formed."""
    check_dataset_keys(cfg.data.train, "data.train")
    check_dataset_keys(cfg.data.test, "data.test")
    extra_train_sets(cfg)
    synthetic_format = SYNTHETIC_FORMATS.get(cfg.data.synthetic)
    if synthetic_format and cfg.data.train.format != synthetic_format:
        target = {"coco": "a COCO json into data.train.ann_file", "voc": "a VOCdevkit folder into data.train.root",
                  "imagenet_det": "an ILSVRC DET folder into data.train.root"}[synthetic_format]
        raise ConfigError(f"data.synthetic={cfg.data.synthetic} generates {target}: set data.synthetic='' to train "
                          f"on your {cfg.data.train.format.upper()} set")


def check_dataset_keys(dataset, key: str) -> None:
    if dataset.format == "yolo" and not dataset.root:
        raise ConfigError(f"{key}.format=yolo needs {key}.root, the folder that holds images/ and labels/")
    if dataset.format == "voc" and not (dataset.root and dataset.split):
        raise ConfigError(f"{key}.format=voc needs {key}.root, the VOCdevkit folder, and {key}.split, such as "
                          "2007_trainval+2012_trainval")
    if dataset.format == "imagenet_det" and not (dataset.root and dataset.split):
        raise ConfigError(f"{key}.format=imagenet_det needs {key}.root, the folder that holds Data/, Annotations/ "
                          f"and ImageSets/, and {key}.split, such as train+val1")
    if dataset.format != "coco":
        return
    yolo_keys = [name for name in ("root", "split", "names") if dataset[name]]
    if yolo_keys:
        raise ConfigError(f"{key}.{yolo_keys[0]} is a key of YOLO sets: add {key}.format=yolo, or leave it out "
                          "for a COCO json")
    if not dataset.ann_file or not dataset.img_dir:
        raise ConfigError(f"{key} needs ann_file and img_dir (a COCO json and its image folder), or format: yolo "
                          "and root")


EXTRA_DATASET_KEYS = tuple(f.name for f in dataclasses.fields(DetectionDatasetConfig)) + ("rename",)


def extra_train_sets(cfg) -> list[tuple[DictConfig, dict[str, str]]]:
    """The entries of data.train_extra, checked: each as (its keys over the defaults of
    DetectionDatasetConfig, its rename mapping)."""
    return [extra_train_set(entry, f"data.train_extra[{index}]") for index, entry in enumerate(cfg.data.train_extra)]


def extra_train_set(entry, key: str) -> tuple[DictConfig, dict[str, str]]:
    entry = OmegaConf.to_container(entry) if OmegaConf.is_config(entry) else entry
    if not isinstance(entry, dict):
        raise ConfigError(f"{key} is {entry!r}: give a mapping such as {{ann_file: b/instances.json, img_dir: "
                          "b/images}")
    entry = dict(entry)
    for name in entry:
        if name not in EXTRA_DATASET_KEYS:
            close = difflib.get_close_matches(str(name), EXTRA_DATASET_KEYS, n=1)
            hint = f"did you mean {close[0]}?" if close else f"its keys: {', '.join(EXTRA_DATASET_KEYS)}"
            raise ConfigError(f"unknown key '{name}' in {key} ({hint})")
    rename = entry.pop("rename", None) or {}
    if not isinstance(rename, dict) or not all(is_name(part) for pair in rename.items() for part in pair):
        raise ConfigError(f"{key}.rename={rename!r}: give {{name in its file: name in data.train}}, such as "
                          "{motorbike: motorcycle}")
    try:
        dataset = OmegaConf.merge(OmegaConf.structured(DetectionDatasetConfig), entry)
    except OmegaConfBaseException as error:
        raise ConfigError(f"bad value in {key}: {str(error).splitlines()[0]}") from None
    if dataset.format not in DATASET_FORMATS:
        raise ConfigError(f"'{key}.format' is '{dataset.format}': choose one of {', '.join(DATASET_FORMATS)}")
    check_dataset_keys(dataset, key)
    return dataset, {str(old): str(new) for old, new in rename.items()}


def is_name(value) -> bool:
    """A category name as YAML gives it: a string, or a number written without quotes."""
    return isinstance(value, (str, int)) and not isinstance(value, bool)
