"""The 4-step alternating training: what each step trains and keeps fixed, the proposals the Fast R-CNN
steps train on, the assembled result, resume and the config keys."""

import copy
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from detection.alternating import (
    ROI_HEADS,
    RPN,
    SHARED,
    FastRCNNStep,
    RPNStep,
    check_step_batches,
    step_solver,
)
from detection.config import load_detection_config
from detection.data.loader import build_train_dataset, build_train_loader
from detection.data.shapes import CLASSES
from detection.modeling.build import build_model
from detection.training import train_detector
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError
from resnet_engine.optim import build_optimizer
from resnet_engine.run_dir import RunDirectoryError
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, data_overrides, subprocess_env

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")
NUM_CLASSES = len(CLASSES)
# Per step: 4 iterations, the learning rate dropping at 3, a checkpoint at 2; one test image.
ALTERNATING = ["solver.scheme=alternating", "solver.alternating.rpn_ims_per_batch=2",
               "solver.alternating.fast_rcnn_ims_per_batch=4", "test.max_images=1"]


def tiny_config(fixed_shapes, *extra):
    # shapes.yaml trains BatchNorm (norm=bn): a frozen part left in train mode would change its statistics.
    return load_detection_config(SHAPES_CFG, TINY_DETECTOR + data_overrides(fixed_shapes) + list(extra))


def one_batch(cfg) -> list[dict]:
    return next(iter(build_train_loader(build_train_dataset(cfg), cfg, 2)))


