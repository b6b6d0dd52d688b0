"""YAML inheritance, overrides, validation messages and the saved config."""

import pytest
import yaml

from detection.config import load_detection_config
from engine.config import ConfigError, save_config


def write(path, data):
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_base_inheritance_with_list_and_overrides(tmp_path):
    write(tmp_path / "a.yaml", {"solver": {"max_iter": 10, "base_lr": 0.1}, "seed": 1})
    write(tmp_path / "b.yaml", {"solver": {"max_iter": 20}, "model": {"backbone": {"depth": 18}}})
    child = write(tmp_path / "child.yaml", {"_base_": ["a.yaml", "b.yaml"], "seed": 5})
    cfg = load_detection_config(child, ["input.min_size_train=[480,512]", "solver.base_lr=0.5"])
    assert cfg.solver.max_iter == 20  # the later base wins
    assert cfg.solver.base_lr == 0.5  # the override wins over the files
    assert cfg.seed == 5
    assert cfg.model.backbone.depth == 18
    assert list(cfg.input.min_size_train) == [480, 512]


def test_single_string_base_and_nested_bases(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.yaml", {"seed": 3})
    write(tmp_path / "sub" / "mid.yaml", {"_base_": "../root.yaml", "output_dir": "x"})
    leaf = write(tmp_path / "sub" / "leaf.yaml", {"_base_": "mid.yaml"})
    cfg = load_detection_config(leaf)
    assert cfg.seed == 3 and cfg.output_dir == "x"


def test_unknown_key_in_file_names_file_and_suggestion(tmp_path):
    path = write(tmp_path / "bad.yaml", {"model": {"backbone": {"dept": 101}}})
    with pytest.raises(ConfigError) as error:
        load_detection_config(path)
    assert str(error.value) == (
        f"unknown key 'model.backbone.dept' in {path} (did you mean model.backbone.depth?)")


def test_unknown_key_in_override_and_wrong_type():
    with pytest.raises(ConfigError, match=r"unknown key 'solver.max_iters' in override 'solver.max_iters=5' "
                                          r"\(did you mean solver.max_iter\?\)"):
        load_detection_config(None, ["solver.max_iters=5"])
    with pytest.raises(ConfigError, match="bad value for 'solver.max_iter' in override 'solver.max_iter=abc'"):
        load_detection_config(None, ["solver.max_iter=abc"])
    with pytest.raises(ConfigError, match="choose one of frozen_bn, bn, syncbn, gn"):
        load_detection_config(None, ["model.backbone.norm=batchnorm"])
    with pytest.raises(ConfigError, match="key=value"):
        load_detection_config(None, ["solver.max_iter"])


def test_missing_files_and_invalid_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        load_detection_config(str(tmp_path / "nope.yaml"))
    path = write(tmp_path / "broken.yaml", "solver:\n  max_iter: [1, 2\n")
    with pytest.raises(ConfigError, match="broken.yaml line .*invalid YAML"):
        load_detection_config(path)
    path = write(tmp_path / "orphan.yaml", {"_base_": "missing.yaml"})
    with pytest.raises(ConfigError, match="_base_ file not found"):
        load_detection_config(path)


def test_empty_section_means_no_change(tmp_path):
    path = write(tmp_path / "empty.yaml", "model:\nsolver:\n  max_iter: 7\n")
    cfg = load_detection_config(path)
    assert cfg.model.backbone.depth == 50 and cfg.solver.max_iter == 7


def test_saved_config_reproduces_the_run(tmp_path):
    cfg = load_detection_config(None, ["solver.steps=[5,9]", "model.arch=fpn", "model.backbone.weights=/w.pth"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_detection_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def test_every_shipped_config_loads(repo_root):
    import glob
    import os

    paths = sorted(glob.glob(os.path.join(repo_root, "configs", "*.yaml")))
    det = [p for p in paths if "loc" not in os.path.basename(p) and "cls" not in os.path.basename(p)]
    for path in det:
        load_detection_config(path)


def test_yaml_1_1_words_stay_strings_for_choices(tmp_path):
    """`amp: off` is the choice "off", not the boolean YAML 1.1 would make of it."""
    path = write(tmp_path / "amp.yaml", "solver:\n  amp: off\n  channels_last: yes\n")
    cfg = load_detection_config(path)
    assert cfg.solver.amp == "off" and cfg.solver.channels_last is True
    cfg = load_detection_config(None, ["solver.amp=off", "solver.channels_last=no", "test.flip=true"])
    assert cfg.solver.amp == "off" and cfg.solver.channels_last is False and cfg.test.flip is True
    cfg = load_detection_config(None, ["solver.amp=bf16"])
    assert cfg.solver.amp == "bf16"


@pytest.mark.parametrize("override, message", [
    ("solver.max_iter=0", "solver.max_iter=0 must be a positive integer"),
    ("solver.max_iter=-5", "solver.max_iter=-5 must be a positive integer"),
    ("input.min_size_train=[-5]", "input.min_size_train=[-5] must be a non-empty list of positive integers"),
    ("input.min_size_train=[]", "input.min_size_train=[] must be a non-empty list of positive integers"),
    ("input.max_size_train=0", "input.max_size_train=0 must be a positive integer"),
    ("input.max_size_test=0", "input.max_size_test=0 must be a positive integer"),
    ("solver.base_lr=-1", "solver.base_lr=-1 must be a positive number"),
    ("solver.base_lr=.nan", "solver.base_lr=nan must be a positive number"),
    ("solver.base_lr=.inf", "solver.base_lr=inf must be a positive number"),
    ("solver.momentum=1", "solver.momentum=1 must be a number in [0, 1)"),
    ("solver.weight_decay=-0.1", "solver.weight_decay=-0.1 must be a number >= 0"),
    ("solver.steps=[100,-1]", "solver.steps=[100, -1] must be a list of positive integers"),
    ("solver.warmup_factor=0", "solver.warmup_factor=0 must be a number in (0, 1]"),
    ("solver.keep_last=0", "solver.keep_last=0 must be a positive integer"),
    ("model.rpn.nms_thresh=1.5", "model.rpn.nms_thresh=1.5 must be a number in [0, 1]"),
    ("model.anchors.sizes=[[32],[]]", "model.anchors.sizes=[[32], []] must be a non-empty list of positive numbers"),
    ("model.rpn.boundary_thresh=.nan", "model.rpn.boundary_thresh=nan must be a finite number"),
    ("test.score_thresh=-0.1", "test.score_thresh=-0.1 must be a number in [0, 1]"),
    ("test.scales=[]", "test.scales=[] must be a non-empty list of positive integers, such as [400, 600, 800], "
                       "or null for single-scale testing"),
    ("data.num_workers=-1", "data.num_workers=-1 must be an integer >= 0"),
])
def test_values_out_of_range_name_key_value_and_range(override, message):
    with pytest.raises(ConfigError) as error:
        load_detection_config(None, [override])
    assert str(error.value) == message


def test_out_of_range_value_in_a_file_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", {"solver": {"ims_per_batch": 0}})
    with pytest.raises(ConfigError) as error:
        load_detection_config(path)
    assert str(error.value) == f"solver.ims_per_batch=0 in {path} must be a positive integer"


def test_limits_themselves_and_null_are_accepted():
    cfg = load_detection_config(None, ["solver.momentum=0", "solver.weight_decay=0", "model.rpn.nms_thresh=1",
                                       "solver.steps=[]", "test.scales=null", "model.rpn.boundary_thresh=-1",
                                       "solver.warmup_factor=1", "solver.base_lr=1e-9"])
    assert cfg.solver.momentum == 0 and cfg.model.rpn.nms_thresh == 1 and list(cfg.solver.steps) == []
    assert cfg.test.scales is None and cfg.solver.base_lr == 1e-9


def test_relations_between_keys():
    with pytest.raises(ConfigError, match=r"model.rpn.bg_iou_thresh=0.8 is above model.rpn.fg_iou_thresh=0.7"):
        load_detection_config(None, ["model.rpn.bg_iou_thresh=0.8"])
    with pytest.raises(ConfigError, match=r"bbox_reg_weights=\[10.0, 10.0\]: give 4 divisors"):
        load_detection_config(None, ["model.roi_head.bbox_reg_weights=[10,10]"])


def test_classification_and_localization_configs_share_the_ranges():
    from localization.config import load_classification_config, load_localization_config

    with pytest.raises(ConfigError, match=r"^solver.base_lr=0 must be a positive number$"):
        load_classification_config(None, ["solver.base_lr=0"])
    with pytest.raises(ConfigError, match=r"^input.color_jitter=1 must be a number in \[0, 1\)$"):
        load_classification_config(None, ["input.color_jitter=1"])
    with pytest.raises(ConfigError, match=r"^rpn.anchors_per_image=1 must be an integer >= 2$"):
        load_localization_config(None, ["rpn.anchors_per_image=1"])
    with pytest.raises(ConfigError, match=r"^rcnn.fg_fraction=0 must be a number in \(0, 1\]$"):
        load_localization_config(None, ["rcnn.fg_fraction=0"])


def test_malformed_override_value_is_one_line_naming_override_and_yaml_problem():
    with pytest.raises(ConfigError) as error:
        load_detection_config(None, ["input.min_size_train=[128"])
    assert str(error.value) == ("override 'input.min_size_train=[128' is not valid YAML (expected ',' or ']', "
                                "but got '<stream end>'); write it like input.min_size_train=[600]")
    with pytest.raises(ConfigError) as error:
        load_detection_config(None, ["input.min_size_train=128"])
    assert str(error.value) == ("'input.min_size_train' in override 'input.min_size_train=128' must be a list in "
                                "brackets, such as input.min_size_train=[600]")
    # Text keys keep characters that YAML reserves.
    cfg = load_detection_config(None, ["output_dir=@runs/[x"])
    assert cfg.output_dir == "@runs/[x"
