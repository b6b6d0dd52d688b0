"""Decoding images with OpenCV into 3-channel 8-bit RGB, whatever the file holds."""

from __future__ import annotations

import os

import cv2
import numpy as np
import torch

from resnet_engine.errors import UserError


class BadImageError(UserError):
    """An image that is missing or cannot be decoded."""

    def __init__(self, message: str):
        # A DataLoader worker's exception is raised again in the main process with the worker's
        # whole traceback as its message; keep the one line the worker raised.
        if message.startswith(f"Caught {type(self).__name__} in DataLoader worker"):
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def read_image(path: str, apply_exif_orientation: bool = False) -> np.ndarray:
    """Read ``path`` as an (H, W, 3) uint8 RGB array.

    By default the pixels are the stored ones and an EXIF orientation tag is ignored: annotations
    (COCO, ILSVRC) refer to the stored pixels, whose size the annotation files give.
    ``apply_exif_orientation=True`` turns the image upright as a viewer shows it (photos without
    annotations). Grayscale and RGBA files become 3-channel; 16-bit files are scaled to 8 bits.
    """
    if not os.path.isfile(path):
        raise BadImageError(f"image not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    # IMREAD_ANYDEPTH keeps 16 bits so that we scale them ourselves.
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if not apply_exif_orientation:
        flags |= cv2.IMREAD_IGNORE_ORIENTATION
    image = cv2.imdecode(data, flags) if data.size else None
    if image is None:
        raise BadImageError(f"cannot decode image: {path}")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_chw_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> contiguous (C, H, W) tensor of the same dtype; (H, W) -> (1, H, W).

    For (H, W, 3) uint8 images, cv2.split writes the planes straight into the output: about 7x
    faster than a strided numpy or torch transpose copy, which was the slowest step of the training
    data pipeline at 800 px. Any other input takes the plain transpose: cv2.split would allocate
    planes of its own for it and leave the output buffer unwritten.
    """
    if image.ndim == 2:
        return torch.from_numpy(np.ascontiguousarray(image[None]))
    if image.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {image.shape}")
    if image.dtype == np.uint8 and image.shape[2] == 3:
        height, width = image.shape[:2]
        out = np.empty((3, height, width), dtype=np.uint8)
        planes = cv2.split(np.ascontiguousarray(image), [out[0], out[1], out[2]])
        if all(np.shares_memory(plane, target) for plane, target in zip(planes, out)):
            return torch.from_numpy(out)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
