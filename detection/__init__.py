"""Faster R-CNN on ResNet backbones: the paper's C4 design and FPN; COCO, PASCAL VOC and ImageNet DET
data, each with its official metric.

Where things live: ``modeling/`` (backbone, RPN, RoI heads, test-time improvements, ensembles),
``data/`` (COCO, YOLO, VOC and ImageNet DET readers, transforms and augmentations, the synthetic shapes
sets), ``evaluation/`` (COCO AP, the VOC and ImageNet DET metrics), ``training.py``, ``weights.py``
(trained detectors), ``ensemble.py`` (several trained detectors as one), ``predictor.py`` (images one
at a time or in batches), ``builders.py`` (detectors without a config file:
``from detection import faster_rcnn_r50_fpn``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from resnet_engine.version import __version__

if TYPE_CHECKING:  # the names for readers and type checkers; __getattr__ imports them on first use
    from .builders import (
        faster_rcnn_r18_fpn_small,
        faster_rcnn_r50_c4,
        faster_rcnn_r50_fpn,
        faster_rcnn_r101_c4,
        faster_rcnn_r101_fpn,
        faster_rcnn_r152_c4,
    )

__all__ = ["__version__", "faster_rcnn_r50_c4", "faster_rcnn_r101_c4", "faster_rcnn_r152_c4", "faster_rcnn_r50_fpn",
           "faster_rcnn_r101_fpn", "faster_rcnn_r18_fpn_small"]


def __getattr__(name: str):
    """The builders load PyTorch and the whole detector (seconds): importing them here only when asked
    keeps ``python -m detection --help`` and the imports of single submodules quick."""
    if name in __all__:  # a builder (__version__ is set above, so it never reaches here)
        return getattr(importlib.import_module(".builders", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
