"""Several trained localizers run as one, as in the paper's ILSVRC 2015 localization entry (ResNet paper,
App. C, Tables 13 and 14: "RPN+RCNN, ensemble", 8.9% top-5 LOC error on val and 9.0% on test, with
ensembles "for both classification and localization").

The paper names the ensembles and nothing of how they are combined. The rules here follow the detection
ensemble (detection/modeling/ensemble.py), and are this toolkit's choice (unverified against the paper):

* per-class RPN (:class:`RPNEnsemble`): every network runs on the same view; for each anchor and class the
  networks' sigmoid probabilities are averaged, and so are their boxes (each decoded with the network's own
  deltas). The one-box-per-class rule and the R-CNN's top proposals then work on the averages exactly as on
  one network's outputs. This needs the same anchors at the same places: the networks must agree on
  model.anchor_sizes, model.aspect_ratios and the trunk's stride at model.feature;
* R-CNN stage (:class:`RCNNEnsemble`): the proposals come from the ensemble of the R-CNNs' own RPNs (the
  averaged RPN above); every R-CNN scores and regresses the same proposals; each proposal's class
  probability and its box are averaged over the networks before each class takes its best proposal;
* classifiers (localization/evaluation/class_ranking.py): the softmax probabilities of every classifier,
  each on its own test views of the image, are averaged before the top-5 classes are taken.

Every average is unweighted. Each network is built from the training config its checkpoint keeps (its
depth, width, normalization, anchors; localization/weights.py TRAINED_KEYS), so networks of different trunks
can be combined; each R-CNN warps the proposals at its own rcnn.warp_size and rcnn.context_pad. Loading one
weights file gives that network itself, unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from classification.data.ilsvrc import Synsets
from detection.modeling.box_coder import BoxCoder
from resnet_engine.errors import UserError

from .rcnn import RCNNLocalizer, best_of_proposals
from .rpn_localizer import OneBoxPerClass, RPNLocalizer
from .weights import load_localizer, load_proposal_rpn, load_rcnn, saved_config, trained_config

# Averaged probabilities are turned back into logits for the one-box rule; this keeps them finite.
PROBABILITY_EPS = 1e-12


class EnsembleError(UserError):
    """Localizers that cannot run as one ensemble."""


class RPNEnsemble(OneBoxPerClass, nn.Module):
    """Per-class RPNs of one anchor layout as one: :meth:`head` gives, per anchor and class, the logit of the
    averaged probability and the deltas of the averaged box, so that every test-time rule of one RPN
    (class_boxes, localize, the R-CNN's proposals) runs unchanged on the averages."""

    def __init__(self, networks: Sequence[RPNLocalizer]):
        super().__init__()
        if len(networks) < 2:
            raise ValueError("an ensemble needs at least two networks")
        self.networks = nn.ModuleList(networks)
        self.coder = BoxCoder()
        self.num_classes = networks[0].num_classes

    @property
    def device(self) -> torch.device:
        return self.networks[0].device

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """The raw pixels: each network normalizes them its own way in :meth:`head`."""
        return images

    def head(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """uint8 (B, 3, H, W) -> logits (B, N, K) of the averaged sigmoids, deltas (B, N, K, 4) of the
        averaged boxes (relative to the anchors, in this ensemble's coder), anchors (N, 4)."""
        probabilities, boxes, anchors = average_anchor_outputs(self.networks, images)
        batch, count, classes = probabilities.shape
        probabilities = probabilities.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS)
        logits = (probabilities.log() - (-probabilities).log1p()).float()
        references = anchors[None, :, None].expand(batch, count, classes, 4).reshape(-1, 4)
        deltas = self.coder.encode(references.double(), boxes.reshape(-1, 4)).float()
        return logits, deltas.view(batch, count, classes, 4), anchors


def average_anchor_outputs(networks: Sequence[RPNLocalizer], images: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, K) mean sigmoid probability and (B, N, K, 4) mean decoded box (float64) of every anchor and
    class over ``networks``, and the shared anchors (N, 4)."""
    probabilities = boxes = shared_anchors = None
    for network in networks:
        logits, deltas, anchors = network.head(network.normalize(images))
        if shared_anchors is None:
            shared_anchors = anchors
        elif anchors.shape != shared_anchors.shape or not torch.equal(anchors, shared_anchors):
            raise EnsembleError("the per-class RPNs of the ensemble put their anchors in different places on "
                                "the same image: combine networks of one model.feature stride")
        batch, count, classes = logits.shape
        decoded = network.coder.decode(deltas.double().reshape(batch * count, classes * 4),
                                       anchors.repeat(batch, 1).double()).view(batch, count, classes, 4)
        sigmoids = logits.double().sigmoid()
        probabilities = sigmoids if probabilities is None else probabilities + sigmoids
        boxes = decoded if boxes is None else boxes + decoded
    return probabilities / len(networks), boxes / len(networks), shared_anchors


class RCNNEnsemble(nn.Module):
    """R-CNN stages as one: :meth:`rescore` as :meth:`RCNNLocalizer.rescore`, on the networks' averaged
    class probabilities and boxes of the same proposals."""

    def __init__(self, networks: Sequence[RCNNLocalizer]):
        super().__init__()
        if len(networks) < 2:
            raise ValueError("an ensemble needs at least two networks")
        self.networks = nn.ModuleList(networks)

    @property
    def device(self) -> torch.device:
        return self.networks[0].device

    @torch.no_grad()
    def rescore(self, image: torch.Tensor, proposals: torch.Tensor, classes: Sequence[int],
                chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        outputs = [network.class_predictions(image, proposals, classes, chunk) for network in self.networks]
        scores = torch.stack([s for s, _ in outputs]).mean(dim=0)
        boxes = torch.stack([b for _, b in outputs]).mean(dim=0)
        return best_of_proposals(scores, boxes)


# -- loading ----------------------------------------------------------------------------------------------


def anchor_layout(cfg, network: RPNLocalizer) -> tuple:
    return (list(cfg.model.anchor_sizes), list(cfg.model.aspect_ratios), network.stride)


def load_rpn_ensemble(cfg, weights: Sequence[str], synsets: Synsets) -> RPNLocalizer | RPNEnsemble:
    """One per-class RPN per file (one file: that network itself), each built as it was trained; several must
    share their anchor layout, else one error line names the two that differ."""
    if len(weights) == 1:
        return load_localizer(cfg, weights[0], synsets)
    networks, layouts = [], []
    for path in weights:
        networks.append(load_localizer(cfg, path, synsets))
        layouts.append(anchor_layout(trained_config(cfg, path), networks[-1]))
    for path, layout in zip(weights[1:], layouts[1:]):
        if layout != layouts[0]:
            raise EnsembleError(
                f"{path} has anchors {describe_layout(layout)}, {weights[0]} has anchors {describe_layout(layouts[0])}: "
                f"the per-class RPNs of an ensemble must share model.anchor_sizes, model.aspect_ratios and the "
                f"stride of model.feature")
    return RPNEnsemble(networks)


def describe_layout(layout: tuple) -> str:
    sizes, ratios, stride = layout
    return f"of sizes [{', '.join(f'{s:g}' for s in sizes)}], ratios [{', '.join(f'{r:g}' for r in ratios)}] " \
           f"at stride {stride}"


def load_rcnn_ensemble(cfg, weights: Sequence[str], synsets: Synsets):
    """(the R-CNN stage, its proposal RPN, the RPN's config, the RPN's files). One file: the R-CNN of
    ``weights[0]`` and the RPN of cfg.rcnn.rpn_weights. Several: every R-CNN, and the ensemble of the distinct RPNs their
    own configs name in rcnn.rpn_weights (each R-CNN was trained on its RPN's proposals)."""
    if len(weights) == 1:
        rpn, rpn_cfg = load_proposal_rpn(cfg, synsets)
        return load_rcnn(cfg, weights[0], synsets), rpn, rpn_cfg, [cfg.rcnn.rpn_weights]
    rcnn = RCNNEnsemble([load_rcnn(cfg, path, synsets) for path in weights])
    rpn_paths = list(dict.fromkeys((saved_config(path) or cfg).rcnn.rpn_weights for path in weights))
    rpn, rpn_cfg = load_proposal_rpn(cfg, synsets, rpn_paths[0])
    if len(rpn_paths) > 1:
        rpn = load_rpn_ensemble(rpn_cfg, rpn_paths, synsets)
    return rcnn, rpn, rpn_cfg, rpn_paths
