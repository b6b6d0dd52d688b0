"""The R-CNN stage on the per-class RPN's proposals: crop and warp, RoI labels and sampling, the per-class box
selection, the proposals themselves, and train RPN -> train R-CNN -> eval_loc through the command lines."""

import json
import math
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from classification.config import load_classification_config
from detection.modeling.box_coder import BoxCoder
from localization.config import LocalizerRCNNConfig, load_localization_config
from localization.data.loc_dataset import BoxedRecord, ViewGeometry
from localization.data.rcnn_rois import (
    BACKGROUND,
    FOREGROUND,
    IGNORED,
    RoITrainDataset,
    label_proposals,
    roi_training_sample,
    sample_rois,
    warp_regions,
)
from localization.rcnn import best_box_per_class
from localization.rcnn_proposals import class_proposals
from resnet_engine.errors import UserError
from resnet_engine.flat_records import FlatRecords
from tests.conftest import ROOT
from tests.localization.test_rpn_localizer import (  # noqa: F401
    FIXED_RANKING,
    TINY_LOCALIZER,
    assert_submission_ranks,
    run_tool,
    tiny_model,
    tiny_root,
    write_fixed_ranking_classifier,
)

TINY_RCNN = [
    "model.backbone.base_width=8", "rcnn.warp_size=32", "rcnn.context_pad=2", "rcnn.proposals_per_class=5",
    "rcnn.rois_per_image=2", "input.crop=48", "input.train_short_side=[48,56]", "test.resize=52",
    "test.dense_scales=[48,64]", "solver.ims_per_batch=4", "solver.max_iter=3", "solver.steps=[2]",
    "solver.warmup_iters=1", "solver.checkpoint_period=0", "solver.log_period=1", "data.num_workers=0",
    "data.synthetic=''", "device=cpu", "seed=1",
]


# --------------------------------------------------------------------------------------------- crop and warp


def crafted_image():
    return torch.arange(3 * 20 * 30, dtype=torch.float32).view(1, 3, 20, 30) % 97


def test_a_box_the_size_of_the_output_is_cut_out_exactly():
    image = crafted_image()
    warped = warp_regions(image, [torch.tensor([[3.0, 5.0, 7.0, 9.0]])], warp_size=4)
    torch.testing.assert_close(warped[0], image[0, :, 5:9, 3:7])


def test_a_box_twice_the_output_averages_two_by_two_pixels_and_context_grows_the_box():
    image = crafted_image()
    boxes = torch.tensor([[2.0, 4.0, 10.0, 12.0], [4.0, 4.0, 8.0, 8.0]])
    warped = warp_regions(image, [boxes[:1]], warp_size=4)
    torch.testing.assert_close(warped[0], F.avg_pool2d(image[:, :, 4:12, 2:10], 2)[0])
    # A pad of 2 on an 8-px warp leaves the box 4 px inside: [4, 8) grows to [2, 10), cut out at 1:1.
    padded = warp_regions(image, [boxes[1:]], warp_size=8, context_pad=2)
    torch.testing.assert_close(padded[0], image[0, :, 2:10, 2:10])
    # Several images and boxes go in one call, in order.
    both = warp_regions(torch.cat([image, image + 1]), [boxes[:1], boxes[:1]], warp_size=4)
    torch.testing.assert_close(both[1], warped[0] + 1)


# --------------------------------------------------------------------------------------------- training RoIs


