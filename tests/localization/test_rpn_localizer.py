"""The per-class RPN localizer: anchor labels, sampling, the one-box-per-class rule, mapping views back to the
image, which outputs learn, and the train -> eval_loc command lines end to end."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from classification.data.synthetic_ilsvrc import WNIDS, ensure_synthetic_loc
from detection.modeling.box_coder import BoxCoder
from detection.modeling.matching import Matcher, sample_balanced
from localization.config import check_trunk_start, load_localization_config
from localization.data.loc_dataset import (
    LocEvalTransform,
    LocTrainTransform,
    ViewGeometry,
    boxes_after_crop,
    to_original_image,
)
from localization.evaluation.ilsvrc_metric import iou_inclusive
from localization.evaluation.submission import ImageGuesses, build_submission, top_classes
from localization.rpn_localizer import (
    best_box_per_class,
    build_localizer,
    class_targets,
    label_anchors,
    merge_views,
)
from localization.training import train_localizer
from resnet_engine.config import ConfigError
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import subprocess_env

TINY_DATA = {"images_per_class": {"train": 3, "val": 2}, "sides": (56, 72), "seed": 5}
# A very small configs/shapes_loc.yaml: seconds on one thread.
TINY_LOCALIZER = [
    "model.backbone.base_width=8", "model.head_channels=16", "model.feature=res4", "model.anchor_sizes=[16,32,48]",
    "input.crop=48", "input.train_short_side=[48,56]", "test.resize=52", "test.dense_scales=[48,64]",
    "rpn.anchors_per_image=8", "solver.ims_per_batch=4", "solver.max_iter=3", "solver.steps=[2]", "solver.warmup_iters=1",
    "solver.checkpoint_period=0", "solver.log_period=1", "data.num_workers=0", "data.synthetic=''",
    "device=cpu", "seed=1",
]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_synthetic_loc(str(tmp_path_factory.mktemp("shapes_loc")), **TINY_DATA)


def tiny_config(root, output_dir, *extra):
    return load_localization_config(os.path.join(ROOT, "configs", "shapes_loc.yaml"),
                                    [*TINY_LOCALIZER, f"data.root={root}", f"output_dir={output_dir}", *extra])


# --------------------------------------------------------------------------------------------- training targets


def test_anchors_are_positive_only_for_the_image_class():
    anchors = torch.tensor([[0, 0, 10, 10],     # the GT box itself: IoU 1
                            [0, 0, 10, 9],      # IoU 0.9: positive
                            [20, 20, 30, 30],   # IoU 0: negative
                            [5, 0, 15, 10],     # IoU 1/3: between the thresholds, ignored
                            [40, 40, 60, 60],   # the best anchor of the small GT box (IoU 0.25): positive
                            [70, 70, 90, 90]],  # mostly inside a cut-away box: ignored, not background
                           dtype=torch.float32)
    gt = torch.tensor([[0, 0, 10, 10], [40, 40, 50, 50]], dtype=torch.float32)
    cut = torch.tensor([[68, 68, 95, 95]], dtype=torch.float32)
    matched, labels = label_anchors(anchors, gt, cut, Matcher(0.7, 0.3, allow_low_quality=True))
    assert labels.tolist() == [1, 1, 0, -1, 1, -1]
    assert matched[[0, 1, 4]].tolist() == [0, 0, 1]
    targets = class_targets(labels, gt_class=2, num_classes=4)
    expected = torch.zeros(6, 4)
    expected[[0, 1, 4], 2] = 1  # the image's class only; every other class's target is 0 at every anchor
    assert torch.equal(targets, expected)


def test_eight_anchors_are_sampled_at_most_half_positive():
    many_positives = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5)
    positive, negative = sample_balanced(many_positives, 8, 0.5, torch.Generator().manual_seed(0))
    assert len(positive) == len(negative) == 4
    assert (many_positives[positive] == 1).all() and (many_positives[negative] == 0).all()
    one_positive = torch.tensor([1] + [0] * 50)
    positive, negative = sample_balanced(one_positive, 8, 0.5, torch.Generator().manual_seed(0))
    assert positive.tolist() == [0] and len(negative) == 7


def tiny_model(num_classes=3, **rules):
    cfg = load_localization_config(os.path.join(ROOT, "configs", "shapes_loc.yaml"),
                                   TINY_LOCALIZER + [f"rpn.{k}={v}" for k, v in rules.items()])
    torch.manual_seed(0)
    return build_localizer(cfg, num_classes)


def test_model_samples_eight_anchors_per_image():
    model = tiny_model().train()
    sample = {"image": torch.zeros(3, 48, 48, dtype=torch.uint8), "label": 1,
              "boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "cut_boxes": torch.zeros(0, 4)}
    logits, deltas, anchors = model.head(model.normalize(sample["image"][None]))
    assert logits.shape == (1, 3 * 3 * 9, 3) and deltas.shape == (1, 3 * 3 * 9, 3, 4)
    _, _, count = model.image_losses(logits[0], deltas[0], anchors, sample)
    assert count == 8


def test_anchor_sampling_follows_the_samples_seed_not_the_process_random_state():
    """Processes seeded alike must not pick the same anchors for their different images: each training
    sample carries the seed of its own sampling stream (from the batch sampler), as the detector's."""
    model = tiny_model().train()
    sample = {"image": torch.zeros(3, 48, 48, dtype=torch.uint8), "label": 1,
              "boxes": torch.tensor([[10.0, 12.0, 30.0, 32.0]]), "cut_boxes": torch.zeros(0, 4)}
    _, _, anchors = model.head(model.normalize(sample["image"][None]))
    logits = torch.randn(anchors.shape[0], 3, generator=torch.Generator().manual_seed(1))
    deltas = torch.zeros(anchors.shape[0], 3, 4)

    def cls_loss(seed: int, process_seed: int) -> float:
        torch.manual_seed(process_seed)
        return float(model.image_losses(logits, deltas, anchors, {**sample, "seed": seed})[0])

    assert cls_loss(7, process_seed=0) == cls_loss(7, process_seed=1)
    assert len({cls_loss(seed, process_seed=0) for seed in (7, 8, 9)}) == 3


