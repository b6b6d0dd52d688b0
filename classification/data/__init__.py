"""CIFAR-10 and CIFAR-100: the official files (binary and python versions), the paper's data protocol
(splits, per-pixel mean, padding, cropping and flipping), and a synthetic set in the binary format."""

from .cifar import (
    LAYOUTS,
    CifarArrays,
    CifarError,
    CifarSource,
    Layout,
    find_cifar,
    read_binary_batch,
    read_class_names,
    read_python_batch,
    read_split,
    write_binary_batch,
    write_python_batch,
)
from .cifar_dataset import (
    SPLITS,
    CifarDataset,
    CifarSets,
    augmentation_draws,
    build_cifar_sets,
    load_pixel_mean,
    pixel_mean,
    save_pixel_mean,
    select_split,
)
from .synthetic_cifar import DEFAULT_ROOT, SyntheticCifarSpec, ensure_synthetic_cifar

__all__ = [
    "DEFAULT_ROOT", "LAYOUTS", "SPLITS", "CifarArrays", "CifarDataset", "CifarError", "CifarSets", "CifarSource",
    "Layout", "SyntheticCifarSpec", "augmentation_draws", "build_cifar_sets", "ensure_synthetic_cifar", "find_cifar",
    "load_pixel_mean", "pixel_mean",
    "read_binary_batch", "read_class_names", "read_python_batch", "read_split", "save_pixel_mean",
    "select_split", "write_binary_batch", "write_python_batch",
]
