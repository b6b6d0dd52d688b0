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
only.

With the paper's test-time improvements (detection/modeling/test_time.py), as its entry had them,
:class:`EnsembleTestTimeDetector` runs the same steps at every scale: each network's features of the
pyramid, the union of the networks' proposals at the RPN scale, each network's (multi-scale) head on
them, averaged; box refinement re-pools the averaged boxes through every head again, and box voting
and the NMS see the averaged candidates. Loading the networks from files: detection/ensemble.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from .faster_rcnn import FasterRCNN
from .test_time import ScaleLevel, TestTimeDetector, TestTimeOptions


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


class EnsembleTestTimeDetector(TestTimeDetector):
    """:class:`TestTimeDetector`'s passes (scales, flips, refinement, voting) over an ensemble: one
    member detector per network gives its levels, proposals and head outputs, and this class joins
    them where the single network's steps would use its own."""

    __test__ = False

    def __init__(self, ensemble: DetectorEnsemble, options: TestTimeOptions):
        super().__init__(ensemble.models[0], options)
        self.members = nn.ModuleList([TestTimeDetector(model, options) for model in ensemble.models])

    def level(self, image: torch.Tensor, scale: int) -> list[ScaleLevel]:
        """Each network's level of ``scale``."""
        return [member.level(image, scale) for member in self.members]

    def proposals(self, level: list[ScaleLevel]) -> torch.Tensor:
        """The union of the networks' proposals at one scale, in original pixels."""
        return torch.cat([member.proposals(own) for member, own in zip(self.members, level)])

    def head(self, pyramid: list[list[ScaleLevel]], rois: torch.Tensor, image_size: tuple[int, int]):
        """The networks' (R, K+1) scores and (R, K+1, 4) boxes of ``rois``, averaged."""
        outputs = [member.head([level[index] for level in pyramid], rois, image_size)
                   for index, member in enumerate(self.members)]
        scores = torch.stack([scores for scores, _ in outputs]).mean(dim=0)
        boxes = torch.stack([boxes for _, boxes in outputs]).mean(dim=0)
        return scores, boxes
