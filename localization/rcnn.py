"""The R-CNN stage of the paper's localization entry (App. C, "RPN+RCNN"), on top of a trained per-class RPN.

Proposals. For an (image, class k) pair they are the ``rcnn.proposals_per_class`` anchors (200 on ILSVRC)
with the highest class-k RPN logit over every test view (``test.mode``: the 1-crop centre square or all dense
scales, mirrored too with ``test.dense_flip``), each decoded with class k's deltas and mapped back to the
original image. No NMS: the paper keeps the top 200 as they are. The first proposal of class k is the RPN's
own one-box-per-class answer, so one pass gives both the "RPN" and the "RPN+RCNN" predictions.

Crop and warp. Each proposal (optionally grown by ``rcnn.context_pad`` warped pixels on each side) is cut from
the original image and resampled to warp_size x warp_size with torchvision's roi_align (aligned, adaptive
sampling): a box the size of the output gives the pixels themselves, a box k times larger averages k x k
pixels per output pixel, a smaller one is interpolated bilinearly. All RoIs of an image go in one call.

Network. A backbones ResNet, global average pooling and two sibling fc layers: cls with K+1 outputs (a
softmax over the K classes and background) and reg with K x 4 (class-specific deltas, BoxCoder with weights
(10, 10, 5, 5)). The paper leaves sigmoid vs softmax open; the softmax is chosen because training sees only
the GT class's proposals: background RoIs are what teaches the network to score a box low, and a (K+1)-way
softmax learns that from them directly, as the original R-CNN's fine-tuning did.

Training, RoI-centric (why: an ImageNet image holds one dominant object, so the RoIs of one image are nearly
the same crop). The RPN runs once over the training images and keeps the GT class's proposals. A mini-batch
is solver.ims_per_batch images with rcnn.rois_per_image RoIs each (1 on ILSVRC: 256 RoIs from 256 images).
A proposal with IoU >= rcnn.fg_iou_thresh (0.5) with a GT box is foreground (label: the GT class), one with IoU
in [bg_iou_low, fg_iou_thresh) is background (label 0); each sampled RoI is foreground with probability
fg_fraction. The GT boxes join the pool as foreground (rcnn.add_gt_boxes). A RoI is mirrored with probability
input.random_flip.
Losses: cross-entropy over K+1, and smooth L1 on the GT class's deltas of the foreground RoIs; both are
averaged over the batch's RoIs.

Testing. For each class that needs a box (the top-5 ranked classes and the GT classes), all of its proposals
are warped and scored; the box is the proposal with the highest softmax probability of that class, moved by
that class's deltas (no NMS, no voting). Its score is that probability.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import fields
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn
from torchvision.ops import box_iou, roi_align
from tqdm import tqdm

from backbones import ResNet
from backbones.config import BackboneConfig, build_from_config
from detection.modeling.box_coder import BoxCoder
from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.config import config_from_text
from resnet_engine.errors import UserError

from .config import LocalizationConfig, LocalizerRCNNConfig
from .data.classification import build_test_loader, list_val_images, to_chw_tensor
from .data.ilsvrc import Synsets
from .data.localization import BoxedRecord, LocalizationDataset, LocEvalTransform
from .rpn_localizer import RPNLocalizer, ViewGeometry, to_original_image

logger = logging.getLogger(__name__)

FOREGROUND, BACKGROUND, IGNORED = 1, 0, -1


# --------------------------------------------------------------------------------------------- boxes


def inclusive_to_continuous(boxes: torch.Tensor) -> torch.Tensor:
    """Inclusive pixel boxes (xmax is the last column) -> continuous boxes with x2 exclusive."""
    return boxes + torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)


def continuous_to_inclusive(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Continuous boxes (x2 exclusive) -> inclusive pixel boxes clipped to the (height, width) image."""
    height, width = image_size
    inclusive = boxes - torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=boxes.dtype, device=boxes.device)
    upper = torch.tensor([width - 1, height - 1, width - 1, height - 1], dtype=boxes.dtype, device=boxes.device)
    return torch.minimum(inclusive.clamp(min=0), upper)


