"""Decoding images with OpenCV into 3-channel 8-bit RGB, whatever the file holds, and the images users
hold (arrays, tensors, PIL images) as RGB arrays."""

from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import torch
from PIL import Image

from resnet_engine.errors import UserError

# The image files that folders are searched for (inference inputs, YOLO datasets).
# The EXIF tag of the turn that shows a photo upright.
EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


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


def exif_orientation(path: str) -> int:
    """The EXIF orientation (1 to 8) that reading the image file ``path`` upright applies: the tag of its
    EXIF data as OpenCV reads it (a JPEG's, WebP's, or PNG's eXIf chunk; a TIFF's own tags). 1 (the
    stored pixels) when it has none, or an invalid one, or PIL cannot open the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # only its header is read
            with Image.open(path) as image:
                # Not image.getexif() alone: it also takes an XMP orientation, which OpenCV ignores.
                if "exif" in image.info:
                    exif = Image.Exif()
                    exif.load(image.info["exif"])
                else:
                    exif = image.getexif() if image.format == "TIFF" else {}
                orientation = exif.get(EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1
    return int(orientation) if orientation in range(2, 9) else 1


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


class ImageInputError(UserError):
    """An object the predictor cannot take as an image: another type, dtype or number of channels,
    an empty array, float pixels outside [0, 1]."""


ACCEPTED_IMAGES = ("accepted: a file path, a PIL image, an (H, W, 3) RGB or BGR (format=) numpy array, "
                   "(H, W, 4), (H, W, 1) or (H, W) arrays, a (C, H, W) tensor with C = 1, 3 or 4, "
                   "uint8 pixels in 0-255 or float pixels in [0, 1]")


def as_rgb_image(image, format: str = "RGB") -> np.ndarray:
    """Anything a user holds as an image -> an (H, W, 3) RGB array of the input's pixels: uint8 as
    given, float scaled from [0, 1] to float32 0-255 (not rounded to 8 bits).

    Files are decoded and turned upright (EXIF orientation); PIL images are taken in their own mode
    (grayscale, palette and RGBA become RGB). ``format`` is the channel order of numpy arrays and
    tensors, "RGB" or "BGR" (OpenCV's and detectron2's); tensors are (C, H, W) as in torchvision,
    arrays (H, W, C). Grayscale is repeated into three channels and an alpha channel dropped.
    """
    if format not in ("RGB", "BGR"):
        raise ImageInputError(f"format={format!r}: give 'RGB' or 'BGR', the channel order of the arrays")
    if isinstance(image, (str, os.PathLike)):
        return read_image(os.fspath(image), apply_exif_orientation=True)
    if isinstance(image, Image.Image):
        return pil_pixels(image)
    if isinstance(image, torch.Tensor):
        pixels = image.detach().cpu()
        if pixels.dtype == torch.bfloat16:  # which numpy lacks
            pixels = pixels.float()
        planes_last = pixels.permute(1, 2, 0) if pixels.ndim == 3 and pixels.shape[0] in (1, 3, 4) else None
        if planes_last is None and pixels.ndim != 2:
            raise ImageInputError(f"tensor of shape {tuple(pixels.shape)}: give (C, H, W) with C = 1, 3 or 4, "
                                  f"or (H, W) ({ACCEPTED_IMAGES})")
        return channels_to_rgb(pixel_values(pixels if planes_last is None else planes_last, "tensor"), format)
    if isinstance(image, np.ndarray):
        if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3, 4))):
            raise ImageInputError(f"array of shape {image.shape}: give (H, W, C) with C = 1, 3 or 4, or (H, W) "
                                  f"({ACCEPTED_IMAGES})")
        return channels_to_rgb(pixel_values(image, "array"), format)
    raise ImageInputError(f"{type(image).__name__} is not an image ({ACCEPTED_IMAGES})")


def pil_pixels(image: Image.Image) -> np.ndarray:
    """A PIL image's RGB pixels. PIL's own conversion to RGB clips 16-bit images at 255 (nearly all white)
    and truncates float ones (nearly all black): those are scaled as a 16-bit file's are and as float
    arrays are (values in [0, 1])."""
    if image.mode.startswith("I;16"):
        return cv2.cvtColor((np.asarray(image).astype(np.uint16) >> 8).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    if image.mode == "F":
        return channels_to_rgb(pixel_values(np.asarray(image), "PIL image of mode F"), "RGB")
    if image.mode in ("I", "I;32"):
        raise ImageInputError(f"PIL image of mode {image.mode} (32-bit integers): give an 8- or 16-bit image, or "
                              f"an array of uint8 (0-255) or float (0-1) pixels")
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def pixel_values(pixels, kind: str) -> np.ndarray:
    """uint8 pixels as they are; float pixels checked to lie in [0, 1] and scaled to float32 0-255."""
    values = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels
    shape = tuple(pixels.shape)
    if values.size == 0:
        raise ImageInputError(f"empty {kind} of shape {shape}: an image needs at least one pixel")
    if values.dtype == np.uint8:
        return values
    if not np.issubdtype(values.dtype, np.floating):
        raise ImageInputError(f"{kind} of dtype {values.dtype} and shape {shape}: give uint8 (0-255) or float "
                              f"(0-1) pixels ({ACCEPTED_IMAGES})")
    low, high = float(values.min()), float(values.max())
    if not (0 <= low and high <= 1):  # also false for NaN
        raise ImageInputError(f"float {kind} with values in [{low:g}, {high:g}]: float pixels are read in [0, 1]; "
                              f"divide 0-255 values by 255 or give uint8")
    return values.astype(np.float32) * 255


def channels_to_rgb(pixels: np.ndarray, format: str) -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) in ``format`` order -> contiguous (H, W, 3) RGB."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.shape[2] == 1:
        return np.ascontiguousarray(np.repeat(pixels, 3, axis=2))
    colour = pixels[:, :, :3]
    return np.ascontiguousarray(colour[:, :, ::-1] if format == "BGR" else colour)
