"""Training end to end: exact resume, distributed equivalence, overfitting a few images, the C4 model."""

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision

from detection.config import load_detection_config
from detection.training import train_detector
from tests.conftest import ROOT
from tests.helpers import TINY_DETECTOR, data_overrides, make_fixed_size_shapes, subprocess_env

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")


def final_weights(out_dir) -> dict:
    return torch.load(os.path.join(out_dir, "model_final.pth"), weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].numel())
    assert worst <= atol, f"largest difference {worst}"


def test_resume_continues_exactly(fixed_shapes, tmp_path):
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + ["test.max_images=1"]
    straight = tmp_path / "straight"
    train_detector(load_detection_config(SHAPES_CFG, overrides + [f"output_dir={straight}"]))
    # A second run starts from the straight run's checkpoint at iteration 2, as after a crash.
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copy(straight / "model_0000002.pth", resumed / "model_0000002.pth")
    (resumed / "last_checkpoint").write_text("model_0000002.pth")
    train_detector(load_detection_config(SHAPES_CFG, overrides + [f"output_dir={resumed}"]), resume=True)
    assert_same_weights(final_weights(straight), final_weights(resumed))
    state = torch.load(resumed / "model_final.pth", weights_only=True)
    assert state["iteration"] == 4 and state["scheduler"]["last_epoch"] == 4


def test_resume_falls_back_past_a_damaged_checkpoint(fixed_shapes, tmp_path, caplog):
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + ["test.max_images=1", "solver.checkpoint_period=1",
                                                                "solver.max_iter=3", f"output_dir={tmp_path}"]
    cfg = load_detection_config(SHAPES_CFG, overrides)
    train_detector(cfg)
    # The final evaluation made model_best.pth at iteration 3 too: damage both states of iteration 3.
    (tmp_path / "model_final.pth").write_bytes(b"truncated")
    (tmp_path / "model_best.pth").write_bytes(b"truncated")
    longer = load_detection_config(SHAPES_CFG, overrides + ["solver.max_iter=4"])
    with pytest.warns(UserWarning, match=r"model_(final|best).pth is damaged or truncated .*; falling back to "
                                         r"model_0000002.pth") as caught:
        with caplog.at_level("INFO"):
            train_detector(longer, resume=True)
    assert f"resumed from {tmp_path / 'model_0000002.pth'} at iteration 2" in caplog.text
    assert sum("falling back" in str(w.message) for w in caught) == 2
    assert (tmp_path / "model_final.pth.damaged").read_bytes() == b"truncated"
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if r["type"] == "train"] == [2, 4]  # the first run's 3 replaced
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["iteration"] == 4


