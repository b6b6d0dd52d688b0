"""Faster R-CNN's 4-step alternating training (Ren et al., TPAMI, section 3.2): the paper's "RPN step"
and "Fast R-CNN step" (He et al., Appendix A).

1. step1_rpn/: a detector from ImageNet weights; the RPN and the trunk trained on the RPN losses alone.
2. step2_fast_rcnn/: a fresh detector from ImageNet weights; the trunk and RoI head trained on the
   proposals that step 1's RPN gives for each training batch.
3. step3_rpn/: step 2's detector with step 1's RPN; the shared trunk (for C4 conv1..res4, for FPN the
   ResNet and the FPN) fixed, only the RPN's own layers fine-tuned.
4. step4_fast_rcnn/: the trunk still fixed, only the RoI head (C4: res5 and the predictor; FPN: the box
   head and predictor) fine-tuned on step 3's proposals.

Step 4's model is the result: step 2's trunk, step 3's RPN and step 4's RoI head, saved as output_dir's
model_final.pth and evaluated as a jointly trained model is. Each step is a run of the usual Trainer in
its own folder, so --resume continues the step that was running and skips the finished ones.

Proposals for the Fast R-CNN steps are computed for each batch by the frozen RPN in eval mode, rather
than stored on disk beforehand: they are then the proposals of the image as the batch has it (flipped,
resized to the drawn scale), with no cache to keep in step with the data. They keep the training counts
(model.rpn.pre_nms_topk_train / post_nms_topk_train): Faster R-CNN trains its detector on 2000
proposals an image and tests on 300.
"""

from __future__ import annotations

import logging
import os
import shutil
from functools import partial

import torch
from omegaconf import OmegaConf
from torch import nn

from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import FINAL_NAME, load_checkpoint
from resnet_engine.config import config_to_text
from resnet_engine.distributed import check_batch_divides
from resnet_engine.resume import changed_keys, check_model_fits, elastic_restart_count
from resnet_engine.run_dir import claim_run_directory, release_run_directory

from .config import alternating_schedule
from .modeling.faster_rcnn import FasterRCNN

logger = logging.getLogger(__name__)

STEP_FOLDERS = ("step1_rpn", "step2_fast_rcnn", "step3_rpn", "step4_fast_rcnn")
# The three parts of a detector, as FasterRCNN names them: the shared trunk and the layers unique to each network.
SHARED, RPN, ROI_HEADS = "backbone", "rpn", "roi_heads"


class StepModel(nn.Module):
    """A detector as one step trains it: the parts not in ``trained`` get no gradient and stay in eval
    mode (no BatchNorm statistics change) until :meth:`release`; its state dict is the detector's own,
    so that every step's checkpoints are detector files."""

    def __init__(self, detector: FasterRCNN, trained: tuple[str, ...]):
        super().__init__()
        self.detector = detector
        self.frozen = [part for part in (SHARED, RPN, ROI_HEADS) if part not in trained]
        frozen_parameters = [p for part in self.frozen for p in getattr(detector, part).parameters()]
        # Layers the config itself freezes (model.backbone.freeze_at) stay frozen after the step.
        self.trainable_before = [(p, p.requires_grad) for p in frozen_parameters]
        for parameter in frozen_parameters:
            parameter.requires_grad_(False)

    def release(self) -> FasterRCNN:
        """The detector, its parameters trainable again as they were before this step."""
        for parameter, trainable in self.trainable_before:
            parameter.requires_grad_(trainable)
        return self.detector

    def train(self, mode: bool = True) -> StepModel:
        super().train(mode)
        for part in self.frozen:
            getattr(self.detector, part).eval()
        return self

    def state_dict(self, *args, **kwargs):
        return self.detector.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.detector.load_state_dict(state_dict, strict=strict, assign=assign)


class RPNStep(StepModel):
    """Steps 1 and 3: the RPN losses alone."""

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        detector = self.detector
        images, image_sizes = detector.preprocess([sample["image"] for sample in batch])
        features = detector.backbone(images)
        targets = [detector.training_target(sample) for sample in batch]
        _, losses = detector.rpn(images.shape[-2:], features, image_sizes, targets)
        return losses


class FastRCNNStep(StepModel):
    """Steps 2 and 4: the RoI head's losses on the proposals of ``proposer``, a frozen detector whose RPN
    proposes (step 1's model, or the trained detector itself in step 4). ``proposer`` is not a submodule:
    neither trained nor saved with this step."""

    def __init__(self, detector: FasterRCNN, trained: tuple[str, ...], proposer: FasterRCNN):
        super().__init__(detector, trained)
        self.propose = partial(training_proposals, proposer.eval() if proposer is not detector else proposer)
        self.proposer_is_detector = proposer is detector

    def forward(self, batch: list[dict]) -> dict[str, torch.Tensor]:
        detector = self.detector
        images, image_sizes = detector.preprocess([sample["image"] for sample in batch])
        features = detector.backbone(images)
        # In step 4 the trunk is frozen and shared: its features are the proposer's too.
        proposals = self.propose(images, image_sizes, features if self.proposer_is_detector else None)
        targets = [detector.training_target(sample) for sample in batch]
        _, losses = detector.roi_heads(features, proposals, image_sizes, targets)
        return losses


@torch.no_grad()
def training_proposals(proposer: FasterRCNN, images: torch.Tensor, image_sizes: list[tuple[int, int]],
                       features: dict[str, torch.Tensor] | None = None) -> list[torch.Tensor]:
    """The proposals of ``proposer``'s RPN for the padded batch ``images``, with the training
    pre/post-NMS counts; ``features``: the proposer's own features of ``images`` when already computed."""
    if features is None:
        features = proposer.backbone(images)
    proposals, _ = proposer.rpn(images.shape[-2:], features, image_sizes, training_counts=True)
    return proposals


