"""Several trained detectors run as one, as in the paper's COCO 2015 entry (ResNet paper, Appendix B):
"an ensemble of RPNs proposes regions, and the union of their proposals is scored by an ensemble of
per-region classifiers".

For each image of a batch:

1. every network computes its own backbone features of the image (its own normalization and padding);
2. every network's RPN proposes regions; the proposals of all networks are concatenated (the union,
   with no further NMS: the paper names none, and the per-class NMS at the end removes the repeats);
3. every network's RoI head scores that same union: class probabilities (softmax) and per-class boxes
   decoded with the network's own box coder and clipped to the image;
4. the probabilities and the boxes are averaged over the networks (an unweighted mean);
5. the score threshold, the per-class NMS and the top detections of the ``test`` keys run once.

C4 and FPN detectors both work, mixed too: each runs its own modules, and the ensemble only meets
them at the proposals (network-input pixels, the same for all) and at the head outputs. Inference
only, single scale: the paper's test-time improvements (box refinement, multi-scale testing) run on
one network (detection/modeling/test_time.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from resnet_engine.errors import UserError

from .data.coco import CategoryMap
from .modeling.faster_rcnn import FasterRCNN
from .modeling.test_time import TestTimeOptions
from .weights import load_fast_detector, short_list

# The keys of a network's own training config that shape its model and its input: each network of an
# ensemble is built with them (the test scale, the data and the ``test`` keys stay the ensemble's).
NETWORK_INPUT_KEYS = ("pixel_mean", "pixel_std", "format", "size_divisibility")


class EnsembleError(UserError):
    """Detectors that cannot run as one ensemble."""


@dataclass
class NetworkPass:
    """One network's view of a batch: its features, the padded batch's (height, width) and each
    image's (height, width) inside it."""

    model: FasterRCNN
    features: dict[str, torch.Tensor]
    padded_size: tuple[int, int]
    image_sizes: list[tuple[int, int]]