def torchrun(nproc: int, *args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--standalone", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)


def test_two_processes_match_one_process_with_the_same_global_batch(fixed_shapes, tmp_path):
    # GroupNorm: per-image statistics, so that the split of the batch over processes does not matter.
    # NCHW: oneDNN picks other channels_last kernels for a batch of 1 than of 2, and AdamW turns
    # their rounding differences on near-zero gradients into lr-sized steps (~1e-3 apart).
    worker = os.path.join(ROOT, "tests", "detection", "ddp_worker.py")
    # seed=4: with the helpers' seed 3, one sampled RoI of the last step sits within float rounding of an
    # IoU threshold, so one process and two (whose gradients differ in the last bits) label it differently
    # and the weights end 6e-5 apart (loss_cls of that step alone differs); seeds 4 and 5 end 3e-8 apart.
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + [
        "test.max_images=2", "model.backbone.norm=gn", "data.aspect_ratio_grouping=true",
        "solver.channels_last=false", "seed=4"]
    two = torchrun(2, worker, SHAPES_CFG, *overrides, f"output_dir={tmp_path / 'two'}")
    assert two.returncode == 0, two.stderr[-4000:]
    one = subprocess.run([sys.executable, worker, SHAPES_CFG, *overrides, f"output_dir={tmp_path / 'one'}"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=subprocess_env(OMP_NUM_THREADS="1"))
    assert one.returncode == 0, one.stderr[-4000:]
    rank0 = torch.load(tmp_path / "two" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "two" / "rank1.pt", weights_only=True)
    assert_same_weights(rank0, rank1)
    single = torch.load(tmp_path / "one" / "rank0.pt", weights_only=True)
    assert_same_weights(rank0, single, atol=1e-5)
    # Evaluation is sharded over the two processes and gathered: the same numbers as one process.
    metrics_two = json.loads((tmp_path / "two" / "metrics.json").read_text())["bbox"]
    metrics_one = json.loads((tmp_path / "one" / "metrics.json").read_text())["bbox"]
    assert metrics_two == pytest.approx(metrics_one, abs=1e-3)


def test_batch_not_divisible_by_processes_is_refused_before_work(fixed_shapes, tmp_path):
    result = torchrun(2, os.path.join(ROOT, "tools", "train_det.py"), *TINY_DETECTOR, *data_overrides(fixed_shapes),
                      "solver.ims_per_batch=3", f"output_dir={tmp_path}")
    assert result.returncode != 0
    assert "solver.ims_per_batch=3 is not divisible by the 2 processes" in result.stderr
    assert not (tmp_path / "config.yaml").exists()


def test_syncbn_on_cpu_processes_is_a_clear_error(fixed_shapes, tmp_path):
    result = torchrun(2, os.path.join(ROOT, "tools", "train_det.py"), *TINY_DETECTOR, *data_overrides(fixed_shapes),
                      "model.backbone.norm=syncbn", f"output_dir={tmp_path}")
    assert result.returncode != 0
    assert "error: norm=syncbn needs CUDA devices" in result.stderr


def test_overfits_a_handful_of_images(tmp_path):
    root = tmp_path / "data"
    make_fixed_size_shapes(str(root), "train", 3, seed=7)
    make_fixed_size_shapes(str(root), "val", 3, seed=7)  # the same images: memorizing them is the test
    overrides = TINY_DETECTOR + data_overrides(root) + [
        "solver.optimizer=adamw", "solver.base_lr=0.002", "solver.weight_decay=0.0", "solver.max_iter=200",
        "solver.steps=[160]", "solver.warmup_iters=20", "solver.checkpoint_period=0", "solver.log_period=50",
        "input.random_flip=0.0", "model.backbone.norm=gn", f"output_dir={tmp_path / 'run'}"]
    metrics = train_detector(load_detection_config(SHAPES_CFG, overrides))
    assert metrics["bbox"]["AP50"] >= 90, metrics["bbox"]


def test_c4_detector_trains_and_evaluates(fixed_shapes, tmp_path):
    """The paper's design (RPN on res4, res5 head per RoI) through the same trainer, in miniature."""
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + [
        "model.arch=c4", "model.backbone.depth=18", "model.backbone.weights=null", "model.backbone.norm=bn", "model.backbone.freeze_at=0",
        "model.anchors.sizes=[[32,64,128]]", "model.rpn.pre_nms_topk_train=300", "model.rpn.post_nms_topk_train=100",
        "model.rpn.pre_nms_topk_test=300", "model.rpn.post_nms_topk_test=50", "test.max_images=2",
        f"output_dir={tmp_path}"]
    cfg = load_detection_config(os.path.join(ROOT, "configs", "coco_r50.yaml"), overrides)
    metrics = train_detector(cfg)
    bbox = metrics["bbox"]
    assert 0 <= bbox["AP"] <= bbox["AP50"] <= 100, bbox  # AP averages precisions at IoU 0.5 and stricter
    assert json.loads((tmp_path / "metrics.json").read_text())["bbox"] == pytest.approx(bbox)
    final = final_weights(tmp_path)
    # The trunk is conv1..res4 (torchvision's names: layer4 is res5); res5 lives in the head, with
    # exactly the tensors of a ResNet-18's layer4, a quarter as wide (base_width 16 instead of 64).
    assert {k.split(".")[1] for k in final if k.startswith("backbone.")} == {"conv1", "bn1", "layer1", "layer2",
                                                                             "layer3"}
    prefix = "roi_heads.box_head.res5."
    head_res5 = {k[len(prefix):]: tuple(v.shape) for k, v in final.items() if k.startswith(prefix)}
    quarter = {k: tuple(d // 4 if axis < 2 else d for axis, d in enumerate(v.shape))
               for k, v in torchvision.models.resnet18().layer4.state_dict().items()}
    assert head_res5 == quarter
    # ... and trains there: its weights moved between the checkpoint of iteration 2 and the last one.
    second = torch.load(tmp_path / "model_0000002.pth", weights_only=True)["model"]
    assert not torch.equal(second[prefix + "1.conv2.weight"], final[prefix + "1.conv2.weight"])


def logged_losses(out_dir) -> dict:
    """The loss terms of the last training record of a run's metrics.jsonl."""
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"][-1]


def test_channels_last_and_bf16_autocast_train_on_cpu(fixed_shapes, tmp_path):
    """The first two steps' losses under channels_last and bf16 autocast are those of an fp32 NCHW
    run to bf16 rounding, and those of an untrained detector: objectness logits near 0 give a binary
    cross-entropy of ln 2, class logits near 0 a cross-entropy of ln 6 (5 shapes and background)."""
    losses = {}
    for name, extra in (("fp32", ["solver.channels_last=false", "solver.amp=off"]),
                        ("bf16", ["solver.channels_last=true", "solver.amp=bf16"])):
        out = tmp_path / name
        overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + extra + [
            "solver.max_iter=2", "solver.checkpoint_period=0", "test.max_images=1", f"output_dir={out}"]
        train_detector(load_detection_config(SHAPES_CFG, overrides))
        losses[name] = logged_losses(out)
    assert losses["bf16"]["loss_rpn_cls"] == pytest.approx(math.log(2), abs=0.01)
    assert losses["bf16"]["loss_cls"] == pytest.approx(math.log(6), abs=0.02)
    # The RoI box loss depends on which proposals were sampled, which rounding may change.
    for name in ("loss_rpn_cls", "loss_rpn_box", "loss_cls"):
        assert losses["bf16"][name] == pytest.approx(losses["fp32"][name], rel=0.01), name
    state = torch.load(tmp_path / "bf16" / "model_final.pth", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_winograd_training_follows_the_direct_convolutions(fixed_shapes, tmp_path):
    """solver.winograd=true: the FPN's and the RPN's 3x3 convolutions (128 channels here, maps of
    40x60 and more) train in the Winograd domain, forward and backward. The second step's update
    of their weights is the direct convolutions' one, float rounding apart."""
    from backbones.speed import apply_speed_switches
    from detection.modeling.build import build_model
    from resnet_ops.winograd import WinogradConv2d

    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + [
        "model.fpn.out_channels=128", "solver.max_iter=2", "solver.checkpoint_period=1", "test.max_images=1"]
    cfg = load_detection_config(SHAPES_CFG, overrides + ["solver.winograd=true"])
    model = apply_speed_switches(build_model(cfg, 3, backbone_weights=False), cfg.solver)
    converted = [name for name, m in model.named_modules() if isinstance(m, WinogradConv2d)]
    assert sum(".fpn." in n or n.startswith("rpn.") for n in converted) == 5  # 4 FPN outputs + RPN
    updates = {}
    for winograd in ("false", "true"):
        out = tmp_path / winograd
        train_detector(load_detection_config(SHAPES_CFG, overrides + [f"solver.winograd={winograd}",
                                                                     f"output_dir={out}"]))
        first = torch.load(out / "model_0000001.pth", weights_only=True)["model"]
        updates[winograd] = {k: v - first[k] for k, v in final_weights(out).items()
                             if (k.startswith("rpn.head.conv") or ".fpn.layer_blocks" in k) and k.endswith("weight")}
    for name, expected in updates["false"].items():
        error = float((updates["true"][name] - expected).abs().max() / expected.abs().max())
        assert error < 1e-2, name
