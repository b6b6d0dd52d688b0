"""benchmarks/bench_winograd_ap.py --every-conv: the fast path converts every stride-1 3x3 convolution."""

import torch
from torch import nn

from detection.modeling import speed
from resnet_ops import winograd
from resnet_ops.winograd import WinogradConv2d
from tests.helpers import load_benchmark_script


def test_every_convolution_becomes_a_winograd_one(monkeypatch):
    # Restored after the test: the script changes these module attributes for its whole process.
    monkeypatch.setattr(winograd, "MIN_PIXELS", winograd.MIN_PIXELS)
    monkeypatch.setattr(speed, "INFERENCE_MIN_CHANNELS", speed.INFERENCE_MIN_CHANNELS)
    monkeypatch.setattr(speed, "use_winograd", speed.use_winograd)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 600, 3, padding=1))
    load_benchmark_script("bench_winograd_ap").convert_every_convolution()
    speed.optimize_for_inference(model)
    assert [isinstance(m, WinogradConv2d) for m in model] == [True, True, False, True]
    x = torch.randn(1, 3, 10, 9)  # 90 pixels: under the usual 400
    with torch.no_grad():
        assert model[0].shape_applies(x)