def test_gradient_reaches_only_the_gt_class_box_outputs():
    model = tiny_model(num_classes=3, cls_loss_classes="gt").train()
    batch = [{"image": torch.randint(0, 256, (3, 48, 48), dtype=torch.uint8), "label": 1,
              "boxes": torch.tensor([[4.0, 6.0, 40.0, 44.0]]), "cut_boxes": torch.zeros(0, 4)}]
    losses = model(batch)
    (losses["loss_box"] + losses["loss_cls"]).backward()
    box_grad = model.bbox_deltas.weight.grad.abs().sum(dim=(1, 2, 3)).view(9, 3, 4)  # (anchor, class, coord)
    cls_grad = model.cls_logits.weight.grad.abs().sum(dim=(1, 2, 3)).view(9, 3)
    assert box_grad[:, 1].sum() > 0 and cls_grad[:, 1].sum() > 0
    assert box_grad[:, [0, 2]].sum() == 0 and cls_grad[:, [0, 2]].sum() == 0
    # With every class's sigmoid trained, the other classes' cls outputs learn too, their box outputs still not.
    model = tiny_model(num_classes=3, cls_loss_classes="all").train()
    model(batch)["loss_cls"].backward()
    assert (model.cls_logits.weight.grad.abs().sum(dim=(1, 2, 3)).view(9, 3).sum(dim=0) > 0).all()


