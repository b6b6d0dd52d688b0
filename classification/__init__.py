"""Image classification: the CIFAR-10/100 data of the paper's CIFAR experiments (classification.data)."""

from resnet_engine.version import __version__ as __version__  # noqa: E402
