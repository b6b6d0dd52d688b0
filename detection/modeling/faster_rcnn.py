"""Faster R-CNN: backbone -> region proposals -> per-region classification and box regression."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .traceable import exporting, size_tensor


class InputPreprocessor(nn.Module):
    """The network's input: each (3, H, W) image, 0-255 in RGB (uint8 or float), normalized, and the
    batch zero-padded (bottom and right) to a multiple of the stride. A module of its own, so that
    the exported backbone takes it without the heads."""

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float], size_divisibility: int,
                 input_format: str):
        super().__init__()
        # Normalized as (x / 255 - mean / 255) / (std / 255), the arithmetic of torchvision's
        # transform, so that imported torchvision models see bit-identical inputs.
        mean01 = torch.tensor(pixel_mean, dtype=torch.float64) / 255
        std01 = torch.tensor(pixel_std, dtype=torch.float64) / 255
        self.register_buffer("pixel_mean", mean01.float().view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std01.float().view(-1, 1, 1), persistent=False)
        self.size_divisibility = size_divisibility
        self.input_format = input_format
        self.channels_last = False

    def forward(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """(the padded (N, 3, H', W') batch, each image's (height, width))."""
        if torch.jit.is_tracing():
            return self.forward_traced(images)
        if exporting():
            return self.forward_exported(images)
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        stride = self.size_divisibility
        height = int(math.ceil(max(s[0] for s in image_sizes) / stride) * stride)
        width = int(math.ceil(max(s[1] for s in image_sizes) / stride) * stride)
        device = self.pixel_mean.device
        batch = images[0].new_zeros((len(images), 3, height, width), dtype=torch.float32, device=device)
        for slot, image in zip(batch, images):
            slot[:, : image.shape[1], : image.shape[2]].copy_(self.normalize(image))
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch, image_sizes

    def forward_traced(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple]]:
        """:meth:`forward` with the sizes kept as the 0-dim tensors a trace records, so that the
        graph pads any image to its own multiple of the stride (ints would freeze the example's)."""
        image_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        stride = self.size_divisibility
        largest = torch.stack([torch.stack(size) for size in image_sizes]).amax(dim=0)
        padded_height, padded_width = torch.div(largest + stride - 1, stride, rounding_mode="floor") * stride
        batch = [F.pad(self.normalize(image), [0, padded_width - width, 0, padded_height - height])
                 for image, (height, width) in zip(images, image_sizes)]
        return torch.stack(batch), image_sizes

    def forward_exported(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple]]:
        """:meth:`forward` on the symbolic sizes of torch.export: no ``int()`` or ``max()`` of one
        (each would fix the example's value), and padding as in :meth:`forward_traced`."""
        image_sizes = [(img.shape[-2], img.shape[-1]) for img in images]
        stride = self.size_divisibility
        height, width = image_sizes[0]
        for other_height, other_width in image_sizes[1:]:
            height, width = torch.sym_max(height, other_height), torch.sym_max(width, other_width)
        padded_height, padded_width = (height + stride - 1) // stride * stride, (width + stride - 1) // stride * stride
        batch = [F.pad(self.normalize(image), [0, padded_width - image_width, 0, padded_height - image_height])
                 for image, (image_height, image_width) in zip(images, image_sizes)]
        return torch.stack(batch), image_sizes

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) 0-255 -> float32 on the buffers' device, (x / 255 - mean) / std, in RGB or BGR order."""
        image = image.to(self.pixel_mean.device, non_blocking=True).float() / 255
        if self.input_format == "BGR":
            image = image.flip(0)
        return (image - self.pixel_mean) / self.pixel_std


class FasterRCNN(nn.Module):
    """The whole detector.

    Input: a list of dicts, one per image, with
      * "image": (3, H, W) tensor, RGB, 0-255 (uint8 or float), already resized for the network;
      * "height", "width" (optional): the original image size; outputs are scaled back to it;
      * in training, "boxes" (G, 4) xyxy in network-input pixels, "labels" (G,) in 1..K, and
        optionally "crowd_boxes" (C, 4).
    Output: in training a dict of losses; otherwise one dict per image with "boxes" (xyxy, original
    pixels), "scores" and "labels" (1..K).
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module,
                 pixel_mean: Sequence[float], pixel_std: Sequence[float], size_divisibility: int, input_format: str):
        super().__init__()
        self.preprocessor = InputPreprocessor(pixel_mean, pixel_std, size_divisibility, input_format)
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    @property
    def device(self) -> torch.device:
        return self.preprocessor.pixel_mean.device

    @property
    def pixel_mean(self) -> torch.Tensor:
        """(3, 1, 1) mean of the 0-1 input, in the model's channel order."""
        return self.preprocessor.pixel_mean

    @property
    def pixel_std(self) -> torch.Tensor:
        """(3, 1, 1) standard deviation of the 0-1 input."""
        return self.preprocessor.pixel_std

    @property
    def channels_last(self) -> bool:
        """Whether the input batch is laid out channels_last (the inference fast path sets it)."""
        return self.preprocessor.channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self.preprocessor.channels_last = value

    def forward(self, batch: list[dict]):
        images, image_sizes = self.preprocess([sample["image"] for sample in batch])
        features = self.backbone(images)
        targets = [self.training_target(sample) for sample in batch] if self.training else None
        proposals, rpn_losses = self.rpn(images.shape[-2:], features, image_sizes, targets)
        detections, head_losses = self.roi_heads(features, proposals, image_sizes, targets)
        if self.training:
            return {**rpn_losses, **head_losses}
        return [self.to_original_size(det, sample, size) for det, sample, size in zip(detections, batch, image_sizes)]

    # -- steps -----------------------------------------------------------------------------------
    def preprocess(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalize each image and pad the batch (bottom/right, with zeros) to a multiple of the stride."""
        return self.preprocessor(images)

    def training_target(self, sample: dict) -> dict:
        """The sample's boxes, labels (and crowd boxes, sampling seed) on the model's device."""
        device = self.device
        target = {"boxes": sample["boxes"].to(device).float(), "labels": sample["labels"].to(device)}
        if "crowd_boxes" in sample:
            target["crowd_boxes"] = sample["crowd_boxes"].to(device).float()
        if "seed" in sample:
            # Anchor and RoI sampling draw from a per-image stream: the same choices whatever the
            # number of processes, and exact resumes.
            target["generator"] = torch.Generator().manual_seed(int(sample["seed"]))
        return target

    @staticmethod
    def to_original_size(detections: dict, sample: dict, input_size: tuple[int, int]) -> dict:
        """Boxes scaled from the network input's (height, width) ``input_size`` to the sample's
        "height" and "width", when it gives them."""
        height, width = sample.get("height"), sample.get("width")
        if height is None or width is None:
            return detections
        boxes = detections["boxes"]
        if torch.jit.is_tracing() or exporting():
            # Sizes are 0-dim tensors or symbolic ints: the ratios in the graph, in float64 as in Python.
            original = torch.stack([size_tensor(width, torch.float64), size_tensor(height, torch.float64)])
            network = torch.stack([size_tensor(input_size[1], torch.float64),
                                   size_tensor(input_size[0], torch.float64)])
            scale = (original / network).to(boxes.dtype).repeat(2)
        else:
            scale = boxes.new_tensor([width / input_size[1], height / input_size[0]] * 2)
        return {**detections, "boxes": boxes * scale}
