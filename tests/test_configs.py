"""Every shipped config loads and validates (a typo in a key would stop a user's run at once), holds only what
differs from what it inherits, and no constructor default contradicts the schema's; a config given to another
task's tool is refused with one line naming its task."""

import dataclasses
import glob
import inspect
import os
import re
import subprocess
import sys
import warnings

import pytest
import yaml
from omegaconf import OmegaConf

from classification.classifier import Classifier
from classification.config import ClassificationConfig, load_classification_config
from classification.data.imagenet import TrainTransform
from detection.config import DetectionConfig, load_detection_config
from detection.data.transforms import TrainTransform as DetectionTrainTransform
from detection.modeling.backbone import ResNetFPN
from detection.modeling.box_heads import FCHead
from detection.modeling.faster_rcnn import FasterRCNN
from detection.modeling.matching import Matcher
from detection.modeling.poolers import PyramidPooler, SingleLevelPooler
from detection.modeling.roi_heads import RoIHeads
from detection.modeling.rpn import RegionProposalNetwork, RPNHead
from detection.modeling.test_time import TestTimeOptions, box_voting, choose_scale_pairs
from localization.config import LocalizationConfig, load_localization_config
from localization.data.loc_dataset import LocTrainTransform
from localization.data.rcnn_rois import label_proposals
from localization.rcnn import RCNNLocalizer
from localization.rpn_localizer import RPNLocalizer
from resnet_engine.config import RENAMED_KEYS, ConfigError, load_config, read_yaml, save_config, schema_keys
from tests.conftest import ROOT
from tests.helpers import subprocess_env

ALL_CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml")))
CLASSIFICATION_CONFIGS = [p for p in ALL_CONFIGS if os.path.basename(p).startswith(("cls_", "ilsvrc_cls", "cifar", "base_cifar", "base_ilsvrc_cls"))]
LOCALIZATION_CONFIGS = [p for p in ALL_CONFIGS if os.path.basename(p).startswith(("shapes_loc", "ilsvrc_loc"))]
DETECTION_CONFIGS = [p for p in ALL_CONFIGS if p not in CLASSIFICATION_CONFIGS + LOCALIZATION_CONFIGS]


def test_every_config_has_a_loader():
    assert len(DETECTION_CONFIGS) >= 8 and CLASSIFICATION_CONFIGS and LOCALIZATION_CONFIGS
    assert sorted(DETECTION_CONFIGS + CLASSIFICATION_CONFIGS + LOCALIZATION_CONFIGS) == ALL_CONFIGS


@pytest.mark.parametrize("path", DETECTION_CONFIGS, ids=os.path.basename)
def test_detection_config_loads(path):
    cfg = load_detection_config(path, [])
    assert cfg.model.arch in ("c4", "fpn") and cfg.solver.max_iter > 0


@pytest.mark.parametrize("path", CLASSIFICATION_CONFIGS, ids=os.path.basename)
def test_classification_config_loads(path):
    cfg = load_classification_config(path, [])
    assert cfg.input.crop > 0 and cfg.solver.base_lr > 0


@pytest.mark.parametrize("path", LOCALIZATION_CONFIGS, ids=os.path.basename)
def test_localization_config_loads(path):
    cfg = load_localization_config(path, [])
    assert cfg.task in ("rpn", "rcnn") and cfg.solver.max_iter > 0


# --------------------------------------------------------------------------------------------- one source per value


def schema_of(path):
    if path in CLASSIFICATION_CONFIGS:
        return ClassificationConfig
    return LocalizationConfig if path in LOCALIZATION_CONFIGS else DetectionConfig


def inherited_config(path, tmp_path):
    """What ``path`` inherits: its _base_ files over the schema's defaults (the schema alone without bases)."""
    bases = read_yaml(path).get("_base_", [])
    bases = [bases] if isinstance(bases, str) else bases
    stub = tmp_path / "bases_only.yaml"
    stub.write_text(yaml.safe_dump({"_base_": [os.path.join(os.path.dirname(path), b) for b in bases]}))
    return load_config(schema_of(path), str(stub))


# Keys a file may state at their inherited value: data.dataset names the task of the ImageNet classification
# configs, whose other keys a detection config has too (base_ilsvrc_cls.yaml).
TASK_MARKERS = {"data.dataset"}


def redundant_keys(path, tmp_path) -> list[str]:
    """The keys ``path`` sets to the value it would inherit anyway."""
    own = read_yaml(path)
    own.pop("_base_", None)
    inherited, resolved = inherited_config(path, tmp_path), load_config(schema_of(path), path)
    return [key for key in leaf_keys(own) if key not in TASK_MARKERS
            and OmegaConf.select(resolved, key) == OmegaConf.select(inherited, key)]


