"""benchmarks/bench_winograd_ap.py --every-conv: the fast path converts every stride-1 3x3 convolution."""

import torch
from torch import nn

from detection.config import load_detection_config
from detection.modeling import speed
from resnet_ops.winograd import WinogradConv2d
from tests.helpers import load_benchmark_script


def test_every_convolution_becomes_a_winograd_one():
    cfg = load_detection_config(None, load_benchmark_script("bench_winograd_ap").EVERY_CONVOLUTION)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                          nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.Conv2d(8, 600, 3, padding=1))
    speed.optimize_for_inference(model, winograd_channels=cfg.test.winograd_channels,
                                 winograd_min_pixels=cfg.test.winograd_min_pixels)
    assert [isinstance(m, WinogradConv2d) for m in model] == [True, True, False, True]
    x = torch.randn(1, 3, 10, 9)  # 90 pixels: under the usual 400
    with torch.no_grad():
        assert model[0].shape_applies(x)