def with_context(boxes: torch.Tensor, warp_size: int, context_pad: int) -> torch.Tensor:
    """Grow boxes about their centres so that, once warped, the box itself spans warp_size - 2 * pad pixels."""
    if context_pad <= 0:
        return boxes
    factor = warp_size / (warp_size - 2 * context_pad)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]) * (factor / 2)
    return torch.cat([centres - half, centres + half], dim=1)


def warp_regions(images: torch.Tensor, boxes: Sequence[torch.Tensor], warp_size: int,
                 context_pad: int = 0) -> torch.Tensor:
    """Crop every box from its image and resample it to warp_size x warp_size, in one roi_align call.

    ``images``: float (B, 3, H, W); ``boxes[b]``: (n_b, 4) continuous pixel boxes (x2 exclusive) of image b.
    Returns (sum n_b, 3, warp_size, warp_size), the RoIs in order. aligned=True puts pixel i's centre at
    i + 0.5, so an integer box as large as the output samples exactly the pixel centres; the adaptive
    sampling (ceil(box side / warp_size) points per output pixel and axis) averages when shrinking."""
    grown = [with_context(b.to(images.dtype), warp_size, context_pad) for b in boxes]
    return roi_align(images, grown, output_size=(warp_size, warp_size), spatial_scale=1.0, sampling_ratio=0,
                     aligned=True)


def flip_continuous(boxes: torch.Tensor, width: int) -> torch.Tensor:
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=1)


# --------------------------------------------------------------------------------------------- proposals