def leaf_keys(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaf_keys(value, f"{prefix}{key}.")
        elif value is not None or f"{prefix}{key}" not in SECTIONS:
            yield prefix + key


SECTIONS = set().union(*(schema_keys(s)[1] for s in (DetectionConfig, ClassificationConfig, LocalizationConfig)))


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_a_config_holds_only_what_differs_from_its_base(path, tmp_path):
    """A base file repeats no schema default and a config no value of its base: each value has one home."""
    assert redundant_keys(path, tmp_path) == []


def test_a_repeated_value_is_found(tmp_path):
    (tmp_path / "base.yaml").write_text("solver:\n  base_lr: 0.5\n")
    child = tmp_path / "child.yaml"
    child.write_text("_base_: base.yaml\nsolver:\n  base_lr: 0.5\n  max_iter: 90000\n  gamma: 0.2\n")
    # base_lr repeats the base, max_iter the schema default; gamma is the only setting of its own.
    assert redundant_keys(str(child), tmp_path) == ["solver.base_lr", "solver.max_iter"]


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=os.path.basename)
def test_shipped_configs_use_no_old_key_names(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        load_config(schema_of(path), path)


# Constructor and function parameters that carry a config key, by schema: {callable: {parameter: key}}. A
# parameter with a default must default to the schema's value (a second literal that drifted would change
# what a model built by hand does, not what a config builds).
DETECTION_PARAMETERS = {
    RegionProposalNetwork: {name: f"model.rpn.{name}" for name in (
        "batch_size_per_image", "positive_fraction", "nms_thresh", "min_size", "smooth_l1_beta", "loss_weight",
        "boundary_thresh")},
    RPNHead: {"conv_channels": "model.rpn.conv_channels"},
    Matcher: {"bg_iou_low": "model.roi_head.bg_iou_low"},
    RoIHeads: {"batch_size_per_image": "model.roi_head.batch_size_per_image",
               "positive_fraction": "model.roi_head.positive_fraction",
               "bbox_reg_weights": "model.roi_head.bbox_reg_weights",
               "smooth_l1_beta": "model.roi_head.smooth_l1_beta", "global_context": "model.roi_head.global_context",
               "score_thresh": "test.score_thresh", "nms_thresh": "test.nms_thresh",
               "detections_per_img": "test.detections_per_img"},
    FCHead: {"num_fc": "model.roi_head.num_fc", "fc_dim": "model.roi_head.fc_dim"},
    SingleLevelPooler: {"output_size": "model.roi_head.pooler_resolution",
                        "sampling_ratio": "model.roi_head.sampling_ratio", "kind": "model.roi_head.pooler",
                        "impl": "model.roi_head.roi_align_impl"},
    PyramidPooler: {"output_size": "model.roi_head.pooler_resolution",
                    "impl": "model.roi_head.roi_align_impl"},
    ResNetFPN: {"in_features": "model.fpn.in_features", "out_channels": "model.fpn.out_channels"},
    FasterRCNN: {name: f"input.{name}" for name in ("pixel_mean", "pixel_std", "size_divisibility")}
    | {"input_format": "input.format"},
    TestTimeOptions: {"base_scale": "input.min_size_test", "max_size": "input.max_size_test"}
    | {f.name: f"test.{f.name}" for f in dataclasses.fields(TestTimeOptions) if f.name not in ("base_scale", "max_size")},
    box_voting: {"iou_thresh": "test.box_voting_iou"},
    choose_scale_pairs: {"canonical": "test.canonical_size"},
    DetectionTrainTransform: {"flip_prob": "input.random_flip"},
}
CLASSIFICATION_PARAMETERS = {
    Classifier: {"pixel_mean": "input.pixel_mean", "pixel_std": "input.pixel_std", "input_format": "input.format"},
    TrainTransform: {"flip_prob": "input.random_flip", "color_jitter": "input.color_jitter",
                     "lighting_std": "input.lighting_std"},
}
LOCALIZATION_PARAMETERS = {
    RPNLocalizer: {"head_channels": "model.head_channels", "anchor_sizes": "model.anchor_sizes",
                   "aspect_ratios": "model.aspect_ratios", "pixel_mean": "input.pixel_mean",
                   "pixel_std": "input.pixel_std", "input_format": "input.format"},
    RCNNLocalizer: {"pixel_mean": "input.pixel_mean", "pixel_std": "input.pixel_std", "input_format": "input.format"},
    LocTrainTransform: {"flip_prob": "input.random_flip", "color_jitter": "input.color_jitter",
                        "lighting_std": "input.lighting_std", "min_visible": "rpn.min_visible"},
    label_proposals: {"fg_iou_thresh": "rcnn.fg_iou_thresh", "bg_iou_low": "rcnn.bg_iou_low"},
}


def as_plain(value):
    """Config and Python values alike: lists and tuples as lists of plain values."""
    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value)
    return [as_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def drifted_defaults(schema, parameters) -> list[str]:
    """``callable.parameter: default != key: schema default`` for each parameter whose default differs."""
    defaults = OmegaConf.structured(schema)
    found = []
    for function, keys in parameters.items():
        signature = inspect.signature(function)
        for name, key in keys.items():
            assert OmegaConf.select(defaults, key, default="absent") != "absent", key  # the table itself is right
            default = signature.parameters[name].default
            if default is not inspect.Parameter.empty and as_plain(default) != as_plain(OmegaConf.select(defaults, key)):
                found.append(f"{function.__qualname__}.{name}: {default!r} != {key}: {OmegaConf.select(defaults, key)}")
    return found


@pytest.mark.parametrize("schema, parameters", [(DetectionConfig, DETECTION_PARAMETERS),
                                                (ClassificationConfig, CLASSIFICATION_PARAMETERS),
                                                (LocalizationConfig, LOCALIZATION_PARAMETERS)],
                         ids=["detection", "classification", "localization"])
def test_no_parameter_default_contradicts_the_schema(schema, parameters):
    assert drifted_defaults(schema, parameters) == []


def test_a_drifted_parameter_default_is_found():
    def rpn_loss(smooth_l1_beta=0.1111, nms_thresh=0.7, loss_weight=1.0, boundary_thresh=-1):
        return smooth_l1_beta, nms_thresh, loss_weight, boundary_thresh

    keys = {name: f"model.rpn.{name}" for name in ("smooth_l1_beta", "nms_thresh", "loss_weight", "boundary_thresh")}
    assert drifted_defaults(DetectionConfig, {rpn_loss: keys}) == [
        "test_a_drifted_parameter_default_is_found.<locals>.rpn_loss.smooth_l1_beta: 0.1111 != "
        "model.rpn.smooth_l1_beta: 0.1111111111111111"]


def test_sibling_schemas_share_the_imagenet_statistics():
    detection, classification = OmegaConf.structured(DetectionConfig), OmegaConf.structured(ClassificationConfig)
    localization = OmegaConf.structured(LocalizationConfig)
    for key in ("input.pixel_mean", "input.pixel_std", "input.format", "input.random_flip"):
        values = {str(as_plain(OmegaConf.select(cfg, key))) for cfg in (detection, classification, localization)}
        assert len(values) == 1, (key, values)
    assert as_plain(detection.input.pixel_mean) == [123.675, 116.28, 103.53]  # torchvision's ImageNet weights


# --------------------------------------------------------------------------------------------- keys named in prose


# Dotted names in the docs and configs that look like keys and are not: attributes of a built model, file
# names, and the misspelled keys of the documented error messages.
NOT_KEYS = {
    "model.act1", "model.layer1", "model.response_modules", "model.state_dict",  # a backbone's attributes
    "model.config.input.min_size_test",  # the built detector's config, read back (README)
    "test.bin", "test.txt",  # file names
    "solver.base_rl", "model.backbone.dept", "model.rpn.nms_thres", "model.roi_head.bg_iou_lo",  # typos, on purpose
    "solver.max_iters",
}
PROSE = sorted(glob.glob(os.path.join(ROOT, "docs", "*.md"))) + [os.path.join(ROOT, "README.md")] + ALL_CONFIGS


def unknown_keys(text: str) -> set[str]:
    """The dotted names in ``text`` that start like a config key and are no key of any task's schema."""
    schemas = (DetectionConfig, ClassificationConfig, LocalizationConfig)
    known = set(SECTIONS).union(*(schema_keys(schema)[0] for schema in schemas))
    known |= {old for schema in schemas for old in RENAMED_KEYS.get(schema, {})}  # accepted, with a warning
    starts = "|".join(sorted({key.split(".")[0] for key in known if "." in key}))
    found = re.findall(rf"(?<![\w./-])((?:{starts})(?:\.[a-z_][a-z0-9_]*)+)", text)
    return {key for key in found if key not in known and not key.endswith((".py", ".yaml", ".json", ".pth", ".md"))}


@pytest.mark.parametrize("path", PROSE, ids=os.path.basename)
def test_the_docs_and_configs_name_only_keys_that_exist(path):
    with open(path, encoding="utf-8") as handle:
        assert unknown_keys(handle.read()) - NOT_KEYS == set()


def test_a_key_renamed_in_the_code_but_not_in_the_docs_is_found():
    text = "Set `model.roi_heads.roi_align_impl=gather` (or model.roi_head.roi_align_impl); see solver.base_lr."
    assert unknown_keys(text) == {"model.roi_heads.roi_align_impl"}


# --------------------------------------------------------------------------------------------- a config of another task


def shipped(name):
    return os.path.join(ROOT, "configs", name)


LOADERS = {"detection": load_detection_config, "classification": load_classification_config,
           "localization": load_localization_config}
TOOLS = {"detection": "tools/train_det.py", "classification": "tools/train_cls.py", "localization": "tools/train_loc.py"}
# A classification file sets no key that the localization schema lacks: the localizer would train on its recipe.
SHARED_KEYS_HINT = " (a localization config sets keys of its own, such as task or rpn)"


@pytest.mark.parametrize("loader, name, task, hint", [
    ("detection", "cls_shapes.yaml", "classification", ""),
    ("detection", "cifar10_resnet20.yaml", "classification", ""),
    ("detection", "shapes_loc_rcnn.yaml", "localization", ""),
    ("classification", "shapes.yaml", "detection", ""),  # its first unknown key is in its _base_ file
    ("classification", "shapes_loc.yaml", "localization", ""),
    ("localization", "shapes.yaml", "detection", ""),
    ("localization", "cifar10_resnet20.yaml", "classification", ""),
    ("localization", "cls_shapes.yaml", "classification", SHARED_KEYS_HINT),
    ("localization", "ilsvrc_cls_r50.yaml", "classification", ""),
    ("detection", "ilsvrc_cls_r50.yaml", "classification", ""),  # every key but data.dataset is detection's too
    ("detection", "ilsvrc_cls_r18.yaml", "classification", ""),
])
def test_a_config_of_another_task_names_its_task_and_tool(loader, name, task, hint):
    with pytest.raises(ConfigError) as error:
        LOADERS[loader](shipped(name), [])
    assert str(error.value) == f"{shipped(name)} is a {task} config: run it with {TOOLS[task]}{hint}"


@pytest.mark.parametrize("task, name", [("detection", "shapes.yaml"), ("classification", "cls_shapes.yaml"),
                                        ("classification", "cifar10_resnet20.yaml"),
                                        ("localization", "shapes_loc.yaml"), ("localization", "shapes_loc_rcnn.yaml")])
def test_a_saved_run_config_loads_in_its_own_task_only(tmp_path, task, name):
    cfg = LOADERS[task](shipped(name), [])
    saved = tmp_path / "run" / "config.yaml"
    save_config(cfg, str(saved))
    assert LOADERS[task](str(saved), []) == cfg
    for other in set(LOADERS) - {task}:
        with pytest.raises(ConfigError) as error:
            LOADERS[other](str(saved), [])
        assert str(error.value) == f"{saved} is a {task} config: run it with {TOOLS[task]}"


def test_a_localization_file_needs_one_key_of_its_own_in_it_or_its_bases(tmp_path):
    common = {"output_dir": str(tmp_path / "out"), "solver": {"max_iter": 7}, "input": {"crop": 96}}
    marked = tmp_path / "marked.yaml"
    marked.write_text(yaml.safe_dump({**common, "task": "rpn"}))
    assert load_localization_config(str(marked), []).solver.max_iter == 7
    child = tmp_path / "child.yaml"
    child.write_text(yaml.safe_dump({"_base_": shipped("shapes_loc.yaml"), **common}))
    assert load_localization_config(str(child), []).model.feature == "res4"  # the base's
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(common))
    with pytest.raises(ConfigError) as error:
        load_localization_config(str(bare), [])
    assert str(error.value) == f"{bare} is a classification config: run it with tools/train_cls.py{SHARED_KEYS_HINT}"
    # Overrides do not make a classification file a localizer's: the file still holds the classifier's recipe.
    with pytest.raises(ConfigError, match="is a classification config"):
        load_localization_config(str(bare), ["task=rpn"])


def test_a_typo_that_fits_no_task_keeps_the_unknown_key_message(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump({"data": {"root": "x"}, "model": {"feature": "res4", "backbone": {"dept": 18}}}))
    with pytest.raises(ConfigError) as error:
        load_localization_config(str(path), [])
    assert str(error.value) == f"unknown key 'model.backbone.dept' in {path} (did you mean model.backbone.depth?)"
    with pytest.raises(ConfigError, match=r"^unknown key 'data.root' in .*typo.yaml \(did you mean data.test.root\?\)$"):
        load_detection_config(str(path), [])


def test_a_tool_that_imported_only_its_own_task_names_the_other_task():
    """Each task's schema registers itself when its module is imported, and resnet_engine imports none of
    them at the top: a detection tool has not imported the classification schema when it meets its file."""
    code = ("import sys\nfrom detection.config import load_detection_config\n"
            "assert 'classification.config' not in sys.modules\n"
            f"try:\n    load_detection_config({shipped('cls_shapes.yaml')!r})\n"
            "except Exception as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(),
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == (f"{shipped('cls_shapes.yaml')} is a classification config: run it with "
                                     f"tools/train_cls.py")
