"""The layer responses of the paper's Fig. 7: the standard deviation of each 3x3 layer's output of a trained
CIFAR net over the test set, in layer order and sorted by magnitude.

    from classification.layer_responses import measure_checkpoint, write_responses

    nets = [measure_checkpoint(path) for path in ["output/deg/plain-20/model_final.pth", ...]]
    write_responses(nets, "output/responses")      # responses.json, responses.png

A response is a 3x3 layer's output after its BN, before the ReLU and before the addition of the shortcut
(the modules of :meth:`backbones.CifarResNet.response_modules`, hooked), with the net in eval mode (BN
with its running statistics, as at test time) on the test images of the run's data, its own pixel mean
subtracted.

Which standard deviation: that of each channel over all test images and positions (the population
std, i.e. divided by the count), averaged over the layer's channels. BN scales each channel on its
own, so a channel's std after BN is about its learned scale |gamma|, and the average over channels
measures how strongly the layer's function changes the signal, the question of Fig. 7. The std of all
of a layer's elements together would also count the spread of the channels' means (BN's offsets beta)
as response. Each channel's mean and squared deviations are accumulated in float64 over the whole set
in one pass, batch after batch (merged exactly, not averaged over batches).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.config import config_to_text
from resnet_engine.distributed import select_device
from resnet_engine.errors import UserError

from .classifier import network_name
from .config import CIFAR_CLASSES, load_classification_config
from .data.cifar import find_cifar
from .data.loaders import build_classification_data, cifar_root
from .weights import load_trained_classifier

logger = logging.getLogger(__name__)

# Keys that may change how a checkpoint's net is measured: where its test images are and how they are read.
# The net itself (and its pixel mean) comes from the checkpoint.
MEASUREMENT_KEYS = ("data.", "device", "test.ims_per_batch")


class LayerResponseError(UserError):
    """Weights that are not a CIFAR classifier of tools/train_cls.py, or an override that does not apply."""


@dataclass
class ResponseImages:
    """The images a std is over: ``num_images`` of the ``split`` of ``dataset`` in ``data_root``
    (``synthetic``: a set the toolkit generated). The paper's are the 10,000 CIFAR-10 test images."""

    split: str
    dataset: str
    data_root: str
    synthetic: bool
    num_images: int

    def describe(self) -> str:
        """"the 10,000 test images of CIFAR-10 in /data/cifar" (", the toolkit's synthetic set")."""
        synthetic = ", the toolkit's synthetic set" if self.synthetic else ""
        return f"the {self.num_images:,} {self.split} images of {self.dataset} in {self.data_root}{synthetic}"


@dataclass
class NetResponses:
    """One net's response std per 3x3 layer, in layer order, and the images it is over (as responses.json
    lists them)."""

    net: str
    std: list[float]
    images: ResponseImages


class ChannelMoments:
    """Each channel's count, mean and sum of squared deviations, in float64, over batches of (B, C, H, W)
    tensors: each batch's own moments are merged into the running ones exactly (Chan et al.'s update), so the
    result is that of all values at once, not a mean over batches."""

    def __init__(self):
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squared_deviations: torch.Tensor | None = None

    def update(self, output: torch.Tensor) -> None:
        values = output.detach().to(torch.float64).transpose(0, 1).reshape(output.shape[1], -1)
        count = values.shape[1]
        mean = values.mean(dim=1)
        squared = ((values - mean[:, None]) ** 2).sum(dim=1)
        if self.count == 0:
            self.count, self.mean, self.squared_deviations = count, mean, squared
            return
        total = self.count + count
        delta = mean - self.mean
        self.squared_deviations = self.squared_deviations + squared + delta**2 * (self.count * count / total)
        self.mean = self.mean + delta * (count / total)
        self.count = total

    def channel_std(self) -> torch.Tensor:
        if not self.count:
            raise ValueError("no values were seen")
        return (self.squared_deviations / self.count).sqrt()