def test_training_crop_carries_the_boxes():
    image = np.zeros((100, 100, 3), np.uint8)
    gt = np.array([[10, 20, 29, 59]], np.float32)  # inclusive: columns 10..29, rows 20..59
    for flip, expected in ((0.0, [5, 10, 15, 30]), (1.0, [35, 10, 45, 30])):
        transform = LocTrainTransform([50, 50], 50, flip_prob=flip, color_jitter=0, lighting_std=0)
        pixels, boxes, cut = transform(image, gt, seed=0)
        # Halved, continuous with x2 exclusive ([10, 30) -> [5, 15)), mirrored in a 50 px crop when flipped.
        assert pixels.shape == (50, 50, 3) and len(cut) == 0
        np.testing.assert_allclose(boxes, [expected], atol=1e-5)
    kept, cut = boxes_after_crop(np.array([[0, 0, 20, 20], [40, 0, 60, 20]], np.float32), 0, 0, 50, 0.6)
    np.testing.assert_allclose(kept, [[0, 0, 20, 20]])
    np.testing.assert_allclose(cut, [[40, 0, 50, 20]])  # half visible < 0.6: a remnant to ignore


# --------------------------------------------------------------------------------------------- testing


def test_one_box_per_class_is_the_best_anchor_decoded_with_its_class_deltas():
    anchors = torch.tensor([[0, 0, 10, 10], [10, 10, 30, 30], [0, 0, 40, 20]], dtype=torch.float32)
    logits = torch.tensor([[0.1, 2.0], [3.0, -1.0], [0.5, 1.9]])  # class 0: anchor 1; class 1: anchor 0
    deltas = torch.zeros(3, 2, 4)
    deltas[1, 0] = torch.tensor([0.5, 0.0, 0.0, 0.0])          # class 0 moves anchor 1 right by half its width
    deltas[0, 1] = torch.tensor([0.0, 0.0, np.log(2.0), 0.0])  # class 1 doubles anchor 0's width
    deltas[1, 1] = torch.tensor([9.0, 9.0, 9.0, 9.0])          # other anchors' deltas must not be used
    boxes, scores = best_box_per_class(logits, deltas, anchors, BoxCoder())
    torch.testing.assert_close(boxes, torch.tensor([[20.0, 10.0, 40.0, 30.0], [-5.0, 0.0, 15.0, 10.0]]))
    torch.testing.assert_close(scores, torch.tensor([3.0, 2.0]))
    # Across views, each class keeps the box of the view where it scored highest.
    other = (torch.tensor([[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0]]), torch.tensor([2.5, 2.5]))
    merged, merged_scores = merge_views([(boxes, scores), other])
    torch.testing.assert_close(merged, torch.stack([boxes[0], other[0][1]]))
    torch.testing.assert_close(merged_scores, torch.tensor([3.0, 2.5]))


def test_view_boxes_map_back_to_the_original_image():
    # A 2x view, cropped at (6, 4), mirrored; the view is 40 px wide.
    geometry = ViewGeometry(2.0, 2.0, offset_x=6.0, offset_y=4.0, flipped=True)
    box = to_original_image(torch.tensor([[10.0, 0.0, 30.0, 16.0]]), geometry, 40, (100, 100))
    # Unflip: x in [10, 30); undo crop and scale: [8, 18) x [2, 10); inclusive: xmax 17, ymax 9.
    torch.testing.assert_close(box, torch.tensor([[8.0, 2.0, 17.0, 9.0]]))
    clipped = to_original_image(torch.tensor([[-5.0, -5.0, 500.0, 500.0]]), ViewGeometry(1.0, 1.0), 50, (30, 40))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 0.0, 39.0, 29.0]]))


