"""YAML inheritance, overrides, validation messages, the saved config and renamed keys."""

import os
import warnings

import pytest
import yaml
from omegaconf import OmegaConf

from detection.config import load_detection_config
from resnet_engine.config import ConfigError, find_config, save_config, shipped_config_dir
from tests.conftest import ROOT


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


@pytest.mark.parametrize("bases, shown", [(5, "5"), ([None], "[null]"), ({"a": 1}, "{a: 1}"), ("", "''")])
def test_a_base_that_is_no_file_name_is_one_line(tmp_path, bases, shown):
    """A number or null was a TypeError traceback, a mapping was read as the list of its keys."""
    path = write(tmp_path / "bad.yaml", {"_base_": bases})
    with pytest.raises(ConfigError) as error:
        load_detection_config(path)
    assert str(error.value) == f"{path}: _base_ must be a config file's name or a list of them, not {shown}"


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


@pytest.mark.parametrize("content, message", [
    (b"solver:\n  max_iter: 10\xff\n", "{path}: not UTF-8 text (byte 0xff at offset 22): save the config as UTF-8"),
    (b"solver:\n\tmax_iter: 10\n", "{path} line 2: invalid YAML (found character '\\t' that cannot start any token: "
                                  "indent with spaces, not tabs)"),
    (b"solver:\n  base_lr: [0.1\nmodel:\n  x: 1\n", "{path} line 3: invalid YAML (expected ',' or ']', but got ':'; "
                                                  "while parsing a flow sequence that starts on line 2)"),
    (b"", "{path} holds no settings: give the keys to set in it, or leave out --cfg to run the defaults"),
    (b"# only a comment\n", "{path} holds no settings: give the keys to set in it, or leave out --cfg to run the "
                            "defaults"),
], ids=["not-utf8", "tab", "open-bracket", "empty", "comment-only"])
def test_unreadable_config_files_are_one_line_with_the_fix(tmp_path, content, message):
    path = tmp_path / "cfg.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as error:
        load_detection_config(str(path))
    assert str(error.value) == message.format(path=path)


