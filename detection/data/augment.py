"""Training augmentations given in the config: albumentations transforms written in YAML, and named presets.

Each entry of ``input.augmentations`` is a mapping with the class name of an albumentations transform
and its keyword arguments, ``{name: ColorJitter, brightness: 0.2, p: 0.8}``; a ``transforms`` argument
(of ``OneOf``, ``SomeOf``, ``Sequential``) is a list of such entries. ``input.augment_presets`` names
lists of entries of :data:`PRESETS`, applied before ``input.augmentations``. The transforms run after
the paper's resize and flip, in the one bbox-aware pipeline of
:class:`~detection.data.transforms.TrainTransform`, seeded per sample.

:func:`check_augmentations` builds the transforms of a config and runs each on a gray image of the
training size, so that a typo, a bad argument or a transform that cannot take boxes stops the load
with one line naming the entry, before any training.
"""

from __future__ import annotations

import difflib
import inspect
import warnings
from typing import Any

import albumentations as A
import numpy as np
from omegaconf import OmegaConf

from resnet_engine.config import ConfigError

from .transforms import box_params, seed_pipeline

# Sizes are pixels of the image after the resize of input.min_size_train / max_size_train.
PRESETS: dict[str, list[dict[str, Any]]] = {
    # Brightness, contrast and saturation factors drawn from [0.6, 1.4], the hue shifted by up to 0.05
    # of the hue circle, in 80% of the images; boxes unchanged.
    "color_jitter": [
        {"name": "ColorJitter", "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.05, "p": 0.8},
    ],
    # Large-scale jitter (Ghiasi et al., "Simple Copy-Paste", 2021) at its 1024x1024 size: the longer side
    # resized to 1024, then the image scaled by a factor drawn from [0.1, 2.0]; a smaller image is padded
    # with mid-gray (128) at its right and bottom to 1024x1024, a larger one cropped at a random place.
    "large_scale_jitter": [
        {"name": "LongestMaxSize", "max_size": 1024, "p": 1.0},
        {"name": "RandomScale", "scale_limit": [-0.9, 1.0], "p": 1.0},
        {"name": "PadIfNeeded", "min_height": 1024, "min_width": 1024, "position": "top_left", "border_mode": 0,
         "fill": 128, "p": 1.0},
        {"name": "RandomCrop", "height": 1024, "width": 1024, "p": 1.0},
    ],
    # In half of the images, a crop at a random place and of a random size that holds every box whole.
    "random_crop": [
        {"name": "BBoxSafeRandomCrop", "erosion_rate": 0.0, "p": 0.5},
    ],
}

EXAMPLE_ENTRY = "{name: ColorJitter, brightness: 0.2, p: 0.8}"


def configured_entries(input_cfg) -> list[tuple[str, Any]]:
    """(config key, entry) of every transform of ``input_cfg``: the presets' entries first, in the order
    of input.augment_presets, then input.augmentations."""
    presets = plain(input_cfg.augment_presets)
    entries = []
    for index, preset in enumerate(presets):
        if preset not in PRESETS:
            close = difflib.get_close_matches(str(preset), list(PRESETS), n=1)
            hint = f"did you mean {close[0]}?" if close else f"the presets are {', '.join(PRESETS)}"
            raise ConfigError(f"input.augment_presets[{index}]: no preset '{preset}' ({hint})")
        entries += [(f"input.augment_presets[{index}] ({preset})", entry) for entry in PRESETS[preset]]
    entries += [(f"input.augmentations[{index}]", entry) for index, entry in enumerate(plain(input_cfg.augmentations))]
    return entries


def plain(value) -> Any:
    """An omegaconf list or mapping as Python lists and dicts."""
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def build_augmentations(input_cfg) -> list[A.BasicTransform]:
    """The albumentations transforms of ``input_cfg``, in order (empty when it has none)."""
    return [build_transform(entry, key) for key, entry in configured_entries(input_cfg)]


def build_transform(entry: Any, key: str) -> A.BasicTransform:
    """One entry, ``{name: ClassName, argument: value, ...}``, as an albumentations transform."""
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise ConfigError(f"{key}={entry!r}: give a mapping with the name of an albumentations transform and its "
                          f"arguments, such as {EXAMPLE_ENTRY}")
    arguments = dict(entry)
    name = arguments.pop("name")
    transform_class = transform_class_named(name, key)
    check_argument_names(transform_class, arguments, f"{key} ({name})")
    if isinstance(arguments.get("transforms"), list):
        arguments["transforms"] = [build_transform(child, f"{key}.transforms[{index}]")
                                   for index, child in enumerate(arguments["transforms"])]
    try:
        transform = transform_class(**arguments)
    except (TypeError, ValueError) as error:  # pydantic's ValidationError, albumentations' checks
        raise ConfigError(f"{key} ({name}) has bad arguments ({describe_error(error)}): fix them as the "
                          f"documentation of albumentations {A.__version__} describes {name}") from None
    check_targets(transform, f"{key} ({name})")
    return transform


def check_targets(transform, where: str) -> None:
    """A transform of images that moves pixels must move the boxes too (the volume transforms take no
    image; the others that lack boxes fail on the trial image of :func:`check_augmentations`)."""
    if isinstance(transform, A.BaseCompose):
        return
    targets = set(transform.targets)
    if "image" not in targets or (isinstance(transform, A.DualTransform) and "bboxes" not in targets):
        raise ConfigError(f"{where} does not transform an image with its boxes (it takes {', '.join(sorted(targets))}): "
                          f"use a transform of images that supports bboxes")


def transform_class_named(name: str, key: str) -> type:
    transform_class = getattr(A, name, None)
    if is_transform_class(transform_class):
        return transform_class
    names = [n for n, value in vars(A).items() if is_transform_class(value)]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(f"{key}: albumentations {A.__version__} has no transform '{name}'{hint}: give the class name "
                      f"of one, such as ColorJitter or RandomSizedBBoxSafeCrop")


def is_transform_class(value) -> bool:
    """A transform, or a container of transforms (OneOf, SomeOf, Sequential)."""
    return inspect.isclass(value) and issubclass(value, A.BasicTransform | A.BaseCompose)


def check_argument_names(transform_class: type, arguments: dict, where: str) -> None:
    """albumentations 2 drops an unknown keyword with a warning: a misspelt argument would leave its
    default in place. Names the transform's constructor does not take are errors here."""
    parameters = inspect.signature(transform_class).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    for argument in arguments:
        if argument not in parameters:
            close = difflib.get_close_matches(argument, list(parameters), n=1)
            hint = f"did you mean {close[0]}?" if close else f"it takes {', '.join(parameters)}"
            raise ConfigError(f"{where}: no argument '{argument}' ({hint})")


def describe_error(error: Exception) -> str:
    """One line for an error of albumentations: for pydantic's validation errors, each argument with
    what is wrong with it (albumentations raises them as the cause of a ValueError)."""
    validation = next((e for e in (error, error.__cause__) if callable(getattr(e, "errors", None))), None)
    if validation is not None:
        problems: dict[str, list[str]] = {}
        for item in validation.errors():
            argument = str(item["loc"][0]) if item.get("loc") else "arguments"
            problems.setdefault(argument, []).append(item["msg"].rstrip("."))
        return "; ".join(f"{argument}: {' or '.join(dict.fromkeys(messages))}"
                         for argument, messages in problems.items())
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def check_augmentations(input_cfg) -> None:
    """Build the transforms of ``input_cfg`` and run each, in order, on a gray image of the smallest
    training size with one box; a failure, or an image that is no longer 8-bit RGB, is one ConfigError
    naming the entry."""
    entries = configured_entries(input_cfg)
    if not entries:
        return
    side = min(input_cfg.min_size_train)
    image = np.full((side, side, 3), 128, dtype=np.uint8)
    boxes = np.array([[side / 4, side / 4, side * 3 / 4, side * 3 / 4]], dtype=np.float32)
    for key, entry in entries:
        transform = build_transform(entry, key)
        transform.p = 1.0  # the trial runs every transform, whatever its probability
        image, boxes = trial_run(transform, image, boxes, f"{key} ({entry['name']})")


def trial_run(transform: A.BasicTransform, image: np.ndarray, boxes: np.ndarray, where: str):
    """``transform`` applied to ``image`` and its ``boxes`` as training applies it: (the new image, its boxes)."""
    height, width = image.shape[:2]
    with warnings.catch_warnings():
        # An image-only transform leaves the boxes to no transform, which albumentations points out.
        warnings.filterwarnings("ignore", "Got processor for bboxes, but no transform to process it")
        pipeline = A.Compose([transform], bbox_params=box_params())
    seed_pipeline(pipeline, 0)
    try:
        out = pipeline(image=image, bboxes=boxes, box_ids=np.arange(len(boxes)))
    except Exception as error:  # albumentations raises ValueError, KeyError, RuntimeError and its own types
        raise ConfigError(f"{where} fails on a {width}x{height} image with boxes ({describe_error(error)}): the "
                          f"training pipeline passes an 8-bit RGB image and its boxes, after the resize to "
                          f"input.min_size_train; remove it or change its arguments") from None
    result = out["image"]
    if not (isinstance(result, np.ndarray) and result.dtype == np.uint8 and result.ndim == 3 and result.shape[2] == 3):
        kind = (f"a {result.dtype} array of shape {tuple(result.shape)}" if hasattr(result, "dtype")
                else type(result).__name__)
        raise ConfigError(f"{where} turns the 8-bit RGB image into {kind}: the detector takes 8-bit RGB images "
                          f"and normalizes them itself (input.pixel_mean, input.pixel_std); remove it")
    return result, np.asarray(out["bboxes"], dtype=np.float32).reshape(-1, 4)

