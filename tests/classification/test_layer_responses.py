"""The layer responses of Fig. 7: a hand-built net whose responses are known in closed form, the one-pass
float64 moments against the whole set's outputs at once, a trained checkpoint end to end, bad weights."""

import json
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch

from backbones import create
from classification.config import load_classification_config
from classification.data.loaders import build_classification_data
from classification.data.synthetic_cifar import SyntheticCifarSpec, ensure_synthetic_cifar
from classification.layer_responses import (
    ChannelMoments,
    LayerResponseError,
    ResponseImages,
    check_measurement_overrides,
    layer_response_stds,
    measure_checkpoint,
)
from classification.training import train_classifier
from classification.weights import load_trained_classifier
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import randomize_bn_statistics, subprocess_env

from .tiny_cifar import write_brightness_cifar


def pass_through_plain_net(depth: int, seed: int = 0):
    """A plain CIFAR net whose every 3x3 conv copies input channel (c mod C_in) to output channel c (the
    kernel's centre tap, so padding and stride do not matter on constant images) and whose BNs apply
    known positive scales and offsets: on an image of constant value v > 0, channel c of layer l responds
    a[l][c] * v + b[l][c] everywhere, and every ReLU passes it unchanged. Returns (net, a, b), per layer."""
    net = create(f"resnet{depth}_cifar", plain=True, num_classes=10).eval()
    generator = torch.Generator().manual_seed(seed)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert [n for _, n in net.response_modules()] == norms  # the chain below follows the response order
    scales, offsets = [], []
    previous, offset = torch.ones(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)  # input: v, v, v
    with torch.no_grad():
        for conv, norm in zip(convs, norms, strict=True):
            out_channels, in_channels = conv.weight.shape[:2]
            source = torch.arange(out_channels) % in_channels
            conv.weight.zero_()
            conv.weight[torch.arange(out_channels), source, 1, 1] = 1
            norm.weight.copy_(torch.rand(out_channels, generator=generator) + 0.5)
            norm.bias.copy_(torch.rand(out_channels, generator=generator) * 2)
            norm.running_mean.zero_()
            norm.running_var.fill_(1.0)
            scale = norm.weight.double() / np.sqrt(1 + norm.eps)
            previous, offset = scale * previous[source], scale * offset[source] + norm.bias.double()
            scales.append(previous)
            offsets.append(offset)
    return net, scales, offsets


def constant_images(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 3, 32, 32).contiguous()


def test_a_hand_built_net_has_the_responses_worked_out_by_hand():
    net, scales, offsets = pass_through_plain_net(14)
    values = np.random.default_rng(0).uniform(0.5, 3.0, size=23)
    batches = [constant_images(values[:10]), constant_images(values[10:17]), constant_images(values[17:])]
    measured = layer_response_stds(net, batches)
    # Each channel's std over images and positions is a[l][c] times the std of the values (population).
    expected = [float(a.mean()) * values.std() for a in scales]
    assert len(measured) == 6 * 2 + 1
    np.testing.assert_allclose(measured, expected, rtol=1e-5)
    # The offsets differ by channel: the std of all of a layer's elements together is another number.
    all_elements = [float((a[:, None] * torch.from_numpy(values) + b[:, None]).std(unbiased=False))
                    for a, b in zip(scales, offsets)]
    assert all(abs(m - e) > 0.05 * m for m, e in zip(measured, all_elements))


def direct_stds(net, batches) -> list[float]:
    """Every response of the whole set concatenated, then each channel's std, averaged over channels."""
    outputs = {name: [] for name, _ in net.response_modules()}
    handles = [module.register_forward_hook(lambda _m, _i, output, name=name: outputs[name].append(output.clone()))
               for name, module in net.response_modules()]
    with torch.no_grad():
        for images in batches:
            net(images)
    for handle in handles:
        handle.remove()
    stds = []
    for tensors in outputs.values():
        whole = torch.cat(tensors).double()
        stds.append(float(whole.std(dim=(0, 2, 3), unbiased=False).mean()))
    return stds


@pytest.mark.parametrize("variant", [{"plain": False}, {"plain": True}, {"preact": True}])
def test_the_one_pass_moments_equal_those_of_the_whole_set(variant):
    torch.manual_seed(0)
    net = randomize_bn_statistics(create("resnet8_cifar", num_classes=10, **variant)).eval()
    batches = [torch.randn(size, 3, 32, 32) * 2 + 1 for size in (9, 4, 6)]
    measured = layer_response_stds(net.train(), batches)
    assert net.training  # measured in eval mode (as direct_stds below), the mode given back
    direct = direct_stds(net.eval(), batches)
    np.testing.assert_allclose(measured, direct, rtol=1e-6)
    assert len(measured) == 7
    # Not the mean of the batches' stds (which differs when the batches differ).
    per_batch = np.mean([direct_stds(net, [b]) for b in batches], axis=0)
    assert not np.allclose(measured, per_batch, rtol=1e-4)


def test_channel_moments_merge_exactly():
    rng = np.random.default_rng(1)
    parts = [rng.normal(1000.0, 0.01, size=(n, 2, 3, 3)) for n in (1, 5, 2)]  # a large mean, a small spread
    moments = ChannelMoments()
    for part in parts:
        moments.update(torch.from_numpy(part).float())
    whole = np.concatenate([p.astype(np.float32).astype(np.float64) for p in parts])
    np.testing.assert_allclose(moments.channel_std().numpy(), whole.std(axis=(0, 2, 3)), rtol=1e-9)
    assert moments.count == 8 * 9


