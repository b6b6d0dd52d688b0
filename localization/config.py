"""The localization config schema: every key a localizer YAML file or override may set.

Defaults are the paper's ILSVRC localizer (App. C): a per-class RPN on ResNet-101, fine-tuned from an
ImageNet classifier, on the ImageNet augmentation of the classifier (classification/config.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from backbones.config import BackboneConfig
from classification.config import (
    INPUT_RENAMED_KEYS,
    TEST_MODES,
    ClassificationConfig,
    ClassificationInputConfig,
    IlsvrcDataConfig,
    check_pixel_statistics,
)
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
from resnet_engine.schema import LoggingConfig, SolverConfig, check_solver_options

# --------------------------------------------------------------------------------------------- localization


@dataclass
class LocalizerModelConfig:
    """The per-class RPN of localization/rpn_localizer.py."""

    # Fine-tuned from an ImageNet classifier (the paper): the backbone section's defaults freeze BN, the stem
    # and res2, as in the detectors' fine-tuning. They need model.backbone.weights (check_trunk_start).
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(depth=101))
    # The trunk stage feeding the head. res5 (stride 32): the most class-specific features, and ImageNet
    # objects are large enough for a 7x7 grid on a 224 crop. res4 (stride 16) is the detectors' C4 choice.
    feature: str = choice("res5", ("res4", "res5"))
    # Channels of the 3x3 conv in front of the sibling 1x1 cls / reg convs.
    head_channels: int = positive(512)
    # 3 sizes (square root of the area, in input pixels) x 3 ratios (height / width) = 9 anchors per position.
    anchor_sizes: list[float] = positive([64.0, 128.0, 256.0], non_empty=True)
    aspect_ratios: list[float] = positive([0.5, 1.0, 2.0], non_empty=True)
    # Classes of the per-class outputs; 0 = as many as the synset file lists.
    num_classes: int = non_negative(0)


@dataclass
class LocalizerTrainConfig:
    """How anchors are labelled and sampled for each training crop."""

    # At most anchors_per_image * positive_fraction positives, the rest negatives (an image with fewer
    # positive anchors gives more negatives than positives; the paper states 1:1).
    anchors_per_image: int = bounded(8, 2)
    positive_fraction: float = bounded(0.5, 0, 1, low_open=True)
    # IoU >= fg_iou_thresh (or the best anchor of a GT box): positive; < bg_iou_thresh: negative; else ignored.
    fg_iou_thresh: float = fraction(0.7)
    bg_iou_thresh: float = fraction(0.3)
    # A GT box keeps being a target when at least this fraction of its area is inside the crop; the part of a
    # box cut away more than that is neither positive nor background (anchors mostly inside it are ignored).
    min_visible: float = fraction(0.5)
    # "all": every class's sigmoid of a sampled anchor is trained (target 1 only for the image's class at a
    # positive anchor), so the per-class scores can also rank classes; "gt": only the GT class's sigmoid.
    # The paper (appendix C) does not say which sigmoids a sampled anchor trains; the likeliest reading puts
    # the target and the loss on the GT class's alone, "gt". The default "all" is this toolkit's choice, and
    # no shipped config sets the key: every localizer trains with "all".
    cls_loss_classes: str = choice("all", ("all", "gt"))
    box_loss_weight: float = non_negative(1.0)
    # 0.1111, close to the detectors' 1/9 (Fast R-CNN's sigma = 3): the value the localizer's figures in
    # docs/BENCHMARKS.md were trained with.
    smooth_l1_beta: float = non_negative(0.1111)


@dataclass
class LocalizerTestConfig:
    # "1crop": the centre crop (input.crop) of the image resized to `resize`; "dense": the whole image, fully
    # convolutional, at every shorter side of dense_scales (and mirrored when dense_flip).
    mode: str = choice("dense", ("1crop", "dense"))
    resize: int = positive(256)
    dense_scales: list[int] = positive([224, 256, 384, 480, 640], non_empty=True)
    dense_flip: bool = False
    ims_per_batch: int = positive(32)
    # Evaluate (GT-known error, classes ranked by the RPN) every N iterations during training (0: at the end).
    eval_period: int = non_negative(0)
    # Evaluate at most this many val images (0: all), for quick checks.
    max_images: int = non_negative(0)
    # The devkit's validation blacklist (ILSVRC2015_clsloc_validation_blacklist.txt; a number a line, or image
    # names): its images are left out of the LOC errors (not of the CLS ones), as the devkit's eval_clsloc
    # does. Empty: every val image is scored, the rule of the Kaggle LOC_val_solution.csv. The paper does not
    # say which rule its val figures follow; the printed table says which one was used.
    blacklist: str = ""


@dataclass
class LocalizerClassifierConfig:
    """The classifier whose top-5 classes get the RPN's boxes (paper App. C); empty: the RPN ranks classes."""

    # A checkpoint written by tools/train_cls.py (it carries its own config).
    weights: str = ""
    # The classifier's test views. The default, 10-crop, is not the paper's: its ResNet-101 of 4.6% top-5
    # error (appendix C) is Table 4's dense multi-scale result (10-crop, Table 3: 6.05%). Only
    # configs/ilsvrc_loc_r101.yaml sets dense; any other config, or --classifier-weights on shapes_loc, ranks
    # the classes by 10-crop.
    mode: str = choice("10crop", TEST_MODES)


