"""The inference fast path of a detector (the training switches, solver.channels_last, winograd
and compile_backbone, are shared by every task: backbones/speed.py).

Inference fast path for a trained detector: same detections, less time.

* BatchNorm (frozen or in eval mode) folded into the preceding convolutions: one memory-bound pass
  over every activation map less (torchvision's FrozenBatchNorm2d is a separate multiply-add).
* channels_last memory format for the convolutions, which oneDNN (CPU) and cuDNN run faster, and
  the box head's first fc layer reordered to read channels_last RoI features without a copy.
* the stride-1 3x3 convolutions of 64 to 256 channels by default (the FPN's outputs, the RPN head,
  res2-res4; ``test.winograd_channels`` and ``test.winograd_min_pixels`` choose others) as Winograd
  F(4x4, 3x3) convolutions on CPUs, with a quarter of the multiply-adds (resnet_ops/winograd.py),
  and the ReLUs after them applied as they write their outputs.

All three change results only by floating-point rounding (tested: the same detections); tools apply
them when ``test.fast`` is on (the default; ``test.winograd=false`` keeps the direct convolutions).
``test.amp`` adds autocast at inference, which does change results a little and is off by default;
under ``test.amp=bf16`` the Winograd convolutions run in bfloat16 too (``test.winograd_bf16``), with
more rounding than autocast's own bf16 convolutions (docs/BENCHMARKS.md measures the AP change).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

from backbones import fold_frozen_bn
from backbones.resnet import Bottleneck
from backbones.speed import use_channels_last, winograd_limits
from resnet_engine.errors import UserError
from resnet_ops.winograd import (
    INFERENCE_MIN_CHANNELS,
    fuse_relu,
    use_winograd,
)

from .box_heads import FCHead
from .rpn import RPNHead


def optimize_for_inference(model: nn.Module, channels_last: bool = True, winograd: bool = True,
                           winograd_bf16: bool = True, winograd_channels: Sequence[int] | None = None,
                           winograd_min_pixels: int | None = None) -> nn.Module:
    """Fold the backbone's BatchNorm, switch to channels_last and to Winograd convolutions (also in
    bfloat16 under bf16 autocast if ``winograd_bf16``), in place; returns the model in eval mode.
    ``winograd_channels`` ([min, max] input and output channels) and ``winograd_min_pixels`` choose
    the convolutions that become Winograd ones (None: 64 to 256 channels, maps of 400 pixels)."""
    model.eval()
    fold_frozen_bn(model)
    if channels_last:
        use_channels_last(model)
        for module in model.modules():
            if isinstance(module, FCHead):  # the CPU RoIAlign returns channels_last features
                module.read_channels_last()
    if winograd:  # after folding: the transformed filters are computed from the final weights
        limits = winograd_limits(winograd_channels, winograd_min_pixels, INFERENCE_MIN_CHANNELS)
        use_winograd(model, bf16=winograd_bf16, **limits)
        fuse_winograd_relus(model)
    return model


def fuse_winograd_relus(model: nn.Module) -> int:
    """The ReLUs right after Winograd convolutions (res2-res4's 3x3 once BN is folded, the RPN's
    hidden layer) applied in the convolutions' output transforms; returns how many."""
    fused = 0
    for module in model.modules():
        if isinstance(module, Bottleneck) and isinstance(module.bn2, nn.Identity):
            fused += fuse_relu(module, "conv2", "relu2")
        elif isinstance(module, RPNHead):
            fused += fuse_relu(module, "conv", "relu")
    return fused


def inference_autocast(amp: str, device: torch.device):
    """The autocast context of ``test.amp`` ("off": none) on ``device``."""
    if amp == "off":
        return contextlib.nullcontext()
    if device.type == "cpu" and amp == "fp16":
        raise UserError("test.amp=fp16 needs a GPU: use test.amp=bf16 on CPUs (or test.amp=off)")
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)
