"""A tiny CIFAR-10 that a depth-8 net learns within a few iterations, written in the official binary
format, and the paper's CIFAR recipe (configs/base_cifar.yaml) scaled down to it."""

import os

import numpy as np

from classification.config import load_classification_config
from classification.data.cifar import LAYOUTS, write_binary_batch, write_class_names
from tests.conftest import ROOT

BINARY = LAYOUTS[0]  # cifar-10-batches-bin
PER_TRAINING_FILE = 40
TEST_IMAGES = 50


def brightness_batch(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Balanced, shuffled labels; image k is grey level 25 * label, plus uniform noise of +-12 per pixel."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(count) % 10)
    noise = rng.integers(-12, 13, size=(count, 3, 32, 32))
    images = np.clip(labels[:, None, None, None] * 25 + noise, 0, 255).astype(np.uint8)
    return images, labels


def write_brightness_cifar(root) -> str:
    """Five training files of 40 images, a test file of 50 and the class names under
    ``root/cifar-10-batches-bin``."""
    folder = os.path.join(str(root), BINARY.folder)
    for index, name in enumerate(BINARY.train_files):
        write_binary_batch(os.path.join(folder, name), *brightness_batch(PER_TRAINING_FILE, index))
    write_binary_batch(os.path.join(folder, BINARY.test_files[0]), *brightness_batch(TEST_IMAGES, 99))
    write_class_names(folder, BINARY, [f"grey{25 * label}" for label in range(10)])
    return str(root)


def read_binary_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, 3, 32, 32), labels (N,)) of a CIFAR-10 binary file, by the format's definition."""
    records = np.fromfile(path, dtype=np.uint8).reshape(-1, 1 + 3 * 32 * 32)
    return records[:, 1:].reshape(-1, 3, 32, 32), records[:, 0].astype(np.int64)


def tiny_config(root, output_dir, *overrides):
    """base_cifar.yaml on ``root`` with a depth-8 net, batches of 16, 30 iterations and a log record per
    iteration."""
    return load_classification_config(os.path.join(ROOT, "configs", "base_cifar.yaml"), [
        f"data.root={root}", f"output_dir={output_dir}", "model.backbone.depth=8", "solver.ims_per_batch=16",
        "solver.base_lr=0.05", "solver.max_iter=30", "solver.steps=[20]", "solver.log_period=1",
        "solver.checkpoint_period=10", "test.ims_per_batch=25", "data.num_workers=0", *overrides])
