"""The classification config: what a CIFAR config fills in (the paper's network, no ImageNet folder), the
shipped CIFAR configs against the paper's parameter counts and warm-up, and the one-line messages."""

import os

import pytest

from classification.classifier import build_classifier, network_name
from classification.config import load_classification_config
from classification.data import loaders
from classification.data.loaders import build_classification_data
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError
from tests.conftest import ROOT

from .tiny_cifar import write_brightness_cifar


def shipped(name: str, *overrides):
    return load_classification_config(os.path.join(ROOT, "configs", name), list(overrides))


# --------------------------------------------------------------------------------------------- data.root


def test_a_cifar_config_without_a_root_keeps_it_empty_and_imagenet_gets_its_folder():
    assert load_classification_config(None, ["data.dataset=cifar10"]).data.root == ""
    assert shipped("cifar10_resnet56.yaml").data.root == ""
    assert load_classification_config(None, []).data.root == "datasets/ilsvrc"
    assert load_classification_config(None, ["data.dataset=cifar10", "data.root=/data/c"]).data.root == "/data/c"
    assert load_classification_config(None, ["data.root=/data/i"]).data.root == "/data/i"


def test_a_cifar_run_without_a_root_reads_the_embedded_set(tmp_path, monkeypatch):
    """From a folder that holds an ImageNet folder in the default place: the embedded set is what is read."""
    embedded = write_brightness_cifar(tmp_path / "embedded")
    (tmp_path / "datasets" / "ilsvrc").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    generated = []
    monkeypatch.setattr(loaders, "ensure_synthetic_cifar", lambda: generated.append(True) or embedded)
    data = build_classification_data(load_classification_config(None, ["data.dataset=cifar10"]), 16)
    assert generated == [True]
    assert data.sizes == {"training": 200, "test": 50} and data.num_classes == 10


def test_cifar100_without_a_root_is_one_line_when_its_data_is_read():
    cfg = shipped("cifar100_resnet56.yaml")  # the shipped config loads: data.root comes from the command line
    assert cfg.data.dataset == "cifar100" and cfg.model.backbone.depth == 56
    with pytest.raises(UserError) as error:
        build_classification_data(cfg, 16)
    assert str(error.value) == ("data.dataset=cifar100 needs data.root, the folder of the official CIFAR-100 files "
                                "(cifar-100-binary or cifar-100-python): the embedded synthetic set is a CIFAR-10")


# --------------------------------------------------------------------------------------------- the networks


def test_unset_shortcut_and_width_take_the_papers_values():
    resnet56, preact164, imagenet = (shipped("cifar10_resnet56.yaml"), shipped("cifar10_preact_resnet164.yaml"),
                                     load_classification_config(None, []))
    assert (resnet56.model.backbone.shortcut, resnet56.model.backbone.base_width) == ("A", 16)
    assert (preact164.model.backbone.shortcut, preact164.model.backbone.base_width) == ("B", 16)
    assert (imagenet.model.backbone.shortcut, imagenet.model.backbone.base_width) == ("B", 64)
    chosen = shipped("cifar10_resnet56.yaml", "model.backbone.shortcut=B", "model.backbone.base_width=32")
    assert (chosen.model.backbone.shortcut, chosen.model.backbone.base_width) == ("B", 32)
    assert network_name(chosen) == "ResNet-56 (width 32)"


def test_imagenet_defaults_add_no_colour_jitter_and_the_shapes_configs_say_theirs_is_not_the_papers():
    """The paper's colour augmentation is AlexNet's PCA lighting only: a config that leaves
    input.color_jitter unset trains without brightness/contrast/saturation jitter."""
    assert load_classification_config(None, []).input.color_jitter == 0.0
    assert shipped("ilsvrc_cls_r50.yaml").input.color_jitter == 0.0
    shapes = shipped("cls_shapes.yaml")
    assert shapes.input.color_jitter == 0.4
    text = open(os.path.join(ROOT, "configs", "cls_shapes.yaml"), encoding="utf-8").read()
    assert "Not in the paper" in text.split("color_jitter")[0].rsplit("crop:", 1)[1]


def basic_cifar_parameters(depth: int, classes: int) -> int:
    """Parameters of a 6n+2 CIFAR net with option-A shortcuts (which have none), counted by hand: a 3x3 conv
    from c to c' channels has 9 c c' weights and no bias, a BN 2 c' parameters, the fc 64 k + k."""
    n = (depth - 2) // 6
    stem = 9 * 3 * 16 + 2 * 16
    stages = 0
    for previous, width in ((16, 16), (16, 32), (32, 64)):
        first_conv = 9 * previous * width + 2 * width
        stages += first_conv + (2 * n - 1) * (9 * width * width + 2 * width)
    return stem + stages + 64 * classes + classes