# -- the schedule --------------------------------------------------------------------------------
def step_batch_key(solver, kind: str) -> str:
    """The key that sets the batch of the "rpn" or "fast_rcnn" steps."""
    key = f"{kind}_ims_per_batch"
    return f"solver.alternating.{key}" if solver.alternating[key] else "solver.ims_per_batch"


def step_solver(solver, kind: str):
    """``solver`` with the batch and schedule of the "rpn" or "fast_rcnn" steps."""
    max_iter, steps = alternating_schedule(solver)
    ims_per_batch = solver.alternating[f"{kind}_ims_per_batch"] or solver.ims_per_batch
    return OmegaConf.merge(solver, {"ims_per_batch": ims_per_batch, "max_iter": max_iter, "steps": steps})


def check_step_batches(solver) -> None:
    """Each step's batch splits evenly over the processes (before any work)."""
    for kind in ("rpn", "fast_rcnn"):
        check_batch_divides(step_solver(solver, kind).ims_per_batch, step_batch_key(solver, kind))


# -- the four steps ------------------------------------------------------------------------------
def train_alternating(run, resume: bool, overwrite: bool) -> dict:
    """The four steps in output_dir's step folders; step 4's model becomes output_dir/model_final.pth.
    Returns the final metrics."""
    cfg = run.cfg
    folders = [os.path.join(cfg.output_dir, name) for name in STEP_FOLDERS]
    # Workers that torchrun restarted continue the run as --resume does (setup_run, Trainer).
    resume = resume or elastic_restart_count() > 0
    try:
        if not resume:
            dist_utils.on_main_process(lambda: refuse_earlier_steps(folders, overwrite))
        logger.info("alternating training: %s", ", ".join(folders))
        rpn_solver, fast_rcnn_solver = step_solver(cfg.solver, "rpn"), step_solver(cfg.solver, "fast_rcnn")
        first_rpn = RPNStep(run.new_detector(), (SHARED, RPN))
        run_step(run, first_rpn, rpn_solver, folders[0], resume)
        first_fast_rcnn = FastRCNNStep(run.new_detector(), (SHARED, ROI_HEADS), proposer=first_rpn.detector)
        run_step(run, first_fast_rcnn, fast_rcnn_solver, folders[1], resume)
        detector = first_fast_rcnn.detector
        detector.rpn.load_state_dict(first_rpn.detector.rpn.state_dict())  # step 3 fine-tunes step 1's RPN layers
        del first_rpn, first_fast_rcnn  # step 1's detector: its memory, before the next steps
        run_step(run, RPNStep(detector, (RPN,)), rpn_solver, folders[2], resume)
        metrics = run_step(run, FastRCNNStep(detector, (ROI_HEADS,), proposer=detector), fast_rcnn_solver,
                           folders[3], resume, final=True)
        if dist_utils.is_main_process():
            publish_final(folders[3], cfg.output_dir)
        return metrics
    finally:
        if dist_utils.is_main_process():
            release_run_directory(cfg.output_dir)


def run_step(run, step: StepModel, solver, folder: str, resume: bool, final: bool = False):
    """Train ``step`` in ``folder`` (continuing it with ``resume``), or, on resume, load the step's
    model_final.pth when the step had finished; then its detector's parameters are released. The final
    step always runs (a resumed finished run evaluates again, as a joint one does) and returns the
    metrics of its evaluation; the others return {}."""
    if resume and not final:
        finished = dist_utils.on_main_process(lambda: finished_state(folder))
        if finished is not None:
            # As a resumed Trainer checks its checkpoint: one line naming what changed in the model's
            # config, not PyTorch's list of size mismatches.
            state, saved_config = finished
            changes = changed_keys(saved_config, config_to_text(run.cfg), "model")
            check_model_fits(step, state, os.path.join(folder, FINAL_NAME), changes)
            step.load_state_dict(state)
            step.release()
            logger.info("%s is finished: its model_final.pth is loaded", folder)
            return {}
    logger.info("%s: training %s, %d images a batch, %d iterations", folder, type(step).__name__,
                solver.ims_per_batch, solver.max_iter)
    evaluate = (lambda model: run.evaluate(model.detector)) if final else None
    trainer = run.trainer(step, solver, folder, evaluate=evaluate)
    if resume:
        trainer.resume()
    metrics = trainer.train()
    step.release()
    return metrics


def finished_state(folder: str) -> tuple[dict, str] | None:
    """(model state, saved config text) of a finished step's model_final.pth; None without one."""
    path = os.path.join(folder, FINAL_NAME)
    if not os.path.isfile(path):
        return None
    checkpoint = load_checkpoint(path)
    return checkpoint["model"], checkpoint.get("config", "")


def refuse_earlier_steps(folders: list[str], overwrite: bool) -> None:
    """A fresh run stops before any work when a step folder holds an earlier run's checkpoints, or
    deletes them with ``overwrite``, as setup_run does for output_dir."""
    for folder in folders:
        claim_run_directory(folder).refuse_earlier_run(overwrite)
        release_run_directory(folder)


def publish_final(step_folder: str, output_dir: str) -> None:
    """Step 4's model_final.pth and metrics.json, copied to output_dir: the run's result, where
    evaluation, export and inference look for it."""
    for name in (FINAL_NAME, "metrics.json"):
        source = os.path.join(step_folder, name)
        if os.path.isfile(source):
            target = os.path.join(output_dir, name)
            # Temporary names that the run folder's clean-up knows (resnet_engine/run_dir.py).
            temporary = f"{target}.tmp.{os.getpid()}" if name.endswith(".pth") else f"{target}.tmp"
            shutil.copyfile(source, temporary)
            os.replace(temporary, target)