def state_of(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed_parts(before: dict, after: dict) -> set[str]:
    """The detector parts (backbone, rpn, roi_heads) with any tensor not bit-for-bit equal."""
    return {key.split(".")[0] for key in before if not torch.equal(before[key], after[key])}


def train_a_few_steps(step, cfg, batch, iterations: int = 2) -> None:
    optimizer = build_optimizer(step, cfg.solver)
    step.train()
    for _ in range(iterations):
        losses = step(batch)
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    step.release()


@pytest.fixture
def detector_cfg(fixed_shapes):
    torch.manual_seed(0)
    return tiny_config(fixed_shapes)


def test_rpn_step_trains_rpn_and_trunk_only(detector_cfg):
    batch = one_batch(detector_cfg)
    detector = build_model(detector_cfg, num_classes=NUM_CLASSES)
    before = state_of(detector)
    step = RPNStep(detector, (SHARED, RPN))
    losses = step(batch)
    assert set(losses) == {"loss_rpn_cls", "loss_rpn_box"}
    train_a_few_steps(step, detector_cfg, batch)
    assert changed_parts(before, state_of(detector)) == {"backbone", "rpn"}
    assert all(p.requires_grad for p in detector.roi_heads.parameters())


@pytest.mark.parametrize("arch", ["fpn", "c4"])
def test_fine_tuning_steps_keep_the_shared_layers(fixed_shapes, arch):
    torch.manual_seed(0)
    c4_anchors = ["model.anchors.sizes=[[32, 64, 128]]"] if arch == "c4" else []
    cfg = tiny_config(fixed_shapes, f"model.arch={arch}", *c4_anchors)
    batch = one_batch(cfg)
    detector = build_model(cfg, num_classes=NUM_CLASSES)
    before = state_of(detector)
    train_a_few_steps(RPNStep(detector, (RPN,)), cfg, batch)  # step 3
    after_rpn = state_of(detector)
    assert changed_parts(before, after_rpn) == {"rpn"}
    train_a_few_steps(FastRCNNStep(detector, (ROI_HEADS,), proposer=detector), cfg, batch)  # step 4
    assert changed_parts(after_rpn, state_of(detector)) == {"roi_heads"}


def test_fast_rcnn_step_trains_on_the_first_rpns_proposals(detector_cfg, monkeypatch):
    # Test-time counts far below the training ones: the proposals must keep the training counts.
    cfg = detector_cfg
    cfg.model.rpn.post_nms_topk_test = 5
    batch = one_batch(cfg)
    first = build_model(cfg, num_classes=NUM_CLASSES)
    train_a_few_steps(RPNStep(first, (SHARED, RPN)), cfg, batch)
    detector = build_model(cfg, num_classes=NUM_CLASSES)
    seen = []
    original = detector.roi_heads.sample_proposals
    monkeypatch.setattr(detector.roi_heads, "sample_proposals",
                        lambda proposals, targets: seen.append(proposals) or original(proposals, targets))
    step = FastRCNNStep(detector, (SHARED, ROI_HEADS), proposer=first)
    step.train()
    assert set(step(batch)) == {"loss_cls", "loss_box"}

    # Reference: the first model as at test time, its test counts set to the training ones.
    reference_model = copy.deepcopy(first).eval()
    rpn = reference_model.rpn
    rpn.pre_nms_topk, rpn.post_nms_topk = (rpn.pre_nms_topk[0],) * 2, (rpn.post_nms_topk[0],) * 2
    with torch.no_grad():
        images, sizes = reference_model.preprocess([sample["image"] for sample in batch])
        expected, _ = rpn(images.shape[-2:], reference_model.backbone(images), sizes)
    assert len(seen) == 1 and len(seen[0]) == len(expected) == 2
    for got, want in zip(seen[0], expected):
        assert len(want) > 5
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def final_state(folder) -> dict:
    return torch.load(os.path.join(folder, "model_final.pth"), weights_only=True)["model"]


def part(state: dict, name: str) -> dict:
    return {k: v for k, v in state.items() if k.split(".")[0] == name}


def assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture(scope="module")
def alternating_run(fixed_shapes, tmp_path_factory):
    out = tmp_path_factory.mktemp("alternating")
    cfg = tiny_config(fixed_shapes, *ALTERNATING, f"output_dir={out}")
    metrics = train_detector(cfg)
    return out, metrics


def test_the_result_assembles_the_steps(alternating_run):
    out, metrics = alternating_run
    assert "bbox" in metrics and (out / "metrics.json").is_file()
    step1, step2, step3, step4 = (final_state(out / name) for name in
                                  ("step1_rpn", "step2_fast_rcnn", "step3_rpn", "step4_fast_rcnn"))
    result = final_state(out)
    assert_equal_states(part(result, "backbone"), part(step2, "backbone"))
    assert_equal_states(part(result, "rpn"), part(step3, "rpn"))
    assert_equal_states(part(result, "roi_heads"), part(step4, "roi_heads"))
    assert_equal_states(part(step3, "roi_heads"), part(step2, "roi_heads"))
    assert_equal_states(part(step3, "backbone"), part(step2, "backbone"))
    assert changed_parts(step1, step3) >= {"rpn"}  # step 3 fine-tuned step 1's RPN
    saved = torch.load(out / "model_final.pth", weights_only=True)
    assert saved["iteration"] == 4 and saved["meta"]["task"] == "detection"


def test_each_step_gets_its_batch_and_schedule(fixed_shapes):
    solver = tiny_config(fixed_shapes, *ALTERNATING, "solver.alternating.max_iter=6",
                         "solver.alternating.steps=[5]").solver
    rpn, fast_rcnn = step_solver(solver, "rpn"), step_solver(solver, "fast_rcnn")
    assert (rpn.ims_per_batch, fast_rcnn.ims_per_batch, rpn.max_iter, list(rpn.steps)) == (2, 4, 6, [5])
    # Without the keys: the solver's own batch and schedule.
    default = step_solver(tiny_config(fixed_shapes, "solver.scheme=alternating").solver, "rpn")
    assert (default.ims_per_batch, default.max_iter, list(default.steps)) == (2, 4, [3])


@pytest.mark.parametrize("how", ["--resume", "torchrun restart"])
def test_resume_in_step_3_skips_steps_1_and_2(alternating_run, fixed_shapes, tmp_path, caplog, monkeypatch, how):
    straight, _ = alternating_run
    resumed = tmp_path / "resumed"
    for name in ("step1_rpn", "step2_fast_rcnn"):
        shutil.copytree(straight / name, resumed / name)
    (resumed / "step3_rpn").mkdir()
    shutil.copy(straight / "step3_rpn" / "model_0000002.pth", resumed / "step3_rpn")
    (resumed / "step3_rpn" / "last_checkpoint").write_text("model_0000002.pth")
    untouched = {name: (resumed / name / "metrics.jsonl").read_text()
                 for name in ("step1_rpn", "step2_fast_rcnn")}
    cfg = tiny_config(fixed_shapes, *ALTERNATING, f"output_dir={resumed}")
    if how == "torchrun restart":
        monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    with caplog.at_level("INFO"):
        train_detector(cfg, resume=how == "--resume")
    assert f"resumed from {resumed / 'step3_rpn' / 'model_0000002.pth'} at iteration 2" in caplog.text
    for name, text in untouched.items():
        assert (resumed / name / "metrics.jsonl").read_text() == text
    assert_equal_states(final_state(resumed), final_state(straight))


def test_each_steps_batch_must_split_over_the_processes(fixed_shapes, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    solver = tiny_config(fixed_shapes, *ALTERNATING, "solver.alternating.fast_rcnn_ims_per_batch=3").solver
    with pytest.raises(UserError, match=re.escape("solver.alternating.fast_rcnn_ims_per_batch=3 is not divisible "
                                                  "by the 2 processes: use a multiple of 2")):
        check_step_batches(solver)
    solver = tiny_config(fixed_shapes, "solver.scheme=alternating", "solver.ims_per_batch=1").solver
    with pytest.raises(UserError, match=re.escape("solver.ims_per_batch=1 is smaller than the 2 processes")):
        check_step_batches(solver)


def test_a_fresh_run_stops_at_an_earlier_runs_step_folder(alternating_run, fixed_shapes, tmp_path):
    straight, _ = alternating_run
    shutil.copytree(straight / "step2_fast_rcnn", tmp_path / "step2_fast_rcnn")
    cfg = tiny_config(fixed_shapes, *ALTERNATING, f"output_dir={tmp_path}")
    with pytest.raises(RunDirectoryError, match=re.escape(f"output_dir {tmp_path / 'step2_fast_rcnn'} holds the "
                                                          "checkpoints of an earlier run")):
        train_detector(cfg)
    assert not (tmp_path / "step1_rpn" / "model_final.pth").exists()  # stopped before any training
    train_detector(cfg, overwrite=True)
    assert_equal_states(final_state(tmp_path), final_state(straight))


@pytest.mark.parametrize(("override", "message"), [
    ("solver.alternating.rpn_ims_per_bach=8", "did you mean solver.alternating.rpn_ims_per_batch"),
    ("solver.scheme=alternate", "choose one of joint, alternating"),
    ("solver.alternating.steps=[9]", "solver.alternating.steps=[9] has 9, not below the 4 iterations"),
])
def test_new_keys_are_checked(fixed_shapes, override, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        tiny_config(fixed_shapes, *ALTERNATING, override)
    assert "\n" not in str(caught.value)


def test_train_det_runs_alternating_end_to_end(fixed_shapes, tmp_path):
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + ALTERNATING + [
        "solver.max_iter=1", "solver.steps=[]", "solver.warmup_iters=0", f"output_dir={tmp_path}"]
    command = [sys.executable, os.path.join(ROOT, "tools", "train_det.py"), "--cfg", SHAPES_CFG, *overrides]
    done = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(OMP_NUM_THREADS="1"),
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "step4_fast_rcnn" / "model_final.pth").is_file()


def test_resuming_over_a_finished_step_of_another_model_is_one_line(alternating_run, fixed_shapes, tmp_path):
    """A finished step was loaded without the check a resumed Trainer makes: PyTorch's multi-line list of
    size mismatches, where the config's change is what to say."""
    straight, _ = alternating_run
    resumed = tmp_path / "resumed"
    shutil.copytree(straight / "step1_rpn", resumed / "step1_rpn")
    saved = tiny_config(fixed_shapes, *ALTERNATING).model.roi_head.fc_dim
    cfg = tiny_config(fixed_shapes, *ALTERNATING, f"output_dir={resumed}", f"model.roi_head.fc_dim={saved * 2}")
    with pytest.raises(UserError) as error:
        train_detector(cfg, resume=True)
    message = str(error.value)
    assert message.startswith(f"cannot resume from {resumed / 'step1_rpn' / 'model_final.pth'}: its model differs")
    assert f"model.roi_head.fc_dim: {saved} -> {saved * 2}" in message and "\n" not in message