def parameters(cfg) -> int:
    model = build_classifier(cfg, 100 if cfg.data.dataset == "cifar100" else 10)
    return sum(p.numel() for p in model.parameters())


# Table 6 (and "Identity Mappings" for the pre-activation ResNet-164), to the rounding the papers show.
PAPER_PARAMETERS = [("cifar10_resnet20.yaml", "0.27M"), ("cifar10_resnet32.yaml", "0.46M"),
                    ("cifar10_resnet44.yaml", "0.66M"), ("cifar10_resnet56.yaml", "0.85M"),
                    ("cifar10_resnet110.yaml", "1.7M"), ("cifar10_resnet1202.yaml", "19.4M"),
                    ("cifar10_preact_resnet110.yaml", "1.7M"), ("cifar10_preact_resnet164.yaml", "1.7M")]


@pytest.mark.parametrize("name, paper", PAPER_PARAMETERS, ids=[name for name, _ in PAPER_PARAMETERS])
def test_the_shipped_networks_have_the_papers_parameter_counts(name, paper):
    cfg = shipped(name)
    count = parameters(cfg)
    decimals = len(paper.split(".")[1]) - 1
    assert f"{count / 1e6:.{decimals}f}M" == paper
    if not cfg.model.backbone.preact:
        assert count == basic_cifar_parameters(cfg.model.backbone.depth, 10)


@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_the_plain_nets_have_their_residual_counterparts_parameters(depth):
    plain = shipped(f"cifar10_plain{depth}.yaml")
    assert plain.model.backbone.plain and network_name(plain) == f"plain-{depth}"
    assert parameters(plain) == basic_cifar_parameters(depth, 10) == parameters(shipped(f"cifar10_resnet{depth}.yaml"))


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_the_cifar100_nets_differ_in_their_fc_only(depth):
    cfg = shipped(f"cifar100_resnet{depth}.yaml")
    assert parameters(cfg) == basic_cifar_parameters(depth, 100)


WARMED_UP = ["cifar10_resnet110.yaml", "cifar10_resnet1202.yaml", "cifar10_preact_resnet110.yaml",
             "cifar10_preact_resnet164.yaml", "cifar10_preact_resnet1001.yaml", "cifar100_resnet110.yaml"]


@pytest.mark.parametrize("name", WARMED_UP + ["cifar10_resnet56.yaml", "cifar10_plain56.yaml", "cifar100_resnet56.yaml"])
def test_resnet110_and_deeper_warm_up_until_the_training_error_is_below_80(name):
    cfg = shipped(name)
    until = cfg.solver.warmup_until
    if name in WARMED_UP:
        assert (until.metric, until.below, until.lr_factor, until.window) == ("train_error", 80, 0.1, 20)
    else:
        assert until.metric == "" and until.below is None
    solver = cfg.solver  # the rest of the paper's recipe, the same for every net
    assert (solver.base_lr, solver.momentum, solver.weight_decay, solver.ims_per_batch) == (0.1, 0.9, 1e-4, 128)
    assert (list(solver.steps), solver.max_iter, solver.warmup_iters, solver.optimizer) == ([32000, 48000], 64000, 0,
                                                                                            "sgd")


ILSVRC_CLS_CONFIGS = ["ilsvrc_cls_plain18.yaml", "ilsvrc_cls_plain34.yaml", "ilsvrc_cls_r18.yaml", "ilsvrc_cls_r34a.yaml",
                      "ilsvrc_cls_r34b.yaml", "ilsvrc_cls_r34c.yaml", "ilsvrc_cls_r50.yaml", "ilsvrc_cls_r101.yaml",
                      "ilsvrc_cls_r152.yaml"]


