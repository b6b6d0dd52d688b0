"""The CUDA paths: detections on the GPU, training under each solver.amp, torchrun with NCCL and SyncBN.

Skipped where no CUDA device is present (CI has none); run them on a GPU machine with
``pytest tests/detection/test_cuda.py``.
"""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from detection.config import load_detection_config
from detection.training import train_detector
from detection.weights import load_detector
from tests.conftest import ROOT
from tests.detection.test_torchvision_equivalence import SIZE_OVERRIDES, compare_unordered
from tests.detection.tv_reference import calibrated_torchvision_detector, shapes_image
from tests.helpers import TINY_DETECTOR, data_overrides, subprocess_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SHAPES_CFG = os.path.join(ROOT, "configs", "shapes.yaml")
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def exact_float32_matmuls():
    """TF32 would round matmuls and convolutions to 10 mantissa bits: compare in true float32."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def converted_detector(tmp_path):
    reference_model = calibrated_torchvision_detector(320, 640, depth=50)
    torch.save(reference_model.state_dict(), tmp_path / "tv.pth")
    subprocess.run([sys.executable, f"{ROOT}/tools/convert_weights.py", "--from", "torchvision",
                    "--in", str(tmp_path / "tv.pth"), "--out", str(tmp_path / "ours.pth")], check=True,
                   capture_output=True)
    cfg = load_detection_config(f"{ROOT}/configs/tv_fasterrcnn_r50_fpn.yaml", SIZE_OVERRIDES)
    return reference_model, cfg


def test_detections_on_cuda_match_torchvision_on_cuda(tmp_path):
    reference_model, cfg = converted_detector(tmp_path)
    image = torch.from_numpy(shapes_image(7, 320, 448)).permute(2, 0, 1).contiguous()
    with torch.no_grad():
        reference = reference_model.to(CUDA)([image.to(CUDA).float() / 255])[0]
        model, _ = load_detector(cfg, str(tmp_path / "ours.pth"), CUDA)
        ours = model([{"image": image}])[0]
    assert ours["boxes"].device.type == "cuda"
    compare_unordered({k: v.cpu() for k, v in reference.items()}, {k: v.cpu() for k, v in ours.items()})


def test_cuda_features_match_the_cpu(tmp_path):
    """Detections of the sharpened reference are too sensitive to rounding to compare across devices
    (its objectness logits are scaled by 100); the backbone and FPN features are compared instead."""
    _, cfg = converted_detector(tmp_path)
    image = torch.from_numpy(shapes_image(7, 320, 448)).permute(2, 0, 1).contiguous()
    outputs = {}
    for device in (torch.device("cpu"), CUDA):
        model, _ = load_detector(cfg, str(tmp_path / "ours.pth"), device)
        with torch.no_grad():
            images, _ = model.preprocess([image])
            features = model.backbone(images)
            outputs[device.type] = {name: f.cpu() for name, f in features.items()}
    for name, on_cpu in outputs["cpu"].items():
        on_cuda = outputs["cuda"][name]
        relative = float((on_cuda - on_cpu).abs().max() / on_cpu.abs().max())
        assert relative <= 1e-4, f"{name}: relative difference {relative}"


def first_logged_losses(out_dir) -> dict:
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["type"] == "train"][0]


@pytest.mark.parametrize("amp", ["off", "bf16", "fp16"])
def test_trains_on_cuda_under_each_precision(amp, fixed_shapes, tmp_path):
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + [
        "device=cuda", f"solver.amp={amp}", "solver.channels_last=true", "solver.max_iter=6",
        "solver.checkpoint_period=0", "test.max_images=2", f"output_dir={tmp_path}"]
    metrics = train_detector(load_detection_config(SHAPES_CFG, overrides))
    assert 0 <= metrics["bbox"]["AP"] <= metrics["bbox"]["AP50"] <= 100
    # The first logged losses are an untrained detector's, as on the CPU (test_training.py): ln 2 for
    # the objectness, ln 6 for the classes (5 shapes and background), to the precision's rounding.
    first = first_logged_losses(tmp_path)
    assert first["loss_rpn_cls"] == pytest.approx(math.log(2), abs=0.03)
    assert first["loss_cls"] == pytest.approx(math.log(6), abs=0.03)
    state = torch.load(tmp_path / "model_final.pth", weights_only=True, map_location="cpu")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # fp16 keeps its loss scale in the checkpoint, so that a resume does not start from 2**16 again.
    assert bool(state["scaler"]) == (amp == "fp16")
    assert "cuda" in state["rng"][0]


def test_cuda_resume_restores_the_schedule(fixed_shapes, tmp_path):
    overrides = TINY_DETECTOR + data_overrides(fixed_shapes) + [
        "device=cuda", "solver.amp=fp16", "test.max_images=1", f"output_dir={tmp_path}"]
    cfg = load_detection_config(SHAPES_CFG, overrides + ["solver.max_iter=2"])
    train_detector(cfg)
    train_detector(load_detection_config(SHAPES_CFG, overrides), resume=True)
    state = torch.load(tmp_path / "model_final.pth", weights_only=True, map_location="cpu")
    assert state["iteration"] == 4 and state["scheduler"]["last_epoch"] == 4


def test_torchrun_one_process_nccl_with_syncbn(fixed_shapes, tmp_path):
    env = subprocess_env(OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=1", "--standalone",
               os.path.join(ROOT, "tools", "train_det.py"), *TINY_DETECTOR, *data_overrides(fixed_shapes),
               "device=cuda", "model.backbone.norm=syncbn", "solver.amp=bf16", "test.max_images=2",
               f"output_dir={tmp_path}"]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "model_final.pth").exists()
    assert first_logged_losses(tmp_path)["loss_rpn_cls"] == pytest.approx(math.log(2), abs=0.03)


def test_balanced_sampling_on_cuda_is_seeded_by_the_cpu_generator():
    from detection.modeling.matching import BACKGROUND, FOREGROUND, sample_balanced

    labels = torch.full((50_000,), BACKGROUND, device=CUDA)
    labels[torch.arange(0, 50_000, 500, device=CUDA)] = FOREGROUND
    draws = []
    for _ in range(2):
        generator = torch.Generator().manual_seed(5)
        draws.append(sample_balanced(labels, 256, 0.5, generator))
    (pos, neg), (pos_again, neg_again) = draws
    assert pos.device.type == "cuda" and len(pos) == 100 and len(neg) == 156
    assert torch.equal(pos, pos_again) and torch.equal(neg, neg_again)
    assert (labels[pos] == FOREGROUND).all() and (labels[neg] == BACKGROUND).all()
    assert neg.unique().numel() == neg.numel()
    other = sample_balanced(labels, 256, 0.5, torch.Generator().manual_seed(6))[1]
    assert not torch.equal(other, neg)
