"""Detections for the images users hold: the library side of tools/infer.py and of users' own scripts.

    from detection.config import load_detection_config
    from detection.predictor import Predictor

    predictor = Predictor(load_detection_config("configs/shapes.yaml"), "output/shapes/model_final.pth")
    detections = predictor("photo.jpg")     # {"boxes", "scores", "labels", "category_ids", "class_names"}
    batch = predictor([pil_image, bgr_array, chw_tensor], format="BGR")   # one forward, one dict each
    ensemble = Predictor(cfg, ["net1/model_final.pth", "net2/model_final.pth"])   # several: one ensemble

An image is a file path, a PIL image, a numpy array (H, W, 3) in RGB or BGR (``format=``), (H, W, 4),
(H, W, 1) or (H, W), or a (C, H, W) tensor as torchvision takes it; uint8 pixels in 0-255 or float
pixels in [0, 1] (detection.data.image_io.as_rgb_image). Boxes come back in the pixels of the input
(files: as a viewer shows them, EXIF orientation applied). The images of a list are resized, padded
to the largest of them and run through the detector as one batch, as at evaluation.

The predictor runs on the GPU when there is one (``device="auto"``); ``device="cpu"`` keeps it on the
CPU. A detector of detection.builders works too: ``Predictor(faster_rcnn_r50_fpn(num_classes=3))``;
``Predictor.random("shapes.yaml")`` builds one with random weights, to try the API without a file.
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from omegaconf import DictConfig

from resnet_engine.errors import UserError

from .builders import built_detector_settings
from .config import load_detection_config
from .data.coco import CategoryMap
from .data.image_io import BadImageError, ImageInputError, as_rgb_image, read_image, to_chw_tensor
from .data.transforms import EvalTransform, shortest_edge_scale
from .ensemble import load_detectors
from .modeling.build import build_model, build_test_model, test_needs_original_images
from .modeling.speed import inference_autocast


class DegenerateImageError(BadImageError):
    """An image too thin to detect in: resized to the test scale, its shorter side would vanish."""


def choose_device(device: str | torch.device = "auto") -> torch.device:
    """"auto": the GPU when there is one, else the CPU; otherwise the device named ("cpu", "cuda:1")."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device={device!r} is not a device: give 'auto', 'cpu' or 'cuda'") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device={device!r} but no CUDA device is available: give 'cpu' or 'auto'")
    return chosen