def test_proposals_are_labelled_by_their_best_overlap():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0],   # IoU 1: foreground
                              [52.0, 50.0, 62.0, 60.0],  # IoU 8/12 with the second box: foreground
                              [0.0, 0.0, 10.0, 30.0],    # IoU 1/3: background
                              [30.0, 30.0, 40.0, 40.0],  # IoU 0: below bg_iou_low, ignored
                              [5.0, 0.0, 15.0, 10.0]])   # IoU 1/3: background
    labels, matched = label_proposals(proposals, gt, fg_iou_thresh=0.5, bg_iou_low=0.1)
    assert labels.tolist() == [FOREGROUND, FOREGROUND, BACKGROUND, IGNORED, BACKGROUND]
    assert matched[:2].tolist() == [0, 1]
    generator = torch.Generator().manual_seed(0)
    # All foreground wanted, only 2 exist: the other 2 slots are made up from the background.
    chosen = sample_rois(labels, 4, fg_fraction=1.0, generator=generator)
    assert sorted(chosen[:2].tolist()) == [0, 1] and sorted(chosen[2:].tolist()) == [2, 4]
    # One RoI per image is foreground with probability fg_fraction (RoI-centric batches keep the fraction).
    draws = [int(labels[sample_rois(labels, 1, 0.25, generator)[0]] == FOREGROUND) for _ in range(400)]
    assert 0.18 < sum(draws) / 400 < 0.32


def test_training_sample_targets_the_gt_class_and_mirrors_with_the_image():
    pixels = crafted_image()[0]
    gt = torch.tensor([[4.0, 2.0, 12.0, 10.0]])
    proposals = torch.tensor([[6.0, 2.0, 14.0, 10.0], [20.0, 10.0, 28.0, 18.0]])  # IoU 0.6 and 0
    rules = LocalizerRCNNConfig(rois_per_image=3, fg_fraction=1.0, add_gt_boxes=True)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    sample = roi_training_sample(pixels, proposals, gt, 4, rules, coder, 8, 0, False, torch.Generator())
    assert sample["crops"].shape == (3, 3, 8, 8)
    assert sorted(sample["classes"].tolist()) == [0, 5, 5]  # background 0, class 4 -> 5
    targets = {tuple(t.tolist()) for t, c in zip(sample["box_targets"], sample["classes"]) if c > 0}
    assert targets == {(0.0, 0.0, 0.0, 0.0), (-2.5, 0.0, 0.0, 0.0)}  # the GT box itself; 2 px right of it
    flipped = roi_training_sample(pixels, proposals, gt, 4, rules, coder, 8, 0, True, torch.Generator())
    targets = {tuple(t.tolist()) for t, c in zip(flipped["box_targets"], flipped["classes"]) if c > 0}
    assert targets == {(0.0, 0.0, 0.0, 0.0), (2.5, 0.0, 0.0, 0.0)}  # mirrored: the proposal is to the left
    gt_index = [i for i, t in enumerate(flipped["box_targets"]) if flipped["classes"][i] > 0 and not t.any()][0]
    # The mirrored GT box [30 - 12, 30 - 4) x [2, 10) of the mirrored image is the original box, mirrored.
    torch.testing.assert_close(flipped["crops"][gt_index], pixels[:, 2:10, 4:12].flip(-1))


def test_roi_dataset_samples_the_proposals_of_each_image_and_skips_those_without(tmp_path):
    """The proposals, kept as flat arrays in the records' order, give each image the sample of its own
    tensor; an image the RPN gave nothing is skipped like an unreadable one."""
    generator = torch.Generator().manual_seed(0)
    records, proposals = [], {}
    for index in range(4):
        path = str(tmp_path / f"im{index}.png")
        cv2.imwrite(path, np.full((24, 32, 3), 40 * index, np.uint8))
        records.append(BoxedRecord(f"im{index}", path, index % 2, ((2.0, 3.0, 15.0, 17.0),)))
        if index != 2:
            proposals[f"im{index}"] = torch.rand(5, 2, generator=generator).repeat(1, 2) * 12 + torch.tensor(
                [0.0, 0.0, 8.0, 6.0])
    rules = LocalizerRCNNConfig(rois_per_image=3, fg_fraction=0.5, add_gt_boxes=True)
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    dataset = RoITrainDataset(records, proposals, rules, coder, 8, 0, 0.0)
    assert isinstance(dataset.proposals, FlatRecords) and dataset.images_with_proposals == 3
    for index in (0, 1, 3):
        sample = dataset[(index, 7)]
        pixels = torch.full((3, 24, 32), 40.0 * index)
        gt = torch.tensor([[2.0, 3.0, 16.0, 18.0]])  # inclusive -> continuous
        generator = torch.Generator().manual_seed(7)
        torch.rand((), generator=generator)  # the flip draw
        want = roi_training_sample(pixels, proposals[f"im{index}"], gt, index % 2, rules, coder, 8, 0, False,
                                   generator)
        assert sample["image_id"] == f"im{index}" and sample["skipped"] == []
        for key in ("crops", "classes", "box_targets"):
            torch.testing.assert_close(sample[key], want[key], rtol=0, atol=0)
    skipping = dataset[(2, 7)]
    assert skipping["image_id"] == "im3" and skipping["skipped"] == [records[2].path]
    with pytest.raises(UserError, match=r"gave no proposals for any of the 4 training images, e\.g\. .*im0\.png"):
        RoITrainDataset(records, {}, rules, coder, 8, 0, 0.0)