# --------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = ensure_synthetic_cifar(str(tmp_path_factory.mktemp("cifar")), SyntheticCifarSpec(train_images=40, test_images=24))
    out = tmp_path_factory.mktemp("run")
    cfg = load_classification_config(os.path.join(ROOT, "configs", "base_cifar.yaml"), [
        f"data.root={root}", f"output_dir={out}", "model.backbone.depth=8", "solver.max_iter=3", "solver.steps=[2]",
        "solver.ims_per_batch=8", "test.ims_per_batch=10", "test.eval_period=0", "solver.checkpoint_period=0",
        "data.num_workers=0"])
    run = train_classifier(cfg)
    return run.weights, root


def test_a_checkpoint_is_measured_on_its_test_images(trained):
    weights, root = trained
    measured = measure_checkpoint(weights)
    assert measured.net == "ResNet-8" and len(measured.std) == 7
    assert measured.images == ResponseImages("test", "CIFAR-10", root, True, 24)
    # The same net on the same test images (the checkpoint's pixel mean subtracted), all at once.
    classifier = load_trained_classifier(weights)
    data = build_classification_data(classifier.cfg, None, mean=classifier.meta["pixel_mean"].numpy(), split="test")
    images = [batch["images"] for batch in data.test_loaders["test"]()]
    assert sum(len(b) for b in images) == 24
    np.testing.assert_allclose(measured.std, direct_stds(classifier.model.backbone.eval(), images), rtol=1e-6)


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "layer_responses.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=subprocess_env(OMP_NUM_THREADS="1"), timeout=300)


def test_the_tool_writes_the_json_and_the_figure(trained, tmp_path):
    weights, root = trained
    result = run_tool("--weights", weights, "--weights", weights, "--out", str(tmp_path), f"data.root={root}")
    assert result.returncode == 0, result.stderr[-3000:]
    nets = json.loads((tmp_path / "responses.json").read_text())["nets"]
    assert [n["net"] for n in nets] == ["ResNet-8", "ResNet-8"]
    np.testing.assert_allclose(nets[0]["std"], measure_checkpoint(weights).std, rtol=1e-6)
    # Which images the stds are over: the test split of the synthetic set, 24 images.
    assert [sorted(n) for n in nets] == [["data_root", "dataset", "net", "num_images", "split", "std", "synthetic"]] * 2
    assert {key: nets[0][key] for key in ("split", "dataset", "data_root", "synthetic", "num_images")} == {
        "split": "test", "dataset": "CIFAR-10", "data_root": root, "synthetic": True, "num_images": 24}
    std = nets[0]["std"]
    line = (f"ResNet-8: 7 layers, std from {min(std):.3f} to {max(std):.3f}, mean {sum(std) / len(std):.3f}, over "
            f"the 24 test images of CIFAR-10 in {root}, the toolkit's synthetic set")
    assert result.stdout.splitlines()[:2] == [line, line]
    data = (tmp_path / "responses.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert 600 <= width <= 1000 and 500 <= height <= 900


def test_the_test_images_of_another_folder_are_named(trained, tmp_path):
    """data.root=DIR measures on another folder's test split: a set in the official layout that the toolkit
    did not generate (of other sizes than the official files, which the reader warns of)."""
    weights, _ = trained
    other = write_brightness_cifar(tmp_path)
    with pytest.warns(UserWarning, match="images, the official CIFAR-10") as warned:
        measured = measure_checkpoint(weights, [f"data.root={other}"])
    assert any("hold 50 images, the official CIFAR-10 10000" in str(w.message) for w in warned)
    assert measured.images == ResponseImages("test", "CIFAR-10", other, False, 50)
    assert measured.images.describe() == f"the 50 test images of CIFAR-10 in {other}"


def test_weights_that_are_not_a_cifar_classifier_get_one_line(trained, tmp_path):
    weights, _ = trained
    state_dict = tmp_path / "bare.pth"
    torch.save(torch.load(weights, weights_only=True)["model"], state_dict)
    result = run_tool("--weights", str(state_dict), "--out", str(tmp_path / "out"))
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines == [f"error: {state_dict} is not a checkpoint of this toolkit (no 'model' entry)"]
    not_a_checkpoint = tmp_path / "notes.pth"
    not_a_checkpoint.write_text("hello")
    for path, message in [(not_a_checkpoint, f"{not_a_checkpoint}"), (tmp_path / "missing.pth", "checkpoint not found")]:
        with pytest.raises(UserError, match=message):
            measure_checkpoint(str(path))


def test_an_imagenet_classifier_is_refused(tmp_path):
    state = {"model": {"backbone.fc.weight": torch.zeros(6, 8)}, "config": "data:\n  dataset: imagenet\n",
             "meta": {"task": "classification"}}
    torch.save(state, tmp_path / "imagenet.pth")
    with pytest.raises(LayerResponseError, match="is not a CIFAR classifier checkpoint"):
        measure_checkpoint(str(tmp_path / "imagenet.pth"))


def test_only_data_overrides_apply():
    check_measurement_overrides(["data.root=/x", "device=cpu", "test.ims_per_batch=5"])
    with pytest.raises(LayerResponseError, match="model.backbone.depth=20"):
        check_measurement_overrides(["model.backbone.depth=20"])