class Predictor:
    """A detector in eval mode with its test-time resize; outputs are in the input image's pixels."""

    def __init__(self, cfg, weights: str | os.PathLike | list[str] | None = None, device: str | torch.device = "auto"):
        """``cfg`` and ``weights``: a detection config (or its file, or a shipped config's name) and a
        detector file, on the inference fast path
        when test.fast is on; a list of several files runs them as one ensemble (detection/ensemble.py).

        Or ``cfg`` alone is a detector made by detection.builders, with the config and categories its
        builder recorded on it: it is put in eval mode and moved to ``device`` (with "auto", to the GPU
        unless it is on one already; ``detection.modeling.speed.optimize_for_inference`` gives it the
        fast path).
        """
        if isinstance(cfg, torch.nn.Module):
            model = cfg
            cfg, self.category_map = built_detector_settings(model)
            if weights is not None:
                raise TypeError("a built detector loads its weights in its builder: faster_rcnn_r50_fpn(weights=...)")
            # "auto" leaves a detector the user put on a GPU where it is.
            on_gpu = isinstance(device, str) and device == "auto" and model.device.type == "cuda"
            model = model.to(model.device if on_gpu else choose_device(device)).eval()
        else:
            if weights is None:
                raise TypeError("Predictor(cfg, weights) needs the detector file of the config")
            if isinstance(cfg, (str, os.PathLike)):  # a config file, or the name of a shipped one
                cfg = load_detection_config(os.fspath(cfg))
            # Paths (pathlib) as well as strings, one file or several.
            weights = ([os.fspath(w) for w in weights] if isinstance(weights, (list, tuple))
                       else os.fspath(weights))
            model, self.category_map = load_detectors(cfg, weights, choose_device(device))
        self.device = model.device
        self.model = build_test_model(model, cfg)
        self.amp = cfg.test.amp
        inference_autocast(self.amp, self.device)  # an unusable test.amp fails here, not on the first image
        self.transform = (None if test_needs_original_images(cfg)
                          else EvalTransform(cfg.input.min_size_test, cfg.input.max_size_test))
        # The smallest scale the image is resized to, and its cap on the longer side (as test-time
        # multi-scale caps each scale: max_size_test * scale / min_size_test).
        # The paper's multi-scale takes its proposals at test.rpn_scale, or at input.min_size_test without one.
        rpn_scale = (cfg.test.rpn_scale or cfg.input.min_size_test) if cfg.test.multiscale_mode == "paper" else math.inf
        self.smallest_scale = min([*(cfg.test.scales or [cfg.input.min_size_test]), rpn_scale])
        self.smallest_scale_max_size = cfg.input.max_size_test * self.smallest_scale / cfg.input.min_size_test

    @classmethod
    def random(cls, config: str | DictConfig = "shapes.yaml", num_classes: int | None = None,
               device: str | torch.device = "auto", seed: int = 0) -> Predictor:
        """A predictor whose detector has random weights: it runs every input and returns boxes of the
        right form, whose content means nothing. For trying the API and for tests, not for real use.

        ``config``: a detection config or the name of a shipped one; ``num_classes``: by default the
        config's model.num_classes, else 3 classes named "1", "2", "3".
        """
        cfg = config if isinstance(config, DictConfig) else load_detection_config(config)
        num_classes = num_classes or cfg.model.num_classes or 3
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(seed)
            model = build_model(cfg, num_classes, backbone_weights=False)
        # What a builder of detection.builders records on its detectors.
        model.config, model.category_map = cfg, CategoryMap.identity(num_classes)
        return cls(model, device=device)

    @property
    def class_names(self) -> list[str]:
        return list(self.category_map.names)

    def __call__(self, images, format: str = "RGB") -> dict | list[dict]:
        """Detections of one image, or a list of them for a list of images (one forward pass).

        Each is {"boxes" (N, 4) xyxy in the input's pixels, "scores" (N,), "labels" (N,) 1..K,
        "category_ids" (N,), as numpy arrays, and "class_names", a list of N names}. ``format`` is the
        channel order of arrays and tensors ("RGB" or "BGR").
        """
        if not isinstance(images, (list, tuple)):
            return self.detect([self.sample(as_rgb_image(images, format), input_name(images))])[0]
        samples = []
        for index, image in enumerate(images):
            try:
                samples.append(self.sample(as_rgb_image(image, format), input_name(image)))
            except (ImageInputError, DegenerateImageError) as error:
                raise type(error)(f"image #{index} of the list: {error}") from None
        return self.detect(samples)

    def predict_file(self, path: str, upright: bool = True) -> tuple[np.ndarray, dict]:
        """The image of ``path`` as drawn (RGB; upright, or its stored pixels) and its detections."""
        image = as_rgb_image(path) if upright else read_image(path)
        return image, self.detect([self.sample(image, path)])[0]

    def sample(self, image: np.ndarray, name: str | None = None) -> dict:
        """The detector's input for one (H, W, 3) RGB image: resized to the test scale, with its size."""
        height, width = image.shape[:2]
        self.check_size(height, width, name)
        resized = self.transform(image) if self.transform else image
        return {"image": to_chw_tensor(resized), "height": height, "width": width}

    def detect(self, samples: list[dict]) -> list[dict]:
        if not samples:
            return []
        with torch.inference_mode(), inference_autocast(self.amp, self.device):
            outputs = self.model(samples)
        return [self.as_numpy(detections) for detections in outputs]

    def as_numpy(self, detections: dict) -> dict:
        labels = detections["labels"].cpu().numpy()
        category_ids = np.asarray(self.category_map.category_ids)[labels - 1] if len(labels) else labels
        return {"boxes": detections["boxes"].float().cpu().numpy(), "scores": detections["scores"].float().cpu().numpy(),
                "labels": labels, "category_ids": category_ids,
                "class_names": [self.category_map.names[label - 1] for label in labels.tolist()]}

    def check_size(self, height: int, width: int, name: str | None = None) -> None:
        scale = shortest_edge_scale(height, width, self.smallest_scale, self.smallest_scale_max_size)
        if round(min(height, width) * scale) < 1:
            raise DegenerateImageError(
                f"image of {width}x{height} pixels is too thin: at the test scale (input.min_size_test, "
                f"input.max_size_test) its shorter side would be {min(height, width) * scale:.2g} pixels"
                + (f": {name}" if name else ""))


def input_name(image) -> str | None:
    """A file's path, named in the messages about its image."""
    return os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
