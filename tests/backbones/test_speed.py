"""The training speed switches of backbones/speed.py that are not tested with a detector
(tests/detection/modeling/test_speed_switches.py)."""

from types import SimpleNamespace

import pytest
import torch

from backbones import resnet18
from backbones.speed import apply_speed_switches, convolutions_that_crash_in_channels_last

SOLVER = SimpleNamespace(channels_last=True, winograd=False, compile_backbone=False)


def test_channels_last_is_not_applied_where_pytorchs_cpu_backward_crashes():
    """A strided 1x1 convolution of 2 to 15 input channels in channels_last format: its CPU backward
    corrupts memory (a segmentation fault). ResNet-18 of width 8 has one: res3's projection shortcut (8 -> 16
    channels)."""
    narrow = resnet18(base_width=8)
    assert convolutions_that_crash_in_channels_last(narrow) == ["layer2.0.downsample.0"]
    with pytest.warns(UserWarning, match=r"solver.channels_last is not applied: PyTorch's CPU backward of a strided "
                                         r"1x1 convolution of fewer than 16 input channels .* this net has 1 "
                                         r"\(layer2.0.downsample.0\)"):
        apply_speed_switches(narrow, SOLVER)
    assert all(p.is_contiguous() for p in narrow.parameters())
    wide = apply_speed_switches(resnet18(base_width=16), SOLVER)
    assert convolutions_that_crash_in_channels_last(wide) == []
    conv1 = wide.conv1.weight
    assert conv1.is_contiguous(memory_format=torch.channels_last) and not conv1.is_contiguous()