def test_dense_testing_finds_the_box_in_original_image_coordinates():
    """A model that "sees" the bright square of each view exactly: every dense scale and its mirror image,
    mapped back, must give the square's box in the original image."""
    image = np.zeros((90, 150, 3), np.uint8)
    image[30:60, 100:130] = 255  # inclusive box (100, 30, 129, 59)
    model = tiny_model(num_classes=2).eval()

    def bright_square(views):
        mask = views[0, 0] > 127
        ys, xs = torch.nonzero(mask, as_tuple=True)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        return box.repeat(2, 1)[None], torch.tensor([[1.0, 0.5]])

    model.class_boxes = bright_square
    views = LocEvalTransform("dense", 0, 0, [45, 90, 180])(image)
    assert [v.shape[:2] for v, _ in views] == [(45, 75), (90, 150), (180, 300)]
    boxes, scores = model.localize([torch.from_numpy(v.transpose(2, 0, 1).copy()) for v, _ in views],
                                   [g for _, g in views], (90, 150), flip=True)
    for box in boxes:
        assert iou_inclusive(box.tolist(), (100, 30, 129, 59)) > 0.9
    one_crop = LocEvalTransform("1crop", 120, 96, [])(image)
    assert len(one_crop) == 1 and one_crop[0][1].offset_x == (200 - 96) // 2


def test_submission_pairs_each_ranked_class_with_its_own_box():
    scores = np.array([0.1, 0.9, 0.3, 0.8, 0.2, 0.7])
    ranking = top_classes(scores)
    assert ranking == [1, 3, 5, 2, 4]
    guesses = {"img": ImageGuesses(ranking, {c: (c, c, c + 10, c + 10) for c in ranking + [0]})}

    class FakeSynsets:
        wnids = WNIDS

    predictions = build_submission(guesses, FakeSynsets())
    assert predictions["img"] == [(WNIDS[c], (c, c, c + 10, c + 10)) for c in ranking]


FIXED_RANKING = (1, 3, 5, 4, 2)  # the top-5 of write_fixed_ranking_classifier's network, for every image


def write_fixed_ranking_classifier(tiny_root, path) -> None:
    """A tools/train_cls.py checkpoint whose network ranks the classes FIXED_RANKING on any image."""
    from classification.classifier import build_classifier
    from classification.config import load_classification_config
    from resnet_engine.checkpoint import atomic_save
    from resnet_engine.config import config_to_text

    cls_cfg = load_classification_config(os.path.join(ROOT, "configs", "cls_shapes.yaml"),
                                         ["model.backbone.base_width=8", f"data.root={tiny_root}"])
    classifier = build_classifier(cls_cfg, len(WNIDS))
    with torch.no_grad():  # classes 1, 3, 5, 4, 2, then 0
        classifier.backbone.fc.weight.zero_()
        classifier.backbone.fc.bias.copy_(torch.tensor([0.0, 5.0, 1.0, 4.0, 2.0, 3.0]))
    atomic_save({"model": classifier.state_dict(), "config": config_to_text(cls_cfg),
                 "meta": {"task": "classification", "wnids": list(WNIDS)}}, str(path))


def assert_submission_ranks(csv_path, ranking, rows_expected: int = 12) -> None:
    rows = csv_path.read_text().splitlines()[1:]
    assert len(rows) == rows_expected
    for row in rows:
        assert row.split(",")[1].split()[::5] == [WNIDS[c] for c in ranking]


def test_classifier_top5_classes_get_the_rpn_boxes(tiny_root, tmp_path):
    from localization.evaluation.evaluator import evaluate_localizer_weights
    from resnet_engine.checkpoint import atomic_save

    cfg = tiny_config(tiny_root, tmp_path, "classifier.mode=1crop")
    localizer = build_localizer(cfg, len(WNIDS))
    atomic_save({"model": localizer.state_dict(), "meta": {"task": "localization", "wnids": list(WNIDS)}},
                str(tmp_path / "loc.pth"))
    write_fixed_ranking_classifier(tiny_root, tmp_path / "cls.pth")

    metrics = evaluate_localizer_weights(cfg, str(tmp_path / "loc.pth"), str(tmp_path / "cls.pth"), str(tmp_path))
    assert metrics["classifier"] == "ResNet-18 (width 8)" and "cls.pth" in metrics["class_ranking"]
    assert_submission_ranks(tmp_path / "loc_dense_submission.csv", FIXED_RANKING)
    # A localizer checkpoint is no classifier: one clear error.
    with pytest.raises(Exception, match="not a classifier checkpoint of tools/train_cls.py"):
        evaluate_localizer_weights(cfg, str(tmp_path / "loc.pth"), str(tmp_path / "loc.pth"), str(tmp_path))


