"""The training speed switches of the shared solver section (``solver.channels_last``,
``solver.winograd``, ``solver.compile_backbone``), applied in place to any network built on these
backbones (classifiers, detectors, localizers) before it is handed to the trainer.

* channels_last: parameters (and the inputs of modules that convert them) in channels_last memory
  format, which oneDNN (CPU) and cuDNN run faster;
* winograd: the stride-1 3x3 convolutions within ``solver.winograd_channels`` as Winograd F(4x4, 3x3)
  convolutions on CPUs, forward and backward (resnet_ops/winograd.py);
* compile_backbone: ``torch.compile`` of the model's ``backbone`` (the whole model when it has none),
  in ``solver.compile_mode`` ("reduce-overhead": CUDA graphs on GPUs).

All three change results by floating-point rounding only.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from resnet_ops.winograd import MAX_CHANNELS, MIN_CHANNELS, MIN_PIXELS, use_winograd


def apply_speed_switches(model: nn.Module, solver) -> nn.Module:
    """solver.channels_last, solver.winograd and solver.compile_backbone, applied in place before training."""
    if solver.winograd:
        limits = winograd_limits(solver.winograd_channels, solver.winograd_min_pixels, MIN_CHANNELS)
        # Training keeps autocast's convolutions (winograd_bf16 is for inference).
        if use_winograd(model, bf16=False, **limits) == 0:
            warnings.warn(f"solver.winograd=true converted no convolution: none has between "
                          f"{limits['min_channels']} and {limits['max_channels']} channels (set solver.winograd_channels "
                          f"to the network's widths, e.g. [16, 64] for the CIFAR nets)", stacklevel=2)
    if solver.channels_last:
        crashing = convolutions_that_crash_in_channels_last(model)
        if crashing:
            warnings.warn(f"solver.channels_last is not applied: PyTorch's CPU backward of a strided 1x1 convolution "
                          f"of fewer than 16 input channels in channels_last format corrupts memory (a segmentation "
                          f"fault, measured with PyTorch 2.14.1), and this net has {len(crashing)} ({crashing[0]}); "
                          f"it trains in the default format (set solver.channels_last=false to silence this)",
                          stacklevel=2)
        else:
            use_channels_last(model)
    if solver.compile_backbone:
        backbone = getattr(model, "backbone", model)
        backbone.compile(mode=solver.compile_mode)  # nn.Module.compile keeps parameter names, unlike torch.compile(module)
    return model


def convolutions_that_crash_in_channels_last(model: nn.Module) -> list[str]:
    """The CPU convolutions whose backward in channels_last format crashes the process: 1x1 with a stride,
    2 to 15 input channels (the projection shortcuts of nets of base width 8 and less)."""
    return [name for name, module in model.named_modules()
            if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and max(module.stride) > 1
            and module.in_channels < 16 and module.weight.device.type == "cpu"]


def use_channels_last(model: nn.Module) -> nn.Module:
    """Parameters in channels_last memory format, and the modules that convert their inputs (those
    with a ``channels_last`` attribute, such as the detectors) told to do so; in place."""
    model.to(memory_format=torch.channels_last)
    for module in model.modules():
        if hasattr(module, "channels_last"):
            module.channels_last = True
    return model


def winograd_limits(channels: Sequence[int] | None, min_pixels: int | None, default_min_channels: int) -> dict:
    """use_winograd's limits from a config's [min, max] channels and minimum map size in pixels;
    None takes resnet_ops' defaults (measured on one CPU: docs/OPERATORS.md)."""
    low, high = (default_min_channels, MAX_CHANNELS) if channels is None else channels
    return {"min_channels": low, "max_channels": high, "min_pixels": MIN_PIXELS if min_pixels is None else min_pixels}
