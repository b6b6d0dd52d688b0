"""ILSVRC CLS-LOC: the official localization metric, the on-disk formats, a synthetic dataset, and the
ImageNet classifier (tools/train_cls.py: 1-crop, 10-crop and dense testing, top-1/top-5 error)."""

from resnet_engine.version import __version__ as __version__  # noqa: E402