def test_a_folder_as_the_config_and_a_shipped_base_by_name(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_detection_config(str(tmp_path))
    assert str(error.value) == f"{tmp_path} is a folder: give a config file (a .yaml) as --cfg"
    path = write(tmp_path / "mine.yaml", "_base_: shapes.yaml\nsolver:\n  max_iter: 3\n")
    mine, shipped = load_detection_config(path), load_detection_config("shapes.yaml")
    assert mine.solver.max_iter == 3 and mine.data.synthetic == shipped.data.synthetic == "shapes"


def test_a_key_given_twice_is_an_error_naming_both_lines(tmp_path):
    """PyYAML keeps the last of two equal keys: max_iter 20 would be run while the file also says 10."""
    path = write(tmp_path / "twice.yaml", "solver:\n  max_iter: 10\n  base_lr: 0.1\n  max_iter: 20\n")
    with pytest.raises(ConfigError) as error:
        load_detection_config(path)
    assert str(error.value) == (f"{path} line 4: invalid YAML ('max_iter' is given twice in one section (lines 2 "
                                f"and 4): keep one)")
    inline = write(tmp_path / "inline.yaml", "solver: {max_iter: 10, max_iter: 20}\n")
    with pytest.raises(ConfigError, match="'max_iter' is given twice in one section"):
        load_detection_config(inline)
    # The same key in two sections, and a YAML merge that overrides on purpose, are fine.
    merged = write(tmp_path / "merged.yaml", "solver: &s {max_iter: 10}\ntest:\n  max_images: 10\n")
    assert load_detection_config(merged).solver.max_iter == 10
    from resnet_engine.config import load_yaml_text
    assert load_yaml_text("a: &b {x: 1}\nc:\n  <<: *b\n  x: 2\n") == {"a": {"x": 1}, "c": {"x": 2}}


def test_empty_section_means_no_change(tmp_path):
    path = write(tmp_path / "empty.yaml", "model:\nsolver:\n  max_iter: 7\n")
    cfg = load_detection_config(path)
    assert cfg.model.backbone.depth == 50 and cfg.solver.max_iter == 7


def test_saved_config_reproduces_the_run(tmp_path):
    cfg = load_detection_config(None, ["solver.steps=[5,9]", "model.arch=fpn", "model.backbone.weights=/w.pth",
                                       "model.anchors.sizes=[[32],[64],[128],[256],[512]]"])
    save_config(cfg, str(tmp_path / "config.yaml"))
    again = load_detection_config(str(tmp_path / "config.yaml"))
    assert again == cfg


def test_every_shipped_config_loads(repo_root):
    import glob
    import os

    paths = sorted(glob.glob(os.path.join(repo_root, "configs", "*.yaml")))
    det = [p for p in paths if not any(task in os.path.basename(p) for task in ("loc", "cls", "cifar"))]
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


def test_numbers_are_yaml_1_2s_in_files_and_overrides(tmp_path):
    """YAML 1.1 read a leading zero as octal (steps [032000] -> 13312) and a:b as base 60 (1:30 -> 90)."""
    path = write(tmp_path / "steps.yaml", "solver:\n  steps: [032000, 048000]\n  base_lr: 1e-3\n  max_iter: 060000\n")
    cfg = load_detection_config(path)
    assert list(cfg.solver.steps) == [32000, 48000] and cfg.solver.max_iter == 60000 and cfg.solver.base_lr == 0.001
    cfg = load_detection_config(None, ["solver.steps=[010, 0x10, 1_000]", "solver.max_iter=2_000"])
    assert list(cfg.solver.steps) == [10, 16, 1000] and cfg.solver.max_iter == 2000
    with pytest.raises(ConfigError, match="'1:30' of type 'str' could not be converted to Integer"):
        load_detection_config(None, ["solver.max_iter=1:30"])


def test_a_text_key_keeps_an_override_that_reads_as_a_number_or_a_date():
    """output_dir=0123 became the folder 83 (octal), a run name 1.10 became 1.1, 2024-01-05 a date."""
    cfg = load_detection_config(None, ["output_dir=0123", "logging.wandb.name=1.10", "logging.mlflow.run_name=2024-01-05"])
    assert cfg.output_dir == "0123" and cfg.logging.wandb.name == "1.10"
    assert cfg.logging.mlflow.run_name == "2024-01-05"
    assert load_detection_config(None, ["output_dir='0123'"]).output_dir == "0123"  # quoted: the same
    # A list of names is still parsed as a list.
    assert list(load_detection_config(None, ["input.augment_presets=[random_crop]"]).input.augment_presets) == [
        "random_crop"]


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
    from classification.config import load_classification_config
    from localization.config import load_localization_config

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


# --------------------------------------------------------------------------------------------- renamed keys

OLD_LOCALIZATION_KEYS = {"rpn.fg_iou": "rpn.fg_iou_thresh", "rpn.bg_iou": "rpn.bg_iou_thresh",
                         "rcnn.fg_iou": "rcnn.fg_iou_thresh", "rcnn.box_coder_weights": "rcnn.bbox_reg_weights",
                         "input.flip": "input.random_flip"}


def with_old_names(text: str, renamed: dict) -> str:
    """A resolved config as an earlier release saved it: the same values under the old key names."""
    tree = yaml.safe_load(text)
    for old, new in renamed.items():
        section, new_leaf = new.rsplit(".", 1)
        holder = tree
        for part in section.split("."):
            holder = holder[part]
        holder[old.rsplit(".", 1)[1]] = holder.pop(new_leaf)
    return yaml.safe_dump(tree)


def test_renamed_key_tables_map_old_names_to_keys_of_their_schema():
    from classification.config import ClassificationConfig
    from localization.config import LocalizationConfig
    from resnet_engine.config import RENAMED_KEYS, schema_keys

    assert RENAMED_KEYS[LocalizationConfig] == OLD_LOCALIZATION_KEYS
    assert RENAMED_KEYS[ClassificationConfig] == {"input.flip": "input.random_flip"}
    for schema, table in RENAMED_KEYS.items():
        leaves = schema_keys(schema)[0]
        assert all(new in leaves and old not in leaves for old, new in table.items()), schema


def test_a_saved_config_of_an_earlier_release_loads_with_one_warning_per_old_key(tmp_path):
    from localization.config import load_localization_config

    changes = ["rpn.fg_iou_thresh=0.6", "rpn.bg_iou_thresh=0.2", "rcnn.fg_iou_thresh=0.45",
               "rcnn.bbox_reg_weights=[8,8,4,4]", "input.random_flip=0.25"]
    current = load_localization_config(None, changes)
    save_config(current, str(tmp_path / "new.yaml"))
    old = tmp_path / "run" / "config.yaml"
    old.parent.mkdir()
    old.write_text(with_old_names((tmp_path / "new.yaml").read_text(), OLD_LOCALIZATION_KEYS))
    with pytest.warns(FutureWarning) as caught:
        again = load_localization_config(str(old))
    assert again == current
    assert (again.rpn.fg_iou_thresh, again.rpn.bg_iou_thresh, again.rcnn.fg_iou_thresh) == (0.6, 0.2, 0.45)
    assert list(again.rcnn.bbox_reg_weights) == [8.0, 8.0, 4.0, 4.0] and again.input.random_flip == 0.25
    assert sorted(str(w.message) for w in caught) == sorted(
        f"{o} in {old} is deprecated: use {n} (the old name is accepted until 0.2)"
        for o, n in OLD_LOCALIZATION_KEYS.items())


def test_old_key_names_in_overrides_and_detection_and_classification_configs():
    from classification.config import load_classification_config

    with pytest.warns(FutureWarning, match=r"^model.roi_head.bg_iou_lo in override 'model.roi_head.bg_iou_lo=0.1' "
                                           r"is deprecated: use model.roi_head.bg_iou_low \(the old name is accepted "
                                           r"until 0.2\)$"):
        cfg = load_detection_config(None, ["model.roi_head.bg_iou_lo=0.1"])
    assert cfg.model.roi_head.bg_iou_low == 0.1
    # The relations between keys see the value under its new name.
    with pytest.warns(FutureWarning), pytest.raises(ConfigError, match=r"^model.roi_head.bg_iou_low=0.9 is above"):
        load_detection_config(None, ["model.roi_head.bg_iou_lo=0.9"])
    with pytest.warns(FutureWarning, match="input.flip"):
        assert load_classification_config(None, ["input.flip=0"]).input.random_flip == 0


def test_old_and_new_name_of_one_key_together_are_an_error(tmp_path):
    from localization.config import load_localization_config

    path = write(tmp_path / "both.yaml", "rcnn:\n  fg_iou: 0.4\n  fg_iou_thresh: 0.6\n")
    with pytest.raises(ConfigError) as error:
        load_localization_config(path)
    assert str(error.value) == (f"rcnn.fg_iou and rcnn.fg_iou_thresh in {path} are the old and the new name of one "
                                f"key: keep rcnn.fg_iou_thresh only")
    for overrides in (["rpn.bg_iou=0.2", "rpn.bg_iou_thresh=0.3"], ["rpn.bg_iou_thresh=0.3", "rpn.bg_iou=0.2"]):
        with pytest.raises(ConfigError, match=r"^rpn.bg_iou and rpn.bg_iou_thresh in the overrides are the old and "
                                              r"the new name of one key: keep rpn.bg_iou_thresh only$"):
            load_localization_config(None, overrides)
    # A file may set the old name over a base that uses the new one (a saved config over a new base).
    write(tmp_path / "base.yaml", "rcnn:\n  fg_iou_thresh: 0.6\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\nrcnn:\n  fg_iou: 0.4\n")
    with pytest.warns(FutureWarning):
        assert load_localization_config(child).rcnn.fg_iou_thresh == 0.4


def test_a_checkpoint_config_with_old_names_resumes_without_spurious_differences():
    from localization.config import LocalizationConfig, load_localization_config
    from resnet_engine.config import config_differences, config_from_text, config_to_text
    from resnet_engine.resume import changed_keys

    current = config_to_text(load_localization_config(None, ["rcnn.fg_iou_thresh=0.45"]))
    saved = with_old_names(current, OLD_LOCALIZATION_KEYS)
    assert "fg_iou_thresh" not in saved and "box_coder_weights" in saved
    assert changed_keys(saved, current) == [] and config_differences(current, saved) == []
    changed = with_old_names(config_to_text(load_localization_config(None, ["rcnn.fg_iou_thresh=0.5",
                                                                              "solver.base_lr=0.02"])),
                             OLD_LOCALIZATION_KEYS)
    assert changed_keys(changed, current) == ["rcnn.fg_iou_thresh: 0.5 -> 0.45", "solver.base_lr: 0.02 -> 0.01"]
    assert changed_keys(changed, current, "rcnn") == ["rcnn.fg_iou_thresh: 0.5 -> 0.45"]
    # A checkpoint's own config (the RPN's for the R-CNN stage, a classifier's) reads the same, silently.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        restored = config_from_text(LocalizationConfig, saved)
    assert restored == load_localization_config(None, ["rcnn.fg_iou_thresh=0.45"])
    assert OmegaConf.get_type(restored.rcnn).__name__ == "LocalizerRCNNConfig"


def test_shipped_configs_are_found_by_name_from_any_folder(tmp_path, monkeypatch):
    """configs/ is installed with the toolkit (package resnet_configs): ``--cfg coco_r101.yaml`` and
    ``--cfg configs/coco_r101.yaml`` work outside the repository, a file of that name in the working
    folder comes first, and a misspelt name gets the closest shipped one."""
    repository_file = load_detection_config(os.path.join(ROOT, "configs", "coco_r101.yaml"))
    monkeypatch.chdir(tmp_path)
    assert os.path.samefile(shipped_config_dir(), os.path.join(ROOT, "configs"))
    for name in ("coco_r101.yaml", "configs/coco_r101.yaml"):
        assert load_detection_config(name) == repository_file
    (tmp_path / "coco_r101.yaml").write_text("_base_: configs/coco_r101.yaml\nseed: 7\n")
    os.makedirs(tmp_path / "configs")
    (tmp_path / "configs" / "coco_r101.yaml").write_text("seed: 5\n")
    assert find_config("coco_r101.yaml") == "coco_r101.yaml"
    with pytest.raises(ConfigError) as error:
        find_config("coco_r10.yaml")
    assert str(error.value) == "config file not found: coco_r10.yaml (did you mean coco_r101.yaml?)"
    with pytest.raises(ConfigError, match=r"config file not found: elsewhere/coco_r101.yaml \(did you mean"):
        find_config("elsewhere/coco_r101.yaml")


def test_seeds_and_winograd_windows_out_of_range_are_config_errors():
    """A negative seed passed the config and failed at the first batch (numpy), one of 2**64 in
    torch.manual_seed; a one-value or reversed channel window failed late or converted nothing."""
    from classification.config import load_classification_config
    for load in (load_detection_config, load_classification_config):
        with pytest.raises(ConfigError, match=r"^seed=-1 must be an integer in \[0, 9223372036854775807\]$"):
            load(None, ["seed=-1"])
        for window in ("[128]", "[256, 128]"):
            with pytest.raises(ConfigError, match=r"^solver.winograd_channels=\[.*\]: give \[min, max\] channels"):
                load(None, [f"solver.winograd_channels={window}"])
    assert load_classification_config(None, ["seed=0"]).seed == 0


def test_winograd_that_converts_nothing_says_so():
    from backbones import create
    from backbones.speed import apply_speed_switches
    from resnet_engine.schema import SolverConfig
    cifar = create("resnet20_cifar")  # 16 to 64 channels, below the default window of 128 to 256
    with pytest.warns(UserWarning, match=r"solver.winograd=true converted no convolution: none has between 128 and "
                                         r"256 channels"):
        apply_speed_switches(cifar, SolverConfig(winograd=True))


@pytest.mark.parametrize("config, overrides, message", [
    ("shapes.yaml", ["model.arch=c4"], "model.anchors.sizes gives 5 lists, one per feature level, and model.arch=c4 "
                                       "has 1 level: give [[64, 128, 256, 512]]"),
    ("coco_r101.yaml", ["model.arch=fpn"], "model.anchors.sizes gives 1 list, one per feature level, and "
                                           "model.arch=fpn has 5 levels: give [[32], [64], [128], [256], [512]]"),
])
def test_anchor_levels_that_do_not_fit_the_architecture_are_a_config_error(config, overrides, message):
    """They failed at the first forward, after the data had been read, with a ValueError."""
    with pytest.raises(ConfigError) as error:
        load_detection_config(config, overrides)
    assert str(error.value) == message


def test_a_list_nested_deeper_than_its_key_takes_is_one_line():
    """solver.steps=[1,[2]] passed the checks of each number and failed when the schedule was built."""
    with pytest.raises(ConfigError) as error:
        load_detection_config(None, ["solver.steps=[1,[2]]"])
    assert str(error.value) == "solver.steps=[1, [2]] must be a list of numbers, not lists nested deeper"
    assert list(load_detection_config(None, ["model.anchors.sizes=[[32,64,128,256]]"]).model.anchors.sizes[0]) == [
        32, 64, 128, 256]
