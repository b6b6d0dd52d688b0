"""The R-CNN stage's proposals (paper App. C, "RPN+RCNN"): per class, the per-class RPN's best boxes.

For an (image, class k) pair they are the ``rcnn.proposals_per_class`` anchors (200 on ILSVRC) with the highest
class-k RPN logit over every test view (``test.mode``: the 1-crop centre square or all dense scales, mirrored
too with ``test.dense_flip``), each decoded with class k's deltas and mapped back to the original image. No
NMS: the paper keeps the top 200 as they are. The first proposal of class k is the RPN's own
one-box-per-class answer, so one pass gives both the "RPN" and the "RPN+RCNN" predictions.

For training, the RPN runs once over the training images and keeps the GT class's proposals, cached in
output_dir.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence

import torch
from tqdm import tqdm

from resnet_engine import distributed as dist_utils
from resnet_engine.config import ConfigError
from resnet_engine.loaders import build_test_loader

from .data.loc_dataset import (
    BoxedRecord,
    LocalizationDataset,
    LocEvalTransform,
    ViewGeometry,
    inclusive_to_continuous,
    to_original_image,
    with_mirror_images,
)
from .rpn_localizer import RPNLocalizer

logger = logging.getLogger(__name__)


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
    for pixels, geometry in with_mirror_images(views, geometries, flip):
        scores, boxes = view_proposals(rpn, pixels.to(rpn.device), geometry, image_size, top_n)
        all_scores.append(scores)
        all_boxes.append(boxes)
    scores, boxes = torch.cat(all_scores), torch.cat(all_boxes)  # (sum n, K), (sum n, K, 4)
    best, index = scores.topk(min(top_n, scores.shape[0]), dim=0)
    classes = torch.arange(scores.shape[1], device=scores.device).expand(index.shape[0], -1)
    return boxes[index, classes].transpose(0, 1).contiguous(), best.t().contiguous()


def proposal_views(cfg, rpn_cfg) -> LocEvalTransform:
    """The RPN's test views as this config's test section says, with the RPN's own crop size."""
    crop = rpn_cfg.input.crop
    if cfg.test.mode == "1crop" and cfg.test.resize < crop:
        raise ConfigError(f"test.resize={cfg.test.resize} is smaller than the crop of the RPN of rcnn.rpn_weights "
                          f"({crop}, its input.crop): the 1-crop view must fit in the resized image; set "
                          f"test.resize={crop} or more")
    return LocEvalTransform(cfg.test.mode, cfg.test.resize, crop, list(cfg.test.dense_scales))


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
    return dist_utils.all_gather_dict(found)


def cached_training_proposals(cfg, rpn: RPNLocalizer, rpn_cfg, records) -> dict:
    """The GT class's proposals of every training image, kept in output_dir so that a resumed run (or a
    second one with the same RPN, data and proposal settings) does not run the RPN over the training set
    again. Every process reads its own copy; unless all of them can, all compute the proposals again (a
    collective pass: with an output_dir local to each node, the other nodes have no copy)."""
    path = os.path.join(cfg.output_dir, "rcnn_train_proposals.pth")
    csv_path = os.path.join(cfg.data.root, "LOC_train_solution.csv")
    key = {"rpn_weights": os.path.abspath(cfg.rcnn.rpn_weights),
           "rpn_mtime": os.path.getmtime(cfg.rcnn.rpn_weights), "top_n": cfg.rcnn.proposals_per_class,
           "mode": cfg.test.mode, "resize": cfg.test.resize, "scales": list(cfg.test.dense_scales),
           "flip": bool(cfg.test.dense_flip), "images": len(records), "data_root": os.path.abspath(cfg.data.root),
           "train_csv": [os.path.getsize(csv_path), os.path.getmtime(csv_path)] if os.path.isfile(csv_path) else None}
    cached = read_cached_proposals(path, key)
    if all(dist_utils.all_gather_objects(cached is not None)):
        logger.info("training proposals read from %s", path)
        return cached
    proposals = training_proposals(rpn, proposal_views(cfg, rpn_cfg), records, cfg)
    if dist_utils.is_main_process():
        os.makedirs(cfg.output_dir, exist_ok=True)
        torch.save({"key": key, "proposals": proposals}, path + ".tmp")
        os.replace(path + ".tmp", path)
    return proposals


def read_cached_proposals(path: str, key: dict) -> dict | None:
    """The proposals saved at ``path`` for ``key``; None when there are none, they were made for other
    settings, or the file is damaged (it is then computed and written again)."""
    if not os.path.isfile(path):
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file: pickle, zip and torch raise their own types
        warnings.warn(f"{path} cannot be read ({type(error).__name__}); the training proposals are computed again "
                      f"and the file rewritten", stacklevel=3)
        return None
    if not isinstance(cached, dict) or cached.get("key") != key or not isinstance(cached.get("proposals"), dict):
        return None
    return cached["proposals"]