@pytest.mark.parametrize("name", ILSVRC_CLS_CONFIGS)
def test_the_imagenet_configs_train_with_the_papers_recipe(name):
    """Section 3.4: SGD with batches of 256, lr 0.1, momentum 0.9, weight decay 1e-4, up to 60x10^4 iterations
    (the lr divided by 10 every 30 epochs here: the paper divides it on plateaus); the shorter side drawn
    from [256, 480], a 224 crop or its flip, AlexNet's PCA lighting, BN, no dropout. 10-crop testing from a
    shorter side of 256; the dense test at the paper's 5 scales."""
    cfg = shipped(name)
    solver, data_input, test = cfg.solver, cfg.input, cfg.test
    assert (solver.optimizer, solver.ims_per_batch, solver.base_lr, solver.momentum, solver.weight_decay) == (
        "sgd", 256, 0.1, 0.9, 1e-4)
    assert (solver.max_iter, list(solver.steps), solver.gamma, solver.warmup_iters) == (
        600000, [150000, 300000, 450000], 0.1, 0)
    assert solver.warmup_until.metric == ""
    assert (list(data_input.train_short_side), data_input.crop, data_input.random_flip) == ([256, 480], 224, 0.5)
    assert (data_input.lighting_std, data_input.color_jitter) == (0.1, 0.0)
    assert (test.mode, test.resize, list(test.dense_scales)) == ("10crop", 256, [224, 256, 384, 480, 640])
    assert (cfg.model.backbone.norm, cfg.model.backbone.zero_init_residual) == ("bn", False)


def test_the_cifar_recipe_alone_builds_resnet_20():
    """configs/base_cifar.yaml, the recipe the cifar10_* configs share, trained as it is: ResNet-20 (the
    schema's depth of 101 made a bottleneck net of neither paper)."""
    cfg = shipped("base_cifar.yaml")
    assert (cfg.model.backbone.depth, cfg.model.backbone.plain, cfg.model.backbone.shortcut) == (20, False, "A")
    assert parameters(cfg) == basic_cifar_parameters(20, 10)


def test_a_shipped_config_is_found_by_its_name_from_any_folder(tmp_path, monkeypatch):
    """What tools/train_cls.py --cfg cifar10_resnet56.yaml loads."""
    monkeypatch.chdir(tmp_path)
    cfg = load_classification_config("cifar10_resnet56.yaml")
    assert cfg.model.backbone.depth == 56 and cfg.output_dir == "output/cifar10_resnet56"


# --------------------------------------------------------------------------------------------- messages


@pytest.mark.parametrize("override, message", [
    ("solver.warmup_until.metric=train_error", "solver.warmup_until.metric=train_error needs solver.warmup_until.below"),
    ("solver.warmup_until.below=80", "solver.warmup_until.below=80 needs solver.warmup_until.metric"),
    ("model.backbone.depth=21", "model.backbone.depth=21 (data.dataset=cifar10): no CIFAR ResNet of depth 21"),
    ("model.num_classes=100", "model.num_classes=100 but cifar10 has 10 classes: set model.num_classes=0"),
    ("input.crop=24", "input.crop=24 applies to ImageNet only and data.dataset=cifar10: remove it"),
    ("data.val_images=5000", "data.val_images=5000 holds images out of data.train_split=train only: "
                             "data.train_split=trainval trains on every training image"),
])
def test_a_cifar_config_error_is_one_line_naming_the_key(override, message):
    with pytest.raises(ConfigError) as error:
        shipped("cifar10_resnet56.yaml", override)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_cifar_bottleneck_net_of_a_config_is_the_one_backbones_create_builds():
    """The pre-activation ResNet-164 and 1001 stride in the first 1x1 of a bottleneck, as the reference code
    of "Identity Mappings" and backbones.create do; from a config they strided in the 3x3 (the detectors'
    default), with the same tensors: nothing told the two apart. ImageNet nets keep torchvision's 3x3."""
    import torch

    from backbones import create
    from classification.classifier import build_classifier
    cfg = load_classification_config(os.path.join(ROOT, "configs", "cifar10_preact_resnet164.yaml"),
                                     ["model.backbone.depth=11"])
    assert cfg.model.backbone.stride_in_1x1 is True
    from_config = build_classifier(cfg, 10, load_backbone_weights=False).backbone
    reference = create("resnet11_cifar", num_classes=10, preact=True)
    strides = [(name, module.stride) for name, module in reference.named_modules() if isinstance(module, torch.nn.Conv2d)]
    assert strides == [(name, module.stride) for name, module in from_config.named_modules()
                       if isinstance(module, torch.nn.Conv2d)]
    assert ("layer2.0.conv1", (2, 2)) in strides
    imagenet = load_classification_config(os.path.join(ROOT, "configs", "ilsvrc_cls_r50.yaml"), [])
    assert imagenet.model.backbone.stride_in_1x1 is False
    assert load_classification_config(os.path.join(ROOT, "configs", "ilsvrc_cls_r50.yaml"),
                                      ["model.backbone.stride_in_1x1=true"]).model.backbone.stride_in_1x1 is True
