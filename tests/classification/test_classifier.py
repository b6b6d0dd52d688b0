"""The ImageNet classifier: test-time views, fully convolutional testing, top-k errors, augmentation, the CLI."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import normalize

from backbones import ResNet
from classification.classifier import (
    Classifier,
    ClassifierInput,
    average_softmax,
    topk_errors,
    true_label_ranks,
)
from classification.data.imagenet import (
    ClassificationDataset,
    EvalTransform,
    ImageRecord,
    TrainTransform,
    five_crop_offsets,
    ten_crops,
)
from classification.data.synthetic_ilsvrc import ensure_synthetic_loc
from classification.evaluation import format_metrics
from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.helpers import randomize_bn_statistics, subprocess_env

MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@pytest.fixture(scope="module")
def small_classifier():
    torch.manual_seed(0)
    backbone = ResNet(18, num_classes=5, out_features=["res5"], norm="bn", base_width=16)
    model = Classifier(randomize_bn_statistics(backbone), MEAN, STD, "RGB").eval()
    with torch.no_grad():  # a non-zero bias, so that the check covers it
        model.backbone.fc.bias.uniform_(-0.5, 0.5)
    return model


def random_images(*shape, seed=0):
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


# --------------------------------------------------------------------------------------------- the model


def test_fc_as_convolution_equals_fc_after_pooling(small_classifier):
    model = small_classifier
    images = model.normalize(random_images(2, 3, 96, 160))  # a 3x5 res5 map
    with torch.no_grad():
        res5 = model.backbone(images)["res5"]
        assert res5.shape[-2:] == (3, 5)
        score_map = model.score_map(images)
        # By hand: the fc at every position, then the spatial mean; and the fc of the mean feature.
        weight, bias = model.backbone.fc.weight, model.backbone.fc.bias
        by_hand = torch.einsum("bchw,kc->bkhw", res5, weight) + bias[None, :, None, None]
        pooled_then_fc = res5.mean(dim=(2, 3)) @ weight.T + bias
    torch.testing.assert_close(score_map, by_hand, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score_map.mean(dim=(2, 3)), pooled_then_fc, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(score_map.mean(dim=(2, 3)), model.logits(images), atol=1e-5, rtol=1e-5)


def test_dense_on_a_crop_sized_image_equals_one_crop(small_classifier):
    model = small_classifier
    images = random_images(3, 3, 64, 64, seed=1)
    one_crop = model.predict_logits(images[:, None], "1crop")
    dense = model.predict_logits([images], "dense", dense_flip=False)
    torch.testing.assert_close(dense, one_crop, atol=1e-5, rtol=1e-5)
    # A single view's score is its log-softmax: same ranking as the raw logits.
    with torch.no_grad():
        raw = model.logits(model.normalize(images))
    torch.testing.assert_close(one_crop, raw.log_softmax(dim=1), atol=1e-5, rtol=1e-5)


def test_dense_averages_softmax_over_scales_and_flips(small_classifier):
    model = small_classifier
    small, large = random_images(1, 3, 64, 96, seed=2), random_images(1, 3, 96, 144, seed=3)
    dense = model.predict_logits([small, large], "dense", dense_flip=True)
    with torch.no_grad():
        views = [model.logits(model.normalize(v)) for v in (small, large, small.flip(-1), large.flip(-1))]
    expected = torch.stack([v.softmax(dim=1) for v in views]).mean(dim=0).log()
    torch.testing.assert_close(dense, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dense.exp().sum(dim=1), torch.ones(1))


def test_average_softmax_of_ten_crops(small_classifier):
    crops = random_images(2, 10, 3, 64, 64, seed=4)
    scores = small_classifier.predict_logits(crops, "10crop")
    with torch.no_grad():
        per_crop = small_classifier.logits(small_classifier.normalize(crops.flatten(0, 1))).view(2, 10, -1)
    torch.testing.assert_close(scores, average_softmax(per_crop))
    assert scores.shape == (2, 5)


def test_average_softmax_ranks_classes_far_below_the_best_one():
    """A confident network: the best class 200 above the others, which stand 10 apart. Their probabilities
    formed first underflow to 0 in float32 and the top-5 was decided among ties (ranked by index: 0, 1, 2,
    3, 4 here); in log space it is the logits' order (0, 5, 4, 3, 2), and the exact log of the mean."""
    logits = torch.tensor([[200.0, -40.0, -30.0, -20.0, -10.0, 0.0]]).repeat(1, 2, 1)  # two identical views
    logits[0, 1, 0] = 190.0
    scores = average_softmax(logits)
    assert scores.topk(5, dim=1).indices.tolist() == [[0, 5, 4, 3, 2]]
    exact = torch.logsumexp(logits.double().log_softmax(dim=-1), dim=1) - math.log(2)
    torch.testing.assert_close(scores.double(), exact, atol=1e-4, rtol=1e-6)
    assert true_label_ranks(scores, torch.tensor([2])).tolist() == [4]  # among the top 5: no tie decided it