@torch.no_grad()
def view_proposals(rpn: RPNLocalizer, pixels: torch.Tensor, geometry: ViewGeometry, image_size: tuple[int, int],
                   top_n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One view's best ``top_n`` anchors for every class: logits (n, K) and continuous boxes (n, K, 4) in
    the original image, each decoded with its own class's deltas."""
    logits, deltas, anchors = rpn.head(rpn.normalize(pixels[None]))
    logits, deltas = logits[0].float(), deltas[0].float()
    count = min(top_n, logits.shape[0])
    scores, index = logits.topk(count, dim=0)  # (n, K): per class its best anchors
    classes = torch.arange(logits.shape[1], device=logits.device).expand(count, -1)
    boxes = rpn.coder.decode(deltas[index, classes].reshape(-1, 4), anchors[index].reshape(-1, 4))
    inclusive = to_original_image(boxes, geometry, pixels.shape[-1], image_size)
    return scores, inclusive_to_continuous(inclusive).view(count, -1, 4)


@torch.no_grad()
def class_proposals(rpn: RPNLocalizer, views: Sequence[torch.Tensor], geometries: Sequence[ViewGeometry],
                    image_size: tuple[int, int], top_n: int, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class its ``top_n`` highest-scoring RPN boxes over all views (and mirrors when ``flip``):
    continuous boxes (K, n, 4) in the original image and their logits (K, n), best first. Entry 0 of a
    class is the RPN's one-box-per-class answer."""
    all_scores, all_boxes = [], []
    for view, geometry in zip(views, geometries):
        variants = [(view, geometry)]
        if flip:
            variants.append((view.flip(-1), ViewGeometry(geometry.scale_x, geometry.scale_y, geometry.offset_x,
                                                         geometry.offset_y, flipped=True)))
        for pixels, where in variants:
            scores, boxes = view_proposals(rpn, pixels.to(rpn.device), where, image_size, top_n)
            all_scores.append(scores)
            all_boxes.append(boxes)
    scores, boxes = torch.cat(all_scores), torch.cat(all_boxes)  # (sum n, K), (sum n, K, 4)
    best, index = scores.topk(min(top_n, scores.shape[0]), dim=0)
    classes = torch.arange(scores.shape[1], device=scores.device).expand(index.shape[0], -1)
    return boxes[index, classes].transpose(0, 1).contiguous(), best.t().contiguous()


# --------------------------------------------------------------------------------------------- training targets


def label_proposals(proposals: torch.Tensor, gt_boxes: torch.Tensor, fg_iou_thresh: float,
                    bg_iou_low: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(label FOREGROUND / BACKGROUND / IGNORED, index of the best-overlapping GT box) per proposal."""
    overlaps = box_iou(proposals, gt_boxes)
    best, matched = overlaps.max(dim=1)
    labels = torch.full_like(matched, IGNORED)
    labels[best >= bg_iou_low] = BACKGROUND
    labels[best >= fg_iou_thresh] = FOREGROUND
    return labels, matched


def sample_rois(labels: torch.Tensor, count: int, fg_fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of ``count`` RoIs (fewer only when there are not enough), foreground first. Each slot is
    foreground with probability ``fg_fraction`` so that even one RoI per image keeps the batch's fraction;
    a side that runs out is made up from the other."""
    foreground = torch.nonzero(labels == FOREGROUND).flatten()
    background = torch.nonzero(labels == BACKGROUND).flatten()
    wanted_fg = int((torch.rand(count, generator=generator) < fg_fraction).sum())
    num_fg = min(wanted_fg, foreground.numel())
    num_bg = min(count - num_fg, background.numel())
    num_fg = min(count - num_bg, foreground.numel())
    fg = foreground[torch.randperm(foreground.numel(), generator=generator)[:num_fg]]
    bg = background[torch.randperm(background.numel(), generator=generator)[:num_bg]]
    return torch.cat([fg, bg])


def roi_training_sample(pixels: torch.Tensor, proposals: torch.Tensor, gt_boxes: torch.Tensor, label: int,
                        rules: LocalizerRCNNConfig, coder: BoxCoder, warp_size: int, context_pad: int, flip: bool,
                        generator: torch.Generator) -> dict:
    """One image's sampled RoIs: warped crops, class targets (0 = background, k + 1 = class k) and box
    targets (zeros for background). ``pixels`` is float (3, H, W); boxes are continuous, x2 exclusive;
    ``rules``: the ``rcnn`` section of the config (labelling and sampling)."""
    pool = torch.cat([proposals, gt_boxes]) if rules.add_gt_boxes else proposals
    if flip:
        width = pixels.shape[-1]
        pixels, pool, gt_boxes = pixels.flip(-1), flip_continuous(pool, width), flip_continuous(gt_boxes, width)
    labels, matched = label_proposals(pool, gt_boxes, rules.fg_iou_thresh, rules.bg_iou_low)
    chosen = sample_rois(labels, rules.rois_per_image, rules.fg_fraction, generator)
    rois = pool[chosen]
    foreground = labels[chosen] == FOREGROUND
    targets = torch.zeros(len(chosen), 4)
    if foreground.any():
        targets[foreground] = coder.encode(rois[foreground], gt_boxes[matched[chosen][foreground]])
    classes = torch.where(foreground, label + 1, 0)
    return {"crops": warp_regions(pixels[None], [rois], warp_size, context_pad), "classes": classes,
            "box_targets": targets}


class RoITrainDataset(LocalizationDataset):
    """The boxed training images with their GT class's RPN proposals; ``dataset[(index, seed)]`` gives
    {"crops": float (m, 3, S, S) in 0-255, "classes": (m,), "box_targets": (m, 4), "image_id", "skipped"}."""

    def __init__(self, records: list[BoxedRecord], proposals: dict[str, torch.Tensor], rules: LocalizerRCNNConfig,
                 coder: BoxCoder, warp_size: int, context_pad: int, flip_prob: float, on_bad_image: str = "skip"):
        super().__init__(records, transform=None, train=True, on_bad_image=on_bad_image)
        self.proposals = proposals
        self.rules = rules
        self.coder = coder
        self.warp_size = warp_size
        self.context_pad = context_pad
        self.flip_prob = flip_prob

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, item)
        skipped = []
        for attempt in range(len(self.records)):
            record = self.records[(index + attempt) % len(self.records)]
            image = self._read(record)
            if image is None or record.image_id not in self.proposals:
                skipped.append(record.path)
                continue
            generator = torch.Generator().manual_seed(int(seed))
            flip = bool(torch.rand((), generator=generator) < self.flip_prob)
            gt_boxes = inclusive_to_continuous(torch.tensor(record.boxes, dtype=torch.float32).view(-1, 4))
            sample = roi_training_sample(to_chw_tensor(image).float(), self.proposals[record.image_id], gt_boxes,
                                         record.label, self.rules, self.coder, self.warp_size, self.context_pad,
                                         flip, generator)
            return {**sample, "image_id": record.image_id, "skipped": skipped}
        raise UserError(f"none of the {len(self.records)} training images can be read, e.g. {self.records[0].path}")


# --------------------------------------------------------------------------------------------- the network


class RCNNLocalizer(nn.Module):
    """Warped RoIs -> (K+1)-way class logits and K x 4 class-specific deltas.

    Training input: samples of :class:`RoITrainDataset`; output {"loss_cls", "loss_box"}. ``rules``: the
    ``rcnn`` section of the config (the losses and the deltas' divisors bbox_reg_weights)."""

    def __init__(self, backbone: ResNet, num_classes: int, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 input_format: str, rules: LocalizerRCNNConfig):
        super().__init__()
        if "res5" not in backbone.out_features:
            raise ValueError("the R-CNN trunk must return res5")
        self.backbone = backbone
        self.num_classes = num_classes
        channels = backbone.out_channels["res5"]
        self.cls_score = nn.Linear(channels, num_classes + 1)
        self.bbox_pred = nn.Linear(channels, num_classes * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)  # deltas start near 0: the proposal itself
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)
        mean01 = torch.tensor(pixel_mean, dtype=torch.float64) / 255
        std01 = torch.tensor(pixel_std, dtype=torch.float64) / 255
        self.register_buffer("pixel_mean", mean01.float().view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std01.float().view(1, -1, 1, 1), persistent=False)
        self.input_format = input_format
        self.rules = rules
        self.coder = BoxCoder(weights=tuple(rules.bbox_reg_weights))

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def normalize(self, crops: torch.Tensor) -> torch.Tensor:
        """0-255 float (R, 3, S, S) RGB crops -> the network's input (the RPN's and classifier's arithmetic)."""
        crops = crops.to(self.device, non_blocking=True) / 255
        if self.input_format == "BGR":
            crops = crops.flip(1)
        return (crops - self.pixel_mean) / self.pixel_std

    def head(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalized crops -> class logits (R, K+1) and deltas (R, K, 4)."""
        pooled = torch.flatten(F.adaptive_avg_pool2d(self.backbone(crops)["res5"], 1), 1)
        return self.cls_score(pooled), self.bbox_pred(pooled).view(-1, self.num_classes, 4)

    def forward(self, batch: list[dict]):
        logits, deltas = self.head(self.normalize(torch.cat([s["crops"] for s in batch])))
        if not self.training:
            return logits, deltas
        classes = torch.cat([s["classes"] for s in batch]).to(self.device)
        targets = torch.cat([s["box_targets"] for s in batch]).to(self.device)
        loss_cls = F.cross_entropy(logits.float(), classes)
        foreground = torch.nonzero(classes > 0).flatten()
        if foreground.numel() == 0:
            loss_box = deltas.sum() * 0.0  # keeps the graph identical on every process
        else:
            chosen = deltas[foreground, classes[foreground] - 1].float()
            loss_box = F.smooth_l1_loss(chosen, targets[foreground], beta=self.rules.smooth_l1_beta,
                                        reduction="sum") / classes.numel()
        return {"loss_cls": loss_cls, "loss_box": self.rules.box_loss_weight * loss_box}

    @torch.no_grad()
    def rescore(self, image: torch.Tensor, proposals: torch.Tensor, classes: Sequence[int], warp_size: int,
                context_pad: int = 0, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Class c = classes[i] gets the best of its proposals ``proposals[i]`` (n, 4), re-scored and regressed:
        continuous boxes (C, 4) in the image and their class probabilities (C,). ``image``: uint8 (3, H, W)."""
        count, per_class = proposals.shape[:2]
        pixels = image.to(self.device)[None].float()
        flat = proposals.reshape(-1, 4).to(self.device)
        probabilities, deltas = [], []
        for start in range(0, flat.shape[0], chunk):
            crops = warp_regions(pixels, [flat[start:start + chunk]], warp_size, context_pad)
            logits, chunk_deltas = self.head(self.normalize(crops))
            probabilities.append(logits.float().softmax(dim=1))
            deltas.append(chunk_deltas.float())
        probabilities = torch.cat(probabilities).view(count, per_class, -1)
        deltas = torch.cat(deltas).view(count, per_class, self.num_classes, 4)
        return best_box_per_class(probabilities, deltas, flat.view(count, per_class, 4),
                                  torch.as_tensor(list(classes), device=self.device), self.coder)


def best_box_per_class(probabilities: torch.Tensor, deltas: torch.Tensor, proposals: torch.Tensor,
                       classes: torch.Tensor, coder: BoxCoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-class selection rule. Row i holds class classes[i]'s n proposals (C, n, 4), their softmax
    (C, n, K+1) and deltas (C, n, K, 4); the class's box is its proposal with the highest probability of that
    class (column classes[i] + 1), decoded with that class's deltas. -> boxes (C, 4), scores (C,)."""
    rows = torch.arange(classes.numel(), device=classes.device)
    class_scores = probabilities[rows, :, classes + 1]  # (C, n)
    scores, best = class_scores.max(dim=1)
    chosen_deltas = deltas[rows, best, classes]  # (C, 4)
    return coder.decode(chosen_deltas, proposals[rows, best]), scores


def build_rcnn(cfg, num_classes: int, load_backbone_weights: bool = True) -> RCNNLocalizer:
    """The R-CNN of a ``task: rcnn`` config; ``model.backbone.weights`` (the classifier) are loaded unless told
    not to."""
    backbone_cfg = cfg.model.backbone
    if not load_backbone_weights:
        backbone_cfg = SimpleNamespace(**{f.name: getattr(backbone_cfg, f.name) for f in fields(BackboneConfig)})
        backbone_cfg.weights = None
    backbone = build_from_config(backbone_cfg, out_features=["res5"])
    return RCNNLocalizer(backbone, num_classes, list(cfg.input.pixel_mean), list(cfg.input.pixel_std),
                         cfg.input.format, OmegaConf.to_object(cfg.rcnn))


# --------------------------------------------------------------------------------------------- the RPN stage


def load_proposal_rpn(cfg, synsets: Synsets) -> tuple[RPNLocalizer, object]:
    """The per-class RPN of ``rcnn.rpn_weights``, rebuilt from the config saved in its checkpoint."""
    from .train_loc import load_localizer

    path = cfg.rcnn.rpn_weights
    if not os.path.isfile(path):
        raise UserError(f"RPN weights not found: {path} (set rcnn.rpn_weights to a per-class RPN checkpoint; "
                        f"train one with python tools/train_loc.py --cfg configs/shapes_loc.yaml)")
    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    if meta.get("stage") == "rcnn" or not state.get("config"):
        raise UserError(f"{path} is not a per-class RPN checkpoint of tools/train_loc.py: set rcnn.rpn_weights "
                        f"to output/<rpn run>/model_final.pth")
    rpn_cfg = config_from_text(LocalizationConfig, state["config"])
    return load_localizer(rpn_cfg, path, synsets), rpn_cfg


def proposal_views(cfg, rpn_cfg) -> LocEvalTransform:
    """The RPN's test views as this config's test section says, with the RPN's own crop size."""
    return LocEvalTransform(cfg.test.mode, cfg.test.resize, rpn_cfg.input.crop, list(cfg.test.dense_scales))


class ImageAndViews(LocalizationDataset):
    """Test samples that also carry the original image ("image": uint8 (3, H, W)) for the warps."""

    def _test_sample(self, record) -> dict:
        image = self._read(record)
        sample = {"views": None, "geometries": None, "size": None, "image": None, "label": record.label,
                  "image_id": record.image_id}
        if image is not None:
            views = self.transform(image)
            sample.update(views=[to_chw_tensor(v) for v, _ in views], geometries=[g for _, g in views],
                          size=tuple(image.shape[:2]), image=to_chw_tensor(image))
        return sample


@torch.inference_mode()
def training_proposals(rpn: RPNLocalizer, views: LocEvalTransform, records: list[BoxedRecord], cfg,
                       progress: bool = True) -> dict[str, torch.Tensor]:
    """{image id: (n, 4) continuous proposals of the image's GT class}, over all training images (each process
    runs its share, then they are gathered)."""
    rpn.eval()
    dataset = LocalizationDataset(records, views, train=False, on_bad_image=cfg.data.on_bad_image)
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    flip = cfg.test.mode == "dense" and cfg.test.dense_flip
    found = {}
    for batch in tqdm(loader, desc="RPN proposals (train)", leave=False,
                      disable=not (progress and dist_utils.is_main_process())):
        for sample in batch:
            if sample["views"] is None:
                continue
            boxes, _ = class_proposals(rpn, sample["views"], sample["geometries"], sample["size"],
                                       cfg.rcnn.proposals_per_class, flip)
            found[sample["image_id"]] = boxes[sample["label"]].cpu()
    merged = {}
    for part in dist_utils.all_gather_objects(found):
        merged.update(part)
    return merged


def build_rcnn_test_set(cfg, views: LocEvalTransform, synsets: Synsets) -> ImageAndViews:
    records = list_val_images(cfg.data.root, synsets, cfg.test.max_images)
    return ImageAndViews(records, views, train=False, on_bad_image=cfg.data.on_bad_image)


def to_numpy_boxes(boxes: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    return continuous_to_inclusive(boxes.float().cpu(), image_size).numpy()


# --------------------------------------------------------------------------------------------- testing


@torch.inference_mode()
def localize_dataset_rcnn(rcnn: RCNNLocalizer, rpn: RPNLocalizer, dataset: ImageAndViews, cfg,
                          gt_classes: dict[str, list[int]], class_rankings: dict[str, list[int]] | None = None,
                          progress: bool = True) -> tuple[dict, dict]:
    """({image id: ImageGuesses} of the RPN alone, the same of RPN+RCNN), gathered on all processes. Both
    share the ranking: a classifier's when given, else the RPN's per-class max scores."""
    from .localize import ImageGuesses, top_classes, whole_pixels

    rcnn.eval()
    rpn.eval()
    loader = build_test_loader(dataset, cfg.test.ims_per_batch, cfg.data.num_workers)
    flip = cfg.test.mode == "dense" and cfg.test.dense_flip
    section = cfg.rcnn
    rpn_guesses, rcnn_guesses = {}, {}
    for batch in tqdm(loader, desc=f"RPN+RCNN {cfg.test.mode}", leave=False,
                      disable=not (progress and dist_utils.is_main_process())):
        for sample in batch:
            image_id, size = sample["image_id"], sample["size"]
            if sample["views"] is None or (class_rankings is not None and image_id not in class_rankings):
                continue  # unreadable: no prediction, so the metric counts it wrong
            proposals, logits = class_proposals(rpn, sample["views"], sample["geometries"], size,
                                                section.proposals_per_class, flip)
            ranking = (top_classes(logits[:, 0].float().cpu().numpy()) if class_rankings is None
                       else class_rankings[image_id])
            needed = list(dict.fromkeys(ranking + list(gt_classes.get(image_id, ()))))
            rpn_boxes = to_numpy_boxes(proposals[needed, 0], size)
            boxes, _ = rcnn.rescore(sample["image"], proposals[needed], needed, section.warp_size,
                                    section.context_pad, section.test_chunk)
            rcnn_boxes = to_numpy_boxes(boxes, size)
            rpn_guesses[image_id] = ImageGuesses(ranking, {c: whole_pixels(b) for c, b in zip(needed, rpn_boxes)})
            rcnn_guesses[image_id] = ImageGuesses(ranking, {c: whole_pixels(b) for c, b in zip(needed, rcnn_boxes)})
    return gather_guesses(rpn_guesses), gather_guesses(rcnn_guesses)


def gather_guesses(part: dict) -> dict:
    merged = {}
    for piece in dist_utils.all_gather_objects(part):
        merged.update(piece)
    return merged


def guesses_metrics(guesses: dict, gt, gt_classes: dict[str, list[int]], synsets: Synsets,
                    files: dict[str, str] | None = None) -> dict:
    """Errors in percent of one set of guesses; with ``files`` the submission and the GT-class boxes are
    written there (main process), as the RPN's model mode writes them."""
    from .localize import METRIC_KEYS, build_submission, write_kaggle_csv
    from .metrics import gt_known_loc_error, localization_errors

    predictions = build_submission(guesses, synsets)
    errors = localization_errors(gt, predictions)
    gt_boxes = {image_id: {synsets.wnids[c]: guesses[image_id].boxes[c] for c in gt_classes[image_id]}
                for image_id in sorted(guesses)}
    if files and dist_utils.is_main_process():
        write_kaggle_csv(predictions, files["submission"])
        write_kaggle_csv({image_id: list(by_class.items()) for image_id, by_class in gt_boxes.items()},
                         files["gt_class_boxes"])
    metrics = {key: round(value, 4) for key, value in errors.as_dict().items() if key in METRIC_KEYS}
    metrics["gt_known_loc_err"] = round(gt_known_loc_error(gt, gt_boxes), 4)
    return {**metrics, **(files or {})}


def score_rcnn(rcnn: RCNNLocalizer, rpn: RPNLocalizer, rpn_cfg, cfg, synsets: Synsets, classifier: str = "",
               out_dir: str | None = None, progress: bool = True) -> dict:
    """RPN+RCNN errors in percent (the localize.METRIC_KEYS, how they were made, the written files) and, under
    "rpn", the same errors of the RPN's own boxes on the same images and ranking."""
    from .localize import classifier_rankings, network_name, val_ground_truth

    dataset = build_rcnn_test_set(cfg, proposal_views(cfg, rpn_cfg), synsets)
    gt = val_ground_truth(cfg, synsets, [r.image_id for r in dataset.records])
    gt_classes = {image_id: [synsets.label(wnid) - 1 for wnid in dict.fromkeys(w for w, _ in objects)]
                  for image_id, objects in gt.items()}
    rankings, classifier_name = None, "RPN scores"
    class_source = "the RPN's own per-class max scores (no classifier given)"
    if classifier:
        rankings, classifier_name = classifier_rankings(classifier, cfg, synsets, rcnn.device, progress)
        class_source = f"classifier {classifier}"
    rpn_guesses, rcnn_guesses = localize_dataset_rcnn(rcnn, rpn, dataset, cfg, gt_classes, rankings, progress)
    files = None
    if out_dir:
        files = {"submission": os.path.join(out_dir, f"loc_rcnn_{cfg.test.mode}_submission.csv"),
                 "gt_class_boxes": os.path.join(out_dir, f"loc_rcnn_{cfg.test.mode}_gt_class.csv")}
    shared = dict(test_mode=cfg.test.mode, classifier=classifier_name, class_ranking=class_source,
                  num_images=len(gt))
    metrics = guesses_metrics(rcnn_guesses, gt, gt_classes, synsets, files)
    metrics.update(method="RPN+RCNN", network=network_name(cfg.model.backbone), **shared)
    metrics["rpn"] = {**guesses_metrics(rpn_guesses, gt, gt_classes, synsets), "method": "RPN",
                      "network": network_name(rpn_cfg.model.backbone), **shared}
    return metrics