# --------------------------------------------------------------------------------------------- command lines


def run_tool(tool, *args):
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", tool), *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=240)


def test_train_then_eval_loc_model_mode_and_rescore(tiny_root, tmp_path):
    out = tmp_path / "run"
    overrides = [*TINY_LOCALIZER, f"data.root={tiny_root}", f"output_dir={out}"]
    cfg = os.path.join(ROOT, "configs", "shapes_loc.yaml")
    trained = run_tool("train_loc.py", "--cfg", cfg, *overrides)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "LOC error on GT class" in trained.stdout and (out / "model_final.pth").is_file()

    final = (out / "metrics.json").read_text()
    evaluated = run_tool("eval_loc.py", "--cfg", cfg, "--test-mode", "1crop", *overrides)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    assert "1-crop" in evaluated.stdout and "RPN's own per-class max scores" in evaluated.stdout
    # Into a folder of its own: the run's metrics.json stays its training's final evaluation.
    metrics = json.loads((out / "eval_model_final" / "metrics.json").read_text())
    assert metrics["num_images"] == 12 and metrics["test_mode"] == "1crop"
    assert (out / "metrics.json").read_text() == final

    # The written files, scored by the scoring mode, give the same numbers.
    gt = os.path.join(tiny_root, "LOC_val_solution.csv")
    rescored = run_tool("eval_loc.py", "--gt", gt, "--pred", metrics["submission"], "--out", str(tmp_path / "a"))
    assert rescored.returncode == 0, rescored.stderr
    official = json.loads((tmp_path / "a" / "metrics.json").read_text())
    for key in ("top1_loc_err", "top5_loc_err", "top1_cls_err", "top5_cls_err"):
        assert metrics[key] == pytest.approx(official[key], abs=1e-3), key
    oracle = run_tool("eval_loc.py", "--gt", gt, "--pred", metrics["gt_class_boxes"], "--out", str(tmp_path / "b"))
    assert oracle.returncode == 0, oracle.stderr
    gt_known = json.loads((tmp_path / "b" / "metrics.json").read_text())["top1_loc_err"]
    assert metrics["gt_known_loc_err"] == pytest.approx(gt_known, abs=1e-3)


def test_bad_input_gives_one_error_line(tiny_root, tmp_path):
    typo = run_tool("train_loc.py", "model.head_chanels=8")
    assert typo.returncode == 2
    assert typo.stderr.strip().splitlines()[-1].startswith("error: unknown key 'model.head_chanels'")
    assert "did you mean model.head_channels" in typo.stderr
    missing = run_tool("eval_loc.py", *TINY_LOCALIZER, f"data.root={tiny_root}", f"output_dir={tmp_path}")
    assert missing.returncode == 2
    assert missing.stderr.strip().splitlines() == [
        f"error: no localizer checkpoint in {tmp_path}: train one with python tools/train_loc.py (same --cfg), "
        "or give --weights"]



def test_a_missing_val_list_stops_training_before_it_starts(tiny_root, tmp_path):
    """Found at the first evaluation, it would come after the whole training."""
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    os.remove(root / "LOC_val_solution.csv")
    with pytest.raises(UserError, match=r"LOC_val_solution.csv"):
        train_localizer(tiny_config(str(root), str(tmp_path / "run"), "device=cpu"))
    assert not os.path.exists(tmp_path / "run" / "model_final.pth")
    assert not [name for name in os.listdir(tmp_path / "run") if name.startswith("model_")]