def test_training_forward_returns_the_cross_entropy_and_the_batch_error(small_classifier):
    batch = [{"image": random_images(3, 64, 64, seed=i), "label": (3 * i + 1) % 5} for i in range(4)]
    small_classifier.train()
    try:
        losses, metrics = small_classifier(batch)
        # By hand, on the same batch in train mode (BatchNorm with the batch's statistics): the mean
        # over the images of -log softmax at each image's label.
        logits = small_classifier.logits(small_classifier.normalize(torch.stack([s["image"] for s in batch])))
    finally:
        small_classifier.eval()
    labels = torch.tensor([1, 4, 2, 0])
    expected = -torch.log_softmax(logits, dim=1)[torch.arange(4), labels].mean()
    assert set(losses) == {"loss_cls"} and set(metrics) == {"train_error"}
    torch.testing.assert_close(losses["loss_cls"], expected)
    # The share of the 4 images whose best score is not their label, counted one by one.
    wrong = sum(int(logits[i].argmax()) != int(labels[i]) for i in range(4))
    assert float(metrics["train_error"]) == pytest.approx(100 * wrong / 4)


def test_topk_errors_hand_computed():
    logits = torch.tensor([
        [0.9, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0],  # label 0: first
        [0.1, 0.9, 0.5, 0.4, 0.3, 0.2, 0.0],  # label 2: second
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.9],  # label 3: fifth (after 6, 0, 1, 2)
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.9],  # label 4: sixth, outside the top 5
    ])
    labels = torch.tensor([0, 2, 3, 4])
    assert topk_errors(logits, labels) == {"top1_err": 75.0, "top5_err": 25.0}
    assert topk_errors(logits, labels, ks=(1, 2, 5)) == {"top1_err": 75.0, "top2_err": 50.0, "top5_err": 25.0}
    # Fewer than 5 classes: every label is within the top 5.
    assert topk_errors(torch.tensor([[0.1, 0.9, 0.0]]), torch.tensor([2])) == {"top1_err": 100.0, "top5_err": 0.0}


# --------------------------------------------------------------------------------------------- the views