@dataclass
class LocalizerRCNNConfig:
    """The R-CNN stage on top of a trained per-class RPN (paper App. C "RPN+RCNN"; localization/rcnn.py).

    Used when ``task: rcnn``; then ``model.backbone`` is the R-CNN's network (the RPN is rebuilt from the
    config saved in its own checkpoint) and ``test.*`` says on which views the RPN makes the proposals."""

    # A per-class RPN checkpoint of tools/train_loc.py (task: rpn), e.g. output/loc_shapes/model_final.pth.
    rpn_weights: str = ""
    # Proposals per (image, class): the class's highest-scoring RPN boxes, decoded with its own regressor.
    proposals_per_class: int = positive(200)
    # Each proposal is cropped from the original image and warped to warp_size x warp_size.
    warp_size: int = positive(224)
    # Context added around each proposal, in warped pixels on each side (the original R-CNN used 16 of 227).
    # Where it reaches past the image the warp is black (zero pixels); R-CNN fills it with the mean.
    context_pad: int = non_negative(0)
    # RoI-centric mini-batches: solver.ims_per_batch images give rois_per_image RoIs each (1: every RoI of
    # a batch comes from a different image).
    rois_per_image: int = positive(1)
    # Each sampled RoI is foreground with this probability (when the image has one left).
    fg_fraction: float = bounded(0.25, 0, 1, low_open=True)
    # IoU with a GT box >= fg_iou_thresh: foreground (the GT class); in [bg_iou_low, fg_iou_thresh): background.
    fg_iou_thresh: float = fraction(0.5)
    bg_iou_low: float = fraction(0.0)
    # The GT boxes join the training proposals as foreground RoIs, as in the original R-CNN.
    add_gt_boxes: bool = True
    box_loss_weight: float = non_negative(1.0)
    smooth_l1_beta: float = non_negative(1.0)
    # Divisors of the (dx, dy, dw, dh) targets: the R-CNN heads' usual (10, 10, 5, 5).
    bbox_reg_weights: list[float] = positive([10.0, 10.0, 5.0, 5.0])
    # Warped RoIs per forward pass at test time (memory bound only).
    test_chunk: int = positive(256)


# Every key of a classification file is a localization key too: a localization file sets one of its own
# (task, rpn, model.feature, ...), so that a classifier's recipe is not trained as a localizer's.
@config_task("localization", tool="tools/train_loc.py", model="localizer", shares_keys_with=ClassificationConfig)
@renamed_keys({**INPUT_RENAMED_KEYS, "rpn.fg_iou": "rpn.fg_iou_thresh", "rpn.bg_iou": "rpn.bg_iou_thresh",
               "rcnn.fg_iou": "rcnn.fg_iou_thresh", "rcnn.box_coder_weights": "rcnn.bbox_reg_weights"})
@dataclass
class LocalizationConfig:
    # "rpn": the per-class RPN localizer; "rcnn": the R-CNN stage re-scoring its proposals (section rcnn).
    task: str = choice("rpn", ("rpn", "rcnn"))
    output_dir: str = "output/loc"
    seed: int = bounded(42, 0, 2**63 - 1)
    device: str = choice("auto", ("auto", "cpu", "cuda"))
    model: LocalizerModelConfig = field(default_factory=LocalizerModelConfig)
    rpn: LocalizerTrainConfig = field(default_factory=LocalizerTrainConfig)
    input: ClassificationInputConfig = field(default_factory=ClassificationInputConfig)
    data: IlsvrcDataConfig = field(default_factory=lambda: IlsvrcDataConfig(train_list="csv"))
    solver: SolverConfig = field(default_factory=lambda: SolverConfig(
        max_iter=60000, ims_per_batch=256, base_lr=0.01, steps=[40000, 53000], warmup_iters=500,
        checkpoint_period=5000))
    test: LocalizerTestConfig = field(default_factory=LocalizerTestConfig)
    classifier: LocalizerClassifierConfig = field(default_factory=LocalizerClassifierConfig)
    rcnn: LocalizerRCNNConfig = field(default_factory=LocalizerRCNNConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)


