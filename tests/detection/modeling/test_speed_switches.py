"""The speed switches on the model side: which convolutions become Winograd ones (defaults and the
config's limits), channels_last, and the config checks of the limits."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from backbones.speed import apply_speed_switches
from detection.config import load_detection_config
from detection.modeling.speed import optimize_for_inference
from resnet_engine.config import ConfigError
from resnet_ops.winograd import WinogradConv2d


def convolutions():
    """3x3 stride-1 convolutions of 32, 64, 128, 256 and 512 channels, each on its own map."""
    return nn.ModuleList(nn.Conv2d(c, c, 3, padding=1) for c in (32, 64, 128, 256, 512))


def converted(model) -> list[int]:
    return [m.in_channels for m in model.modules() if isinstance(m, WinogradConv2d)]


def solver(**keys):
    values = {"winograd": True, "channels_last": False, "compile_backbone": False, "compile_mode": "default",
              "winograd_channels": None, "winograd_min_pixels": None}
    return SimpleNamespace(**{**values, **keys})


def test_default_limits_at_inference_and_in_training():
    assert converted(optimize_for_inference(convolutions())) == [64, 128, 256]
    assert converted(apply_speed_switches(convolutions(), solver())) == [128, 256]
    assert converted(apply_speed_switches(convolutions(), solver(winograd=False))) == []


def test_config_limits_choose_the_converted_convolutions():
    model = optimize_for_inference(convolutions(), winograd_channels=[32, 64], winograd_min_pixels=100)
    assert converted(model) == [32, 64]
    assert {m.min_pixels for m in model.modules() if isinstance(m, WinogradConv2d)} == {100}
    trained = apply_speed_switches(convolutions(), solver(winograd_channels=[256, 512], winograd_min_pixels=1))
    assert converted(trained) == [256, 512]


def test_min_pixels_decides_between_winograd_and_the_direct_convolution():
    """A 10x12 map (120 pixels): direct under the default 400 (bit-equal to conv2d), Winograd with
    a limit of 100 (conv2d's numbers to Winograd's rounding, which differs from conv2d's)."""
    torch.manual_seed(0)
    x = torch.randn(1, 64, 10, 12)
    outputs = {}
    for min_pixels in (None, 100):
        model = optimize_for_inference(nn.Sequential(nn.Conv2d(64, 64, 3, padding=1)), channels_last=False,
                                       winograd_min_pixels=min_pixels)
        with torch.no_grad():
            outputs[min_pixels] = model(x), F.conv2d(x, model[0].weight, model[0].bias, padding=1)
    default, direct = outputs[None]
    assert torch.equal(default, direct)
    winograd, direct = outputs[100]
    error = ((winograd - direct).abs().max() / direct.abs().max()).item()
    assert 0 < error < 3e-5


def test_channels_last_switch():
    model = apply_speed_switches(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1)), solver(winograd=False,
                                                                                        channels_last=True))
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert not model[0].weight.is_contiguous()


def test_compile_switch_compiles_the_backbone_in_place_in_the_configured_mode(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda function, **kwargs: calls.append(kwargs) or function)
    model = nn.Sequential()
    model.backbone, model.head = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
    names = [name for name, _ in model.named_parameters()]
    apply_speed_switches(model, solver(winograd=False, compile_backbone=True, compile_mode="reduce-overhead"))
    assert calls == [{"mode": "reduce-overhead"}]  # the backbone only: the heads stay eager
    assert [name for name, _ in model.named_parameters()] == names  # checkpoints keep their keys
    cfg = load_detection_config(None, ["solver.compile_backbone=true", "solver.compile_mode=reduce-overhead"])
    assert cfg.solver.compile_mode == "reduce-overhead"
    with pytest.raises(ConfigError, match="solver.compile_mode"):
        load_detection_config(None, ["solver.compile_mode=fast"])


@pytest.mark.parametrize("key", ["test", "solver"])
@pytest.mark.parametrize("value", ["[256,64]", "[64]", "[64,128,256]"])
def test_config_refuses_limits_that_are_not_a_range(key, value):
    with pytest.raises(ConfigError, match=rf"{key}\.winograd_channels=.*give \[min, max\] channels"):
        load_detection_config(None, [f"{key}.winograd_channels={value}"])
    assert load_detection_config(None, [f"{key}.winograd_channels=[64,64]"])[key].winograd_channels == [64, 64]
