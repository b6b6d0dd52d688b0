"""Detections for single images: the library side of tools/infer.py and of users' own scripts.

    from detection.config import load_detection_config
    from detection.predictor import Predictor

    predictor = Predictor(load_detection_config("configs/shapes.yaml"), "output/shapes/model_final.pth")
    detections = predictor(image)      # (H, W, 3) uint8 RGB -> {"boxes", "scores", "labels", ...}

or from a detector of detection.builders: ``Predictor(faster_rcnn_r50_fpn(num_classes=3))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .builders import built_detector_settings
from .data.image_io import BadImageError, read_image, to_chw_tensor
from .data.transforms import EvalTransform, shortest_edge_scale
from .modeling.build import build_test_model, test_needs_original_images
from .modeling.speed import inference_autocast
from .weights import load_fast_detector


class DegenerateImageError(BadImageError):
    """An image too thin to detect in: resized to the test scale, its shorter side would vanish."""


class Predictor:
    """A detector in eval mode with its test-time resize; outputs are in the input image's pixels."""

    def __init__(self, cfg, weights: str | None = None, device: str | torch.device | None = None):
        """``cfg`` and ``weights``: a detection config and a detector file, on the inference fast path
        when test.fast is on (device: the CPU unless given).

        Or ``cfg`` alone is a detector made by detection.builders, with the config and categories its
        builder recorded on it: it is put in eval mode and run as it is, on its own device unless one
        is given (``detection.modeling.speed.optimize_for_inference`` gives it the fast path).
        """
        if isinstance(cfg, torch.nn.Module):
            model = cfg
            cfg, self.category_map = built_detector_settings(model)
            if weights is not None:
                raise TypeError("a built detector loads its weights in its builder: faster_rcnn_r50_fpn(weights=...)")
            model = (model if device is None else model.to(device)).eval()
            self.device = model.device
        else:
            if weights is None:
                raise TypeError("Predictor(cfg, weights) needs the detector file of the config")
            self.device = torch.device(device or "cpu")
            model, self.category_map = load_fast_detector(cfg, weights, self.device)
        self.model = build_test_model(model, cfg)
        self.amp = cfg.test.amp
        inference_autocast(self.amp, self.device)  # an unusable test.amp fails here, not on the first image
        self.transform = (None if test_needs_original_images(cfg)
                          else EvalTransform(cfg.input.min_size_test, cfg.input.max_size_test))
        self.score_thresh = cfg.test.score_thresh
        # The smallest scale the image is resized to, and its cap on the longer side (as test-time
        # multi-scale caps each scale: max_size_test * scale / min_size_test).
        self.smallest_scale = min([*(cfg.test.scales or [cfg.input.min_size_test]), cfg.test.rpn_scale or math.inf])
        self.smallest_scale_max_size = cfg.input.max_size_test * self.smallest_scale / cfg.input.min_size_test

    @property
    def class_names(self) -> list[str]:
        return list(self.category_map.names)

    @torch.inference_mode()
    def __call__(self, image: np.ndarray) -> dict:
        """{"boxes" (N, 4) xyxy, "scores" (N,), "labels" (N,) 1..K, "category_ids" (N,)} as numpy arrays."""
        height, width = image.shape[:2]
        self.check_size(height, width)
        resized = self.transform(image) if self.transform else image
        sample = {"image": to_chw_tensor(resized),
                  "height": height, "width": width}
        with inference_autocast(self.amp, self.device):
            detections = self.model([sample])[0]
        labels = detections["labels"].cpu().numpy()
        category_ids = np.asarray(self.category_map.category_ids)[labels - 1] if len(labels) else labels
        return {"boxes": detections["boxes"].float().cpu().numpy(), "scores": detections["scores"].float().cpu().numpy(),
                "labels": labels, "category_ids": category_ids}

    def check_size(self, height: int, width: int) -> None:
        scale = shortest_edge_scale(height, width, self.smallest_scale, self.smallest_scale_max_size)
        if round(min(height, width) * scale) < 1:
            raise DegenerateImageError(
                f"image of {width}x{height} pixels is too thin: at the test scale (input.min_size_test, "
                f"input.max_size_test) its shorter side would be {min(height, width) * scale:.2g} pixels")

    def predict_file(self, path: str) -> tuple[np.ndarray, dict]:
        # A photo without annotations is detected (and drawn) upright, as a viewer shows it.
        image = read_image(path, apply_exif_orientation=True)
        try:
            return image, self(image)
        except DegenerateImageError as error:
            raise DegenerateImageError(f"{error}: {path}") from None