def load_localization_config(path: str | None = None, overrides=()):
    cfg = load_config(LocalizationConfig, path, overrides)
    check_localization_options(cfg)
    return cfg


def check_localization_options(cfg) -> None:
    """Relations between keys, which the ranges of single keys in the schema cannot express."""
    check_solver_options(cfg.solver)
    crop = cfg.input.crop
    low_high = list(cfg.input.train_short_side)
    if len(low_high) != 2 or low_high[0] > low_high[1] or low_high[0] < crop:
        raise ConfigError(f"input.train_short_side={low_high}: give [low, high] with input.crop={crop} <= low "
                          f"<= high, such as [256, 480]")
    if cfg.data.train_list != "csv":
        raise ConfigError("data.train_list must be csv for the localizer: it trains on the images of "
                          "LOC_train_solution.csv, the ones with boxes")
    if cfg.test.mode == "1crop" and cfg.test.resize < crop:
        raise ConfigError(f"test.resize={cfg.test.resize} is smaller than input.crop={crop}: the centre crop "
                          f"must fit in the resized image")
    if int(cfg.rpn.anchors_per_image * cfg.rpn.positive_fraction) < 1:
        raise ConfigError(f"rpn.anchors_per_image={cfg.rpn.anchors_per_image} x rpn.positive_fraction="
                          f"{cfg.rpn.positive_fraction} allows no positive anchor: nothing would learn to find "
                          f"an object; raise either")
    if cfg.rpn.bg_iou_thresh > cfg.rpn.fg_iou_thresh:
        raise ConfigError(f"rpn.bg_iou_thresh={cfg.rpn.bg_iou_thresh} is above rpn.fg_iou_thresh="
                          f"{cfg.rpn.fg_iou_thresh}: anchors below bg_iou_thresh are background, above "
                          f"fg_iou_thresh foreground")
    check_pixel_statistics(cfg.input)
    if cfg.task == "rcnn":
        check_rcnn_options(cfg.rcnn)
        if os.path.abspath(os.path.dirname(cfg.rcnn.rpn_weights)) == os.path.abspath(cfg.output_dir):
            raise ConfigError(f"output_dir={cfg.output_dir} holds the RPN of rcnn.rpn_weights: give the R-CNN a "
                              f"folder of its own (its model_final.pth would replace the RPN's), such as "
                              f"output_dir={cfg.output_dir.rstrip('/')}_rcnn")


def check_trunk_start(cfg) -> None:
    """A trunk trained from a classifier's weights, or from scratch with nothing frozen. The schema's defaults
    (the paper's fine-tuning: BN frozen, the stem and res2 fixed) without weights would train the head on
    a random trunk that never learns. Checked when training starts: evaluation builds the trunk from the
    checkpoint, and reading a config needs no weights."""
    backbone = cfg.model.backbone
    if not backbone.weights and (backbone.norm == "frozen_bn" or backbone.freeze_at > 0):
        raise ConfigError(f"model.backbone.weights is empty, with model.backbone.norm={backbone.norm} and "
                          f"freeze_at={backbone.freeze_at}: the random trunk would stay frozen. The localizer is "
                          f"fine-tuned from a classifier: set model.backbone.weights=output/<cls run>/model_final.pth, "
                          f"or model.backbone.norm=bn model.backbone.freeze_at=0 to train from scratch (as "
                          f"configs/shapes_loc.yaml)")


def check_rcnn_options(rcnn) -> None:
    if not rcnn.rpn_weights:
        raise ConfigError("task=rcnn needs rcnn.rpn_weights: the per-class RPN checkpoint that makes the "
                          "proposals, e.g. rcnn.rpn_weights=output/loc_shapes/model_final.pth")
    if rcnn.context_pad >= rcnn.warp_size / 2:
        raise ConfigError(f"rcnn.context_pad={rcnn.context_pad}: give 0 <= pad < warp_size / 2 "
                          f"({rcnn.warp_size / 2:g}), such as 0 or 16")
    if rcnn.bg_iou_low > rcnn.fg_iou_thresh:
        raise ConfigError(f"rcnn.bg_iou_low={rcnn.bg_iou_low} is above rcnn.fg_iou_thresh={rcnn.fg_iou_thresh}: "
                          f"need bg_iou_low <= fg_iou_thresh")
    if len(rcnn.bbox_reg_weights) != 4:
        raise ConfigError(f"rcnn.bbox_reg_weights={list(rcnn.bbox_reg_weights)}: give 4 divisors (x, y, w, h), "
                          f"such as [10, 10, 5, 5]")