# --------------------------------------------------------------------------------------------- testing


def test_each_class_takes_its_best_rescored_proposal_with_its_own_deltas():
    proposals = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [20.0, 0.0, 40.0, 20.0], [0.0, 0.0, 4.0, 4.0]]] * 2)
    probabilities = torch.zeros(2, 3, 4)  # (classes asked, proposals, background + 3 classes)
    probabilities[0, :, 3] = torch.tensor([0.2, 0.1, 0.7])  # class 2 (column 3): proposal 2
    probabilities[0, :, 1] = torch.tensor([0.9, 0.0, 0.0])  # class 0 is not asked in row 0
    probabilities[1, :, 1] = torch.tensor([0.1, 0.8, 0.1])  # class 0 (column 1): proposal 1
    deltas = torch.zeros(2, 3, 3, 4)
    deltas[0, 2, 2] = torch.tensor([5.0, 0.0, 0.0, 0.0])  # /10: half a width to the right
    deltas[0, 2, 0] = torch.tensor([9.0, 9.0, 9.0, 9.0])  # another class's deltas must not be used
    deltas[1, 1, 0] = torch.tensor([0.0, 0.0, 5 * math.log(2.0), 0.0])  # /5: twice as wide
    boxes, scores = best_box_per_class(probabilities, deltas, proposals, torch.tensor([2, 0]),
                                       BoxCoder((10.0, 10.0, 5.0, 5.0)))
    torch.testing.assert_close(boxes, torch.tensor([[2.0, 0.0, 6.0, 4.0], [10.0, 0.0, 50.0, 20.0]]))
    torch.testing.assert_close(scores, torch.tensor([0.7, 0.8]))


def test_first_proposal_of_each_class_is_the_rpn_box():
    model = tiny_model(num_classes=3).eval()
    generator = torch.Generator().manual_seed(0)
    views = [torch.randint(0, 256, (3, 48, 64), generator=generator, dtype=torch.uint8),
             torch.randint(0, 256, (3, 64, 80), generator=generator, dtype=torch.uint8)]
    geometries = [ViewGeometry(48 / 60, 48 / 60), ViewGeometry(64 / 60, 64 / 60)]
    boxes, logits = class_proposals(model, views, geometries, (60, 75), top_n=7, flip=True)
    assert boxes.shape == (3, 7, 4) and logits.shape == (3, 7)
    assert (logits[:, :-1] >= logits[:, 1:]).all()  # best first
    rpn_boxes, rpn_scores = model.localize(views, geometries, (60, 75), flip=True)
    torch.testing.assert_close(boxes[:, 0] - torch.tensor([0.0, 0.0, 1.0, 1.0]), rpn_boxes)
    torch.testing.assert_close(logits[:, 0].sigmoid(), rpn_scores)


# --------------------------------------------------------------------------------------------- command lines


