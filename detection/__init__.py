"""Faster R-CNN on ResNet backbones: the paper's C4 design and FPN, COCO data and evaluation.

Where things live: ``modeling/`` (backbone, RPN, RoI heads, test-time improvements), ``data/``
(COCO reader, transforms, the synthetic shapes set), ``evaluation/`` (COCO AP), ``training.py``,
``inference.py``, ``predictor.py`` (single images).
"""

from resnet_engine.version import __version__

__all__ = ["__version__"]
