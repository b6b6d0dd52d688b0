"""Inference fast path: fold frozen BatchNorm into the preceding convolution.

A frozen BN is a per-channel affine map, so ``bn(conv(x))`` equals one convolution with scaled
weights and a bias. Folding removes a memory-bound pass over every activation map.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import FrozenBatchNorm2d


def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """Return a new conv computing ``norm(conv(x))`` for a frozen or eval-mode BatchNorm."""
    if isinstance(norm, FrozenBatchNorm2d):
        scale, shift = norm.scale_and_shift()
    elif isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats:
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        shift = norm.bias - norm.running_mean * scale
    else:
        raise TypeError(f"cannot fold {type(norm).__name__} in training mode or without running statistics")
    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
    ).to(device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
        bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
        fused.bias.copy_(bias * scale + shift)
    fused.weight.requires_grad_(conv.weight.requires_grad)
    fused.bias.requires_grad_(conv.weight.requires_grad)
    return fused


def _foldable(norm: nn.Module) -> bool:
    return isinstance(norm, FrozenBatchNorm2d) or (isinstance(norm, nn.BatchNorm2d) and not norm.training)


@torch.no_grad()
def fold_frozen_bn(model: nn.Module) -> nn.Module:
    """Fold every conv -> frozen/eval BN pair of a ResNet (in place) and return the model.

    Pairs are the stem (``conv1``/``bn1``), the units' declared ``conv_norm_pairs`` and projection
    shortcuts (``Sequential(conv, norm)``). Trainable BatchNorm in training mode is left alone.
    """
    for module in model.modules():
        pairs = list(getattr(module, "conv_norm_pairs", ()))
        if isinstance(getattr(module, "conv1", None), nn.Conv2d) and hasattr(module, "layer1"):
            pairs.append(("conv1", "bn1"))
        for conv_name, norm_name in pairs:
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            if isinstance(conv, nn.Conv2d) and _foldable(norm):
                setattr(module, conv_name, fold_conv_norm(conv, norm))
                setattr(module, norm_name, nn.Identity())
        if isinstance(module, nn.Sequential) and len(module) == 2:
            conv, norm = module[0], module[1]
            if isinstance(conv, nn.Conv2d) and _foldable(norm):
                module[0] = fold_conv_norm(conv, norm)
                module[1] = nn.Identity()
    return model
