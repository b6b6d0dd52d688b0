"""Testing trained CIFAR weights with evaluate_weights (tools/train_cls.py --eval-only): the errors of the
run's own final evaluation, and the errors computed here from the files' bytes, the checkpoint's weights
and the training images' mean, without the toolkit's data code."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from backbones.errors import WeightsError
from classification.classifier import build_classifier
from classification.evaluation import evaluate_weights
from classification.training import train_classifier
from classification.weights import check_val_held_out
from resnet_engine.errors import UserError

from .tiny_cifar import BINARY, read_binary_file, tiny_config, write_brightness_cifar


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = write_brightness_cifar(tmp_path_factory.mktemp("cifar"))
    cfg = tiny_config(root, tmp_path_factory.mktemp("run"), "solver.max_iter=12", "solver.steps=[10]")
    return cfg, train_classifier(cfg)


def errors_by_hand(cfg, weights: str, val_images: int = 0) -> dict[str, float]:
    """Top-1 and top-5 error (percent) of ``weights`` on the test file, or with ``val_images`` on the last
    that many images of the training files: the images minus the mean of the training files' images,
    through the network in eval mode."""
    folder = os.path.join(cfg.data.root, BINARY.folder)
    files = [read_binary_file(os.path.join(folder, name)) for name in BINARY.train_files]
    training = np.concatenate([images for images, _ in files])
    mean = training.astype(np.float64).mean(axis=0)
    if val_images:
        images, labels = training[-val_images:], np.concatenate([labels for _, labels in files])[-val_images:]
    else:
        images, labels = read_binary_file(os.path.join(folder, BINARY.test_files[0]))
    checkpoint = torch.load(weights, map_location="cpu", weights_only=True)
    torch.testing.assert_close(checkpoint["meta"]["pixel_mean"], torch.from_numpy(mean).float())
    model = build_classifier(cfg, 10, load_backbone_weights=False).eval()
    model.load_state_dict(checkpoint["model"])
    with torch.no_grad():
        logits = model.logits(torch.from_numpy((images - mean).astype(np.float32)))
    labels = torch.from_numpy(labels)
    top5 = logits.topk(5, dim=1).indices
    return {"top1_err": float((logits.argmax(1) != labels).double().mean() * 100),
            "top5_err": float((~(top5 == labels[:, None]).any(1)).double().mean() * 100)}


def test_eval_only_gives_the_runs_final_errors_and_the_hand_computed_ones(trained):
    cfg, run = trained
    metrics = evaluate_weights(cfg, run.weights)
    assert list(metrics) == ["test"] and metrics["test"]["num_images"] == 50
    for key in ("top1_err", "top5_err", "top1_acc", "num_images"):
        assert metrics["test"][key] == run.metrics["test"][key], key
    by_hand = errors_by_hand(cfg, run.weights)
    assert metrics["test"]["top1_err"] == pytest.approx(by_hand["top1_err"], abs=1e-3)
    assert metrics["test"]["top5_err"] == pytest.approx(by_hand["top5_err"], abs=1e-3)
    with open(os.path.join(cfg.output_dir, "eval_test.json"), encoding="utf-8") as handle:
        written = json.load(handle)
    assert written["test"] == metrics["test"] and written["weights"] == run.weights
    assert written["dataset"] == "cifar10"


def test_a_named_split_is_tested_alone(trained):
    """split="val": the last tenth of the training files (20 images), with the run's own mean; the run
    trained on them, which the warning says."""
    cfg, run = trained
    with pytest.warns(UserWarning, match="the test split 'val' shares images with the training split 'trainval'"):
        metrics = evaluate_weights(cfg, run.weights, split="val")
    assert list(metrics) == ["val"] and metrics["val"]["num_images"] == 20
    by_hand = errors_by_hand(cfg, run.weights, val_images=20)
    assert metrics["val"]["top1_err"] == pytest.approx(by_hand["top1_err"], abs=1e-3)
    assert metrics["val"]["top5_err"] == pytest.approx(by_hand["top5_err"], abs=1e-3)
    assert os.path.isfile(os.path.join(cfg.output_dir, "eval_val.json"))


def test_a_val_section_of_images_the_weights_trained_on_is_refused(trained, tmp_path):
    """Trained on trainval (every training image), the weights have no held-out "val" images: tested with
    data.train_split=train, the last tenth would be scored as held out."""
    cfg, run = trained
    held_out = tiny_config(cfg.data.root, tmp_path, "data.train_split=train")
    with pytest.raises(UserError, match=r"model_final.pth was trained on all training images \(data.train_split="
                                        r"trainval\), the 'val' ones included: its 'val' error would count images it "
                                        r"trained on; test it with data.train_split=trainval data.val_images=0"):
        evaluate_weights(held_out, run.weights)


@pytest.mark.parametrize("trained_on, tested_on, refused", [
    (("train", 500), ("train", 500), False), (("train", 500), ("train", 200), False),
    (("train", 500), ("train", 800), True), (("train", 0), ("train", 800), True), (("train", 500), ("train", 0), True),
    (("trainval", 0), ("train", 0), True), (("trainval", 0), ("trainval", 0), False),
    (("train", 500), ("trainval", 0), False),
])
def test_the_val_images_must_be_among_those_held_out_in_training(trained_on, tested_on, refused):
    data = [SimpleNamespace(train_split=split, val_images=count) for split, count in (trained_on, tested_on)]
    if refused:
        with pytest.raises(UserError, match="its 'val' error would count images it trained on"):
            check_val_held_out("w.pth", *data)
    else:
        check_val_held_out("w.pth", *data)


def test_weights_without_the_runs_pixel_mean_are_refused(trained, tmp_path):
    cfg, run = trained
    bare = tmp_path / "bare.pth"
    torch.save(torch.load(run.weights, map_location="cpu", weights_only=True)["model"], bare)
    with pytest.raises(UserError) as error:
        evaluate_weights(cfg, str(bare))
    assert str(error.value) == (f"{bare} holds no pixel mean: give a checkpoint of a CIFAR run of tools/train_cls.py "
                                f"(its model_final.pth), which keeps the mean its images were trained with")
    with pytest.raises(UserError) as error:
        evaluate_weights(cfg, str(tmp_path / "typo.pth"))
    assert str(error.value) == (f"weights not found: {tmp_path / 'typo.pth'} (give the model_final.pth of a CIFAR "
                                f"run of tools/train_cls.py)")


def test_a_checkpoint_is_tested_only_as_the_network_it_was_trained_as(trained, tmp_path):
    """A plain net and a ResNet share every tensor name: loading alone would score one as the other."""
    cfg, run = trained
    plain = tiny_config(cfg.data.root, tmp_path, "model.backbone.plain=true")
    with pytest.raises(UserError) as error:
        evaluate_weights(plain, run.weights)
    assert str(error.value) == (f"{run.weights} was trained as another network (model.backbone.plain=False there, "
                                f"True here): test it with the config it was trained with (the config.yaml of its "
                                f"output folder)")


def test_a_checkpoint_is_tested_only_on_its_classes_in_their_order(trained, tmp_path):
    cfg, run = trained
    checkpoint = torch.load(run.weights, map_location="cpu", weights_only=True)
    names = checkpoint["meta"]["class_names"]
    assert len(names) == 10
    checkpoint["meta"]["class_names"] = [names[1], names[0], *names[2:]]  # trained with two classes swapped
    swapped = tmp_path / "swapped.pth"
    torch.save(checkpoint, swapped)
    with pytest.raises(UserError, match=rf"swapped.pth was trained on other classes than this data lists \(class 0 "
                                        rf"is {names[1]} there, {names[0]} here\): its fc's rows would be scored"):
        evaluate_weights(cfg, str(swapped))


def test_projection_weights_are_refused_by_an_identity_shortcut_net(trained):
    """Option-B weights (projections where the dimensions grow) in an option-A net: before, the projections
    were dropped with a warning and the net scored as option A."""
    from classification.weights import apply_classifier_state
    cfg, _ = trained
    assert cfg.model.backbone.shortcut == "A"
    option_b = tiny_config(cfg.data.root, cfg.output_dir, "model.backbone.shortcut=B")
    state = build_classifier(option_b, 10, load_backbone_weights=False).state_dict()
    assert any("downsample" in key for key in state)
    with pytest.raises(WeightsError, match=r"source.pth holds \d+ tensors that resnet8 of these settings lacks, e\.g\. "
                                        r".*downsample.*projection shortcuts, where this one has option A or none"):
        apply_classifier_state(build_classifier(cfg, 10, load_backbone_weights=False), state, "source.pth")


def test_diverged_weights_score_every_image_wrong_and_say_so(trained, tmp_path, caplog):
    """A NaN in the fc makes every score NaN; topk ranks NaN first, so the errors came out near chance."""
    cfg, run = trained
    checkpoint = torch.load(run.weights, map_location="cpu", weights_only=True)
    fc = next(key for key in checkpoint["model"] if key.endswith("fc.weight"))
    checkpoint["model"][fc][0, 0] = float("nan")
    broken = tmp_path / "diverged.pth"
    torch.save(checkpoint, broken)
    with caplog.at_level("WARNING", logger="classification.evaluation"):
        metrics = evaluate_weights(cfg, str(broken))
    assert (metrics["test"]["top1_err"], metrics["test"]["top5_err"]) == (100.0, 100.0)
    assert "50 of the 50 test images got NaN or infinite scores and are counted as errors" in caplog.text