def layer_response_stds(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[float]:
    """The response std of each 3x3 layer of ``model`` (a CifarClassifier or a CifarResNet) over the image
    ``batches`` (normalized, (B, 3, 32, 32)), in layer order: per channel, then averaged over channels."""
    network = getattr(model, "backbone", model)
    modules = network.response_modules()
    moments = [ChannelMoments() for _ in modules]
    # The moments are taken inside the hook: the in-place ReLU that follows would change the tensor later.
    handles = [module.register_forward_hook(lambda _module, _inputs, output, into=into: into.update(output))
               for (_, module), into in zip(modules, moments)]
    device = next(network.parameters()).device
    was_training = network.training
    network.eval()
    try:
        with torch.inference_mode():
            for images in batches:
                network(images.to(device))
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return [float(m.channel_std().mean()) for m in moments]


# --------------------------------------------------------------------------------------------- checkpoints


def check_measurement_overrides(overrides: Sequence[str]) -> None:
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not any(key == allowed or (allowed.endswith(".") and key.startswith(allowed)) for allowed in MEASUREMENT_KEYS):
            raise LayerResponseError(f"override '{text}': the net and its settings come from the checkpoint; only "
                                     f"data.*, device and test.ims_per_batch apply (where and how its test images "
                                     f"are read)")


def measurement_config(trained_cfg, overrides: Sequence[str]):
    """The checkpoint's config with ``overrides``, loaded and checked as any config file is."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "checkpoint_config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(config_to_text(trained_cfg))
        return load_classification_config(path, overrides)


def measure_checkpoint(path: str, overrides: Sequence[str] = ()) -> NetResponses:
    """The responses of the CIFAR classifier in ``path`` (a checkpoint of tools/train_cls.py) on the test
    split of its data (``data.root`` and the other data keys may be overridden)."""
    check_measurement_overrides(overrides)
    # The meta first: only a CIFAR run keeps a pixel mean, and the net is built only for such a checkpoint.
    meta = load_checkpoint(path).get("meta") or {}
    if meta.get("task") != "classification" or meta.get("pixel_mean") is None:
        raise LayerResponseError(f"{path} is not a CIFAR classifier checkpoint: give --weights as the "
                                 f"model_final.pth of a CIFAR run of tools/train_cls.py or tools/degradation.py")
    trained = load_trained_classifier(path)
    cfg = measurement_config(trained.cfg, overrides)
    data = build_classification_data(cfg, None, mean=meta["pixel_mean"].numpy(), split="test")
    model = trained.model.to(select_device(cfg.device))
    name, images = network_name(trained.cfg), response_images(cfg, data.sizes["test"])
    logger.info("%s (%s): responses of %d layers on %s", name, path, len(model.backbone.response_modules()),
                images.describe())
    stds = layer_response_stds(model, (batch["images"] for batch in data.test_loaders["test"]()))
    return NetResponses(name, stds, images)


def response_images(cfg, count: int) -> ResponseImages:
    """The ``count`` test images of ``cfg``'s data: the folder read (the embedded synthetic set's when
    data.root is empty) and whether the toolkit generated it."""
    root = cifar_root(cfg)
    source = find_cifar(root, CIFAR_CLASSES[cfg.data.dataset])
    return ResponseImages("test", source.layout.name, root, source.generated, count)


# --------------------------------------------------------------------------------------------- outputs


def write_responses(nets: list[NetResponses], out: str) -> tuple[str, str]:
    """OUT/responses.json ({"nets": [{"net", "std", and the images' "split", "dataset", "data_root",
    "synthetic", "num_images"}]}) and OUT/responses.png; returns their paths."""
    os.makedirs(out, exist_ok=True)
    json_path, figure_path = os.path.join(out, "responses.json"), os.path.join(out, "responses.png")
    with open(json_path + ".tmp", "w", encoding="utf-8") as handle:
        json.dump({"nets": [{"net": net.net, "std": net.std, **asdict(net.images)} for net in nets]}, handle, indent=1)
    os.replace(json_path + ".tmp", json_path)
    plot_responses(nets, figure_path)
    return json_path, figure_path


def plot_responses(nets: list[NetResponses], path: str) -> None:
    """Fig. 7 of the paper: the stds in layer order (top) and sorted in descending order (bottom); plain
    nets dashed, residual nets solid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (by_layer, by_size) = plt.subplots(2, 1, figsize=(8, 7))
    for net in nets:
        style = "--" if net.net.startswith("plain") else "-"
        layers = range(1, len(net.std) + 1)
        by_layer.plot(layers, net.std, style, linewidth=1.2, label=net.net)
        by_size.plot(layers, sorted(net.std, reverse=True), style, linewidth=1.2, label=net.net)
    by_layer.set(xlabel="layer index (original)", ylabel="std", title="3x3 layer responses, in layer order")
    by_size.set(xlabel="layer index (sorted by magnitude)", ylabel="std", title="sorted by magnitude")
    for axis in (by_layer, by_size):
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