@pytest.mark.parametrize("blacklist, message", [
    ("missing.txt", r"^blacklist not found: .*missing.txt \(set test.blacklist to the devkit's "),
    ("typo.txt", r"typo.txt line 2: 'ILSVRC2012_val_0000003' is neither an image number nor a ground-truth image name$"),
])
def test_a_bad_blacklist_stops_training_before_it_starts(tiny_root, tmp_path, blacklist, message, no_training):
    """Read at the first evaluation, it ended the run after test.eval_period iterations, or all of them."""
    (tmp_path / "typo.txt").write_text("2\nILSVRC2012_val_0000003\n")
    cfg = tiny_config(tiny_root, str(tmp_path / "run"), f"test.blacklist={tmp_path / blacklist}")
    with pytest.raises(UserError, match=message):
        train_localizer(cfg)


def test_val_images_resized_on_disk_stop_training_before_it_starts(tiny_root, tmp_path, no_training):
    """Boxes of the original images scored on half-size copies: found by the evaluation's check, now at the start."""
    root = tmp_path / "root"
    shutil.copytree(tiny_root, root)
    for path in (root / "ILSVRC" / "Data" / "CLS-LOC" / "val").rglob("*.JPEG"):
        with Image.open(path) as image:
            small = image.resize((image.width // 4, image.height // 4))
        small.save(path)
    with pytest.raises(UserError, match=r"LOC_val_solution.csv: the boxes of \d+ of \d+ images tried lie outside "):
        train_localizer(tiny_config(str(root), str(tmp_path / "run")))


@pytest.fixture
def no_training(monkeypatch):
    """Training that starts is a failure of the check meant to come before it."""
    def started(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr("localization.training.run_trainer", started)


@pytest.mark.parametrize("trunk", [["model.backbone.norm=frozen_bn"], ["model.backbone.freeze_at=2"]])
def test_a_frozen_trunk_without_weights_is_refused_when_training_starts(tiny_root, tmp_path, trunk):
    """The schema's defaults (BN frozen, stem and res2 fixed) without model.backbone.weights trained the head
    on a random trunk that never changed."""
    cfg = tiny_config(tiny_root, str(tmp_path / "run"), *trunk)
    with pytest.raises(ConfigError) as error:
        train_localizer(cfg)
    assert str(error.value).startswith("model.backbone.weights is empty, with model.backbone.norm=")
    assert str(error.value).endswith(
        "the random trunk would stay frozen. The localizer is fine-tuned from a classifier: set "
        "model.backbone.weights=output/<cls run>/model_final.pth, or model.backbone.norm=bn "
        "model.backbone.freeze_at=0 to train from scratch (as configs/shapes_loc.yaml)")
    assert not os.path.exists(tmp_path / "run")
    check_trunk_start(load_localization_config(os.path.join(ROOT, "configs", "ilsvrc_loc_r101.yaml"), []))
    check_trunk_start(load_localization_config(os.path.join(ROOT, "configs", "shapes_loc_rcnn.yaml"), []))


def test_a_sampling_that_allows_no_positive_anchor_is_refused():
    with pytest.raises(ConfigError, match=r"rpn.anchors_per_image=8 x rpn.positive_fraction=0.1 allows no positive "
                                          r"anchor"):
        load_localization_config(os.path.join(ROOT, "configs", "shapes_loc.yaml"),
                                 ["rpn.anchors_per_image=8", "rpn.positive_fraction=0.1"])


@pytest.mark.parametrize("name, sampled", [("shapes_loc.yaml", 64), ("ilsvrc_loc_r101.yaml", 8)])
def test_shipped_localization_configs_load(name, sampled):
    cfg = load_localization_config(os.path.join(ROOT, "configs", name), [])
    assert len(cfg.model.anchor_sizes) * len(cfg.model.aspect_ratios) == 9
    assert cfg.rpn.anchors_per_image == sampled and cfg.rpn.positive_fraction == 0.5
