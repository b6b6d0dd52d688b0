"""Normalization layers for the ResNet family.

``frozen_bn`` is the paper's detection setting: after ImageNet pre-training every BatchNorm
becomes a constant per-channel affine transform whose statistics and affine parameters are
never updated (He et al., Appendix A).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .errors import BackboneError

NORMS = ("frozen_bn", "bn", "syncbn", "gn")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters.

    All four tensors are buffers, so they never receive gradients and optimizers ignore them.
    The state-dict layout is the one of ``nn.BatchNorm2d`` (``num_batches_tracked`` is accepted
    and dropped), so ImageNet checkpoints load unchanged.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features) - eps)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def scale_and_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return scale, shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # One operator (an eval-mode batch_norm) instead of the eight of computing the scale and shift
        # here: a ResNet-50 has 53 of these layers, and a training step's launch count is what bounds it
        # on a GPU. The result is the same affine map, equal to the explicit form up to float rounding;
        # under autocast the statistics stay in float32 while the activations keep their dtype.
        return torch.nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                              training=False, momentum=0.0, eps=self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"

    @classmethod
    def convert(cls, module: nn.Module) -> nn.Module:
        """Return ``module`` with every BatchNorm2d (or SyncBatchNorm) replaced by a frozen copy."""
        if isinstance(module, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            frozen = cls(module.num_features, module.eps)
            if module.affine:
                frozen.weight.copy_(module.weight.detach())
                frozen.bias.copy_(module.bias.detach())
            if module.track_running_stats:
                frozen.running_mean.copy_(module.running_mean)
                frozen.running_var.copy_(module.running_var)
            return frozen
        for name, child in module.named_children():
            new_child = cls.convert(child)
            if new_child is not child:
                setattr(module, name, new_child)
        return module


def make_norm(kind: str, num_channels: int) -> nn.Module:
    """Build the normalization layer named ``kind`` for ``num_channels`` channels."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d(num_channels)
    if kind == "bn":
        return nn.BatchNorm2d(num_channels)
    if kind == "syncbn":
        return nn.SyncBatchNorm(num_channels)
    if kind == "gn":
        return nn.GroupNorm(math.gcd(32, num_channels), num_channels)
    raise BackboneError(f"unknown norm '{kind}': choose one of {', '.join(NORMS)}")