def test_shipped_rcnn_configs_load():
    shapes = load_localization_config(os.path.join(ROOT, "configs", "shapes_loc_rcnn.yaml"), [])
    assert shapes.task == "rcnn" and shapes.rcnn.rpn_weights
    ilsvrc_yaml = os.path.join(ROOT, "configs", "ilsvrc_loc_r101.yaml")
    ilsvrc = load_localization_config(ilsvrc_yaml, ["task=rcnn", "output_dir=output/ilsvrc_loc_rcnn_r101"])
    assert ilsvrc.rcnn.proposals_per_class == 200 and ilsvrc.rcnn.warp_size == 224
    assert ilsvrc.solver.ims_per_batch * ilsvrc.rcnn.rois_per_image == 256
    # The paper's classification augmentation, as the classifiers' configs: scales, crops, flips, PCA
    # lighting, and no colour jitter.
    classifier = load_classification_config(os.path.join(ROOT, "configs", "ilsvrc_cls_r101.yaml"), [])
    for localizer in (ilsvrc, load_localization_config(ilsvrc_yaml, [])):
        assert localizer.input.color_jitter == classifier.input.color_jitter == 0.0
        assert localizer.input.lighting_std == classifier.input.lighting_std == 0.1
    # The RPN's own run folder would have its model_final.pth replaced by the R-CNN's.
    with pytest.raises(Exception, match="give the R-CNN a folder of its own"):
        load_localization_config(ilsvrc_yaml, ["task=rcnn"])


def test_train_rpn_then_rcnn_then_eval_loc(tiny_root, tmp_path):  # noqa: F811
    rpn_out, rcnn_out = tmp_path / "rpn", tmp_path / "rcnn"
    rpn_cfg = os.path.join(ROOT, "configs", "shapes_loc.yaml")
    trained = run_tool("train_loc.py", "--cfg", rpn_cfg, *TINY_LOCALIZER, f"data.root={tiny_root}",
                       f"output_dir={rpn_out}")
    assert trained.returncode == 0, trained.stderr[-2000:]

    rcnn_cfg = os.path.join(ROOT, "configs", "shapes_loc_rcnn.yaml")
    overrides = [*TINY_RCNN, f"data.root={tiny_root}", f"output_dir={rcnn_out}",
                 f"rcnn.rpn_weights={rpn_out / 'model_final.pth'}"]
    trained = run_tool("train_loc.py", "--cfg", rcnn_cfg, *overrides)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "RPN+RCNN" in trained.stdout and (rcnn_out / "model_final.pth").is_file()

    evaluated = run_tool("eval_loc.py", "--cfg", rcnn_cfg, *overrides)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    rows = [line.split()[0] for line in evaluated.stdout.splitlines() if line.startswith("RPN")]
    assert rows == ["RPN", "RPN+RCNN"]
    metrics = json.loads((rcnn_out / "eval_model_final" / "metrics.json").read_text())
    assert metrics["method"] == "RPN+RCNN" and metrics["num_images"] == 12 and metrics["rpn"]["method"] == "RPN"
    assert os.path.isfile(metrics["submission"]) and 0 <= metrics["gt_known_loc_err"] <= 100

    # With a classifier, its top-5 classes (not the RPN's) head both submissions, each with its own box.
    from localization.evaluation.evaluator import evaluate_localizer_weights

    cfg = load_localization_config(rcnn_cfg, overrides)
    write_fixed_ranking_classifier(tiny_root, tmp_path / "cls.pth")
    ranked = evaluate_localizer_weights(cfg, str(rcnn_out / "model_final.pth"), str(tmp_path / "cls.pth"),
                                        str(tmp_path / "ranked"))
    assert "cls.pth" in ranked["class_ranking"] and "cls.pth" in ranked["rpn"]["class_ranking"]
    assert_submission_ranks(tmp_path / "ranked" / f"loc_rcnn_{cfg.test.mode}_submission.csv", FIXED_RANKING)

    # The RPN's checkpoint given as the R-CNN's: one clear error (the command line prints it as "error: ...").
    with pytest.raises(UserError, match="is a RPN checkpoint, but the config has task=rcnn"):
        evaluate_localizer_weights(cfg, str(rpn_out / "model_final.pth"), "", str(tmp_path))


def test_rcnn_without_rpn_weights_is_one_error_line(tmp_path):
    result = run_tool("train_loc.py", "--cfg", os.path.join(ROOT, "configs", "shapes_loc_rcnn.yaml"),
                      "rcnn.rpn_weights=''", f"output_dir={tmp_path}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: task=rcnn needs rcnn.rpn_weights")


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