def coordinate_image(height, width):
    """Pixel (y, x) holds (y, x, 7): a crop's first pixel says where it was taken."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([ys, xs, np.full_like(ys, 7)], axis=-1).astype(np.uint8)


def test_ten_crops_of_a_small_image():
    image = coordinate_image(6, 8)
    # By hand for a 6x8 image and 4x4 crops: right = 8-4 = 4, bottom = 6-4 = 2, centre ((8-4)//2, (6-4)//2).
    assert five_crop_offsets(6, 8, 4) == [(0, 0), (4, 0), (0, 2), (4, 2), (2, 1)]
    crops = ten_crops(image, 4)
    assert len(crops) == 10 and all(c.shape == (4, 4, 3) for c in crops)
    corners = [(int(c[0, 0, 1]), int(c[0, 0, 0])) for c in crops[:5]]
    assert corners == [(0, 0), (4, 0), (0, 2), (4, 2), (2, 1)]
    for plain, mirrored in zip(crops[:5], crops[5:]):
        np.testing.assert_array_equal(mirrored, plain[:, ::-1])
    # The mirrored top-right crop starts at the image's right edge.
    assert (int(crops[6][0, 0, 1]), int(crops[6][0, -1, 1])) == (7, 4)


def test_test_views_resize_then_crop():
    """The shorter side resized (area averaging when shrinking, as OpenCV computes it), then the
    crops at hand-computed offsets of the resized image."""
    import cv2

    image = coordinate_image(12, 20)
    resized = cv2.resize(image, (10, 6), interpolation=cv2.INTER_AREA)
    one = EvalTransform("1crop", resize=6, crop_size=4)(image)
    assert len(one) == 1
    np.testing.assert_array_equal(one[0], resized[1:5, 3:7])  # centre of 6x10: ((10-4)//2, (6-4)//2)
    ten = EvalTransform("10crop", resize=6, crop_size=4)(image)
    corners = [(0, 0), (6, 0), (0, 2), (6, 2), (3, 1)]  # top-left, top-right, bottom-left, bottom-right, centre
    expected = [resized[y:y + 4, x:x + 4] for x, y in corners]
    assert len(ten) == 10
    for view, plain in zip(ten, expected + [e[:, ::-1] for e in expected]):
        np.testing.assert_array_equal(view, plain)
    dense = EvalTransform("dense", resize=6, crop_size=4, dense_scales=[6, 9])(image)
    assert len(dense) == 2
    np.testing.assert_array_equal(dense[0], resized)
    np.testing.assert_array_equal(dense[1], cv2.resize(image, (15, 9), interpolation=cv2.INTER_AREA))


def test_training_transform_is_deterministic_per_seed():
    image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    transform = TrainTransform([256, 480], 224, flip_prob=0.5, color_jitter=0.4, lighting_std=0.1)
    first, again, other = transform(image, 123), transform(image, 123), transform(image, 124)
    assert first.shape == (224, 224, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    small = TrainTransform([112, 160], 112)(image[:170, :230], 5)
    assert small.shape == (112, 112, 3)


def test_dataset_items_repeat_and_bad_images_are_skipped(tmp_path, recwarn):
    import cv2

    good = tmp_path / "good.JPEG"
    cv2.imwrite(str(good), np.full((80, 100, 3), 90, np.uint8))
    (tmp_path / "bad.JPEG").write_bytes(b"not an image")
    records = [ImageRecord("bad", str(tmp_path / "bad.JPEG"), 1), ImageRecord("good", str(good), 0)]
    train = ClassificationDataset(records, TrainTransform([64, 72], 56), train=True)
    sample = train[(0, 9)]
    assert sample["image_id"] == "good" and sample["skipped"] == [str(tmp_path / "bad.JPEG")]
    assert sample["image"].shape == (3, 56, 56)
    assert torch.equal(train[(1, 9)]["image"], sample["image"])
    test = ClassificationDataset(records, EvalTransform("1crop", 64, 56), train=False)
    assert test[0]["views"] is None and test[1]["views"][0].shape == (3, 56, 56)


# --------------------------------------------------------------------------------------------- the command line


def run_tool(*args: str) -> subprocess.CompletedProcess:
    env = subprocess_env(OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", "train_cls.py"), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


TINY = ["model.backbone.base_width=8", "input.train_short_side=[48,56]", "input.crop=48", "test.resize=48",
        "test.dense_scales=[48,64]", "test.ims_per_batch=6", "solver.ims_per_batch=4", "solver.max_iter=3",
        "solver.steps=[2]", "solver.warmup_iters=1", "solver.checkpoint_period=2", "solver.log_period=1",
        "data.num_workers=0", "data.synthetic=''", "seed=3"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("cls")
    root = ensure_synthetic_loc(str(base / "data"), images_per_class={"train": 2, "val": 1}, sides=(48, 64))
    out = base / "run"
    result = run_tool(f"output_dir={out}", f"data.root={root}", *TINY)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_short_training_run_writes_config_weights_and_errors(trained_run):
    out, result = trained_run
    for name in ("config.yaml", "model_final.pth", "metrics.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())["cls"]
    assert 0 <= metrics["top5_err"] <= metrics["top1_err"] <= 100
    assert metrics["num_images"] == 6
    # The errors name their test views (10-crop, the config's default), in metrics.json and in the log's
    # evaluation records alike, and the printed line names the split.
    assert metrics["mode"] == "10crop" and "dense_scales" not in metrics
    evaluations = [record["cls"] for record in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
                   if record.get("type") == "eval"]
    assert evaluations and evaluations[-1] == metrics
    assert result.stdout.splitlines()[-1].startswith(
        f"val (10crop): top-1 error {metrics['top1_err']:.2f}%, top-5 error {metrics['top5_err']:.2f}% (6 images, ")


def test_a_checkpoint_is_tested_with_the_input_arithmetic_it_was_trained_with(trained_run):
    """The input's channel order, mean and std are part of the ImageNet classifier: tested with others, a
    checkpoint scored other errors without a word."""
    from classification.config import load_classification_config
    from classification.weights import check_checkpoint_fits
    out, _ = trained_run
    weights = str(out / "model_final.pth")
    check_checkpoint_fits(weights, load_classification_config(str(out / "config.yaml"), []), {})
    for change, differing in (("input.format=BGR", "input.format=RGB there, BGR here"),
                              ("input.pixel_std=[1,1,1]", "input.pixel_std=[58.395, 57.12, 57.375] there, [1.0, 1.0, "
                                                          "1.0] here")):
        with pytest.raises(UserError) as error:
            check_checkpoint_fits(weights, load_classification_config(str(out / "config.yaml"), [change]), {})
        assert str(error.value) == (f"{weights} was trained as another network ({differing}): test it with the "
                                    f"config it was trained with (the config.yaml of its output folder)")


def test_weights_without_classes_on_a_list_not_in_sorted_wnid_order_are_warned_of():
    from classification.weights import check_checkpoint_fits
    with pytest.warns(UserWarning, match=r"torchvision:IMAGENET1K_V1 carries no class list, and the synset list "
                                         r"orders its classes otherwise than by sorted WNID.*class 0 is n02119789"):
        check_checkpoint_fits("torchvision:IMAGENET1K_V1", None, {"wnids": ["n02119789", "n01440764"]})


def test_a_top5_error_counts_non_finite_scores_with_fewer_than_five_classes():
    logits = torch.tensor([[float("nan")] * 3, [0.0, 1.0, 2.0]])
    assert topk_errors(logits, torch.tensor([0, 0])) == {"top1_err": 100.0, "top5_err": 50.0}


def test_eval_only_reruns_the_saved_config_densely(trained_run):
    out, _ = trained_run
    result = run_tool("--cfg", str(out / "config.yaml"), "--eval-only", "--weights", str(out / "model_final.pth"),
                      "test.mode=dense")
    assert result.returncode == 0, result.stderr[-3000:]
    dense = json.loads((out / "eval_dense.json").read_text())
    assert dense["mode"] == "dense" and dense["cls"]["num_images"] == 6
    views = {"mode": "dense", "dense_scales": [48, 64], "dense_flip": True}
    assert {key: dense["cls"][key] for key in views} == views
    assert result.stdout.splitlines()[-1].startswith(
        f"val (dense at 48/64 with flips): top-1 error {dense['cls']['top1_err']:.2f}%, top-5 error "
        f"{dense['cls']['top5_err']:.2f}% (6 images, ")


def test_each_printed_result_names_its_split_and_imagenets_its_test_views():
    errors = {"top1_err": 7.514, "top5_err": 0.5, "num_images": 5000, "seconds_per_image": 0.00123}
    cifar = format_metrics({"val": errors, "test": {**errors, "num_images": 10000}, "iteration": 5})
    assert cifar.splitlines() == ["val: top-1 error 7.51%, top-5 error 0.50% (5000 images, 0.0012 s/image)",
                                  "test: top-1 error 7.51%, top-5 error 0.50% (10000 images, 0.0012 s/image)"]
    for views, name in (({"mode": "1crop"}, "val (1crop)"),
                        ({"mode": "dense", "dense_scales": [224, 256], "dense_flip": False},
                         "val (dense at 224/256 without flips)"),
                        ({}, "val")):  # a section saved without its views
        assert format_metrics({"cls": {**errors, **views}}) == (
            f"{name}: top-1 error 7.51%, top-5 error 0.50% (5000 images, 0.0012 s/image)")


def test_unknown_config_key_is_one_line_and_exit_code_2():
    result = run_tool("solver.max_itr=3")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: unknown key 'solver.max_itr'"), result.stderr
    assert "did you mean solver.max_iter" in lines[0]


@pytest.mark.parametrize("input_format", ["RGB", "BGR"])
def test_the_classifier_input_is_torchvisions_arithmetic_and_not_saved(input_format):
    """The input arithmetic the classifier shares with the localizers, against torchvision's Normalize."""
    class Network(ClassifierInput, torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.set_input_normalization(MEAN, STD, input_format)

    network = Network()
    images = random_images(2, 3, 5, 4)
    # A BGR network reverses the channels before subtracting its statistics (given in its own order).
    pixels = images.flip(1) if input_format == "BGR" else images
    expected = normalize(pixels.float() / 255, [m / 255 for m in MEAN], [s / 255 for s in STD])
    torch.testing.assert_close(network.normalize(images), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(network.normalize(images.float()), expected, rtol=0, atol=1e-6)
    assert (network.device, network.state_dict()) == (torch.device("cpu"), {})