class DetectorEnsemble(nn.Module):
    """Detectors of the same classes run as one (see the module's docstring); the first one's
    ``test`` settings (score threshold, NMS, detections per image) post-process the averaged scores.

    Input and output are those of :class:`FasterRCNN` at inference: a list of samples with "image"
    (resized for the networks) and optionally "height" and "width"; one dict of "boxes", "scores",
    "labels" per image.
    """

    def __init__(self, models: Sequence[FasterRCNN]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one detector")
        counts = {model.roi_heads.predictor.cls_score.out_features for model in models}
        if len(counts) > 1:
            raise ValueError(f"the detectors of an ensemble must have the same classes; their class counts "
                             f"(background included) are {sorted(counts)}")
        self.models = nn.ModuleList(models)

    @property
    def device(self) -> torch.device:
        return self.models[0].device

    @property
    def roi_heads(self):
        """The first network's RoI heads, whose settings post-process the ensemble's scores."""
        return self.models[0].roi_heads

    @torch.inference_mode()
    def forward(self, batch: list[dict]) -> list[dict]:
        passes = self.run_networks([sample["image"] for sample in batch])
        proposals = self.union_of_proposals(passes)
        scores, boxes = self.mean_predictions(passes, proposals)
        detections = [self.roi_heads.select_detections(s, b) for s, b in zip(scores, boxes)]
        return [FasterRCNN.to_original_size(d, sample, size)
                for d, sample, size in zip(detections, batch, passes[0].image_sizes)]

    def run_networks(self, images: list[torch.Tensor]) -> list[NetworkPass]:
        """Each network's backbone features of the images."""
        passes = []
        for model in self.models:
            padded, image_sizes = model.preprocess(images)
            passes.append(NetworkPass(model, model.backbone(padded), tuple(padded.shape[-2:]), image_sizes))
        return passes

    @staticmethod
    def union_of_proposals(passes: list[NetworkPass]) -> list[torch.Tensor]:
        """Per image, the proposals of every network's RPN, concatenated in the networks' order."""
        per_network = [p.model.rpn(p.padded_size, p.features, p.image_sizes)[0] for p in passes]
        return [torch.cat(image_proposals) for image_proposals in zip(*per_network)]

    @staticmethod
    def mean_predictions(passes: list[NetworkPass],
                         proposals: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per image, the class probabilities (R, K+1) and per-class boxes (R, K+1, 4) of ``proposals``
        averaged over the networks' RoI heads."""
        per_network = [p.model.roi_heads.predict(p.features, proposals, p.image_sizes) for p in passes]
        scores = [torch.stack(image_scores).mean(dim=0) for image_scores in zip(*(s for s, _ in per_network))]
        boxes = [torch.stack(image_boxes).mean(dim=0) for image_boxes in zip(*(b for _, b in per_network))]
        return scores, boxes


# -- loading --------------------------------------------------------------------------------------
def load_detectors(cfg, weights: str | Sequence[str], device: torch.device):
    """(model, category map) of one detector file, as load_fast_detector gives it, or of several as
    their :class:`DetectorEnsemble`."""
    if isinstance(weights, str):
        return load_fast_detector(cfg, weights, device)
    if len(weights) == 1:
        return load_fast_detector(cfg, weights[0], device)
    return load_ensemble(cfg, weights, device)


def load_ensemble(cfg, weights: Sequence[str], device: torch.device) -> tuple[DetectorEnsemble, CategoryMap]:
    """The detectors of ``weights`` as one :class:`DetectorEnsemble` and their shared category map.

    Each network is built from its own training config when its file keeps one (the ``model`` keys
    and the input normalization of :data:`NETWORK_INPUT_KEYS`), else from ``cfg``; ``cfg`` gives the
    test scale, the data and the ``test`` keys of the whole ensemble.
    """
    check_single_scale(cfg)
    models, category_map, first = [], None, None
    for path in weights:
        model, network_map = load_fast_detector(network_config(cfg, path), path, device)
        if category_map is None:
            category_map, first = network_map, path
        else:
            check_same_classes(category_map, first, network_map, path)
        models.append(model)
    return DetectorEnsemble(models), category_map


def network_config(cfg, path: str):
    """``cfg`` with the model keys and input normalization of the training config kept in ``path``
    (a training checkpoint or model_final.pth); ``cfg`` itself when the file keeps none."""
    text = saved_config_text(path)
    if not text:
        return cfg
    try:
        saved = OmegaConf.create(text)
        own = {"model": saved.model, "input": {key: saved.input[key] for key in NETWORK_INPUT_KEYS if key in saved.input}}
        return OmegaConf.merge(cfg, own)
    except OmegaConfBaseException as error:
        raise EnsembleError(f"{path}: the training config it keeps does not fit this version's model keys "
                            f"({str(error).splitlines()[0]}): evaluate it with a single --weights and its own --cfg") from None


def saved_config_text(path: str) -> str:
    """The training config a checkpoint keeps ("" for files without one, such as converted weights).
    The file is memory-mapped, so that reading the config does not read the weights."""
    try:
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception:  # noqa: BLE001 - unreadable here: loading the weights next names the problem
        return ""
    return state.get("config", "") if isinstance(state, dict) else ""


def check_same_classes(expected: CategoryMap, expected_source: str, other: CategoryMap, source: str) -> None:
    """One line when two networks of an ensemble were trained on different classes."""
    if list(other.names) == list(expected.names) and list(other.category_ids) == list(expected.category_ids):
        return
    raise EnsembleError(f"{source} detects the {len(other.names)} classes {short_list(list(other.names))} and "
                        f"{expected_source} the {len(expected.names)} classes {short_list(list(expected.names))}: "
                        f"an ensemble averages the scores of the same classes; give weights trained on one class list")


def check_single_scale(cfg) -> None:
    """The ensemble runs single-scale inference: refuse the config's test-time improvements rather
    than leave them out without a word."""
    if TestTimeOptions.from_config(cfg.test, cfg.input).any_enabled:
        raise EnsembleError("an ensemble of several --weights runs single-scale inference: set test.scales=[] "
                            "test.flip=false test.box_refinement=false test.box_voting=false, or evaluate one "
                            "network at a time with the test-time improvements")
