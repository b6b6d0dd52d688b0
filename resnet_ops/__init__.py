"""Operators under the models: the Winograd F(4x4, 3x3) convolution with its C tile transforms
(``resnet_ops.winograd``, ``resnet_ops.native``, ``csrc/``) and RoIAlign as a multi-threaded gather
(``resnet_ops.roi_align``).

This package sits at the bottom of the dependency order: it imports torch, torchvision and the
standard library only, never the backbones, the detectors or the engine, so that any of them can
use it. What a model knows about these operators (which of its convolutions to convert, which
ReLUs to fuse) stays on the model side.
"""
