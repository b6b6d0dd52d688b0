"""The paper's ImageNet tables (classification/imagenet_tables.py, tools/imagenet_tables.py): measured rows equal
evaluate_weights' errors and an independent computation of the test views, the paper's figures as printed in
the paper, "not run" rows, the tables' protocols, the data and test views a row was measured with, and
one-line messages for bad input."""

import csv
import importlib.util
import json
import os
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import normalize

from classification.classifier import build_classifier
from classification.config import load_classification_config
from classification.data.imagenet import resize_shorter_side
from classification.data.synthetic_ilsvrc import ensure_synthetic_loc
from classification.evaluation import evaluate_weights
from classification.imagenet_tables import (
    measure_table,
    parse_weights_options,
    protocol_deviations,
    row_config,
    table_markdown,
)
from detection.data.image_io import read_image
from resnet_engine.cli import run_cli
from resnet_engine.config import config_to_text
from resnet_engine.errors import UserError
from tests.conftest import ROOT

# The paper's figures (top-1, top-5 error in percent), transcribed from its Tables 2, 3 and 4.
PAPER = {
    2: {"plain-18": (27.94, None), "plain-34": (28.54, None), "ResNet-18": (27.88, None), "ResNet-34 A": (25.03, None)},
    3: {"plain-34": (28.54, 10.02), "ResNet-34 A": (25.03, 7.76), "ResNet-34 B": (24.52, 7.46),
        "ResNet-34 C": (24.19, 7.40), "ResNet-50": (22.85, 6.71), "ResNet-101": (21.75, 6.05),
        "ResNet-152": (21.43, 5.71)},
    4: {"ResNet-34 B": (21.84, 5.71), "ResNet-34 C": (21.53, 5.60), "ResNet-50": (20.74, 5.25),
        "ResNet-101": (19.87, 4.60), "ResNet-152": (19.38, 4.49)},
}
# The tables' headers: the errors and the test views of each.
PROTOCOL_TEXT = {2: "top-1 error (%), 10-crop testing", 3: "top-1 / top-5 error (%), 10-crop testing",
                 4: "top-1 / top-5 error (%), single model, fully convolutional at shorter sides "
                    "{224, 256, 384, 480, 640} with flips, softmax averaged"}
# Tiny nets on small images: width 8, 48-pixel crops, 48 val images of 48-64 pixels (8 per class).
# The resize before the 10 crops (256 in the tables) and the flips of the dense test are the toolkit's choices.
TOOLKIT_CHOICE = "the toolkit's choice: the paper does not give it"
RESIZE_52 = f"test.resize=52 (the table's: 256, {TOOLKIT_CHOICE})"
TINY = ["model.backbone.base_width=8", "model.backbone.zero_init_residual=false", "model.num_classes=0",
        "input.train_short_side=[48,56]", "input.crop=48", "test.resize=52", "test.ims_per_batch=16",
        "data.num_workers=0", "data.synthetic=''"]


def untrained_classifier(cfg, root, seed):
    """A random classifier whose BN statistics are measured on the val images (as a trained net's are on its
    data), so that its predictions depend on the image and the test views change its errors."""
    torch.manual_seed(seed)
    model = build_classifier(cfg, 6)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches
    model.train()
    with torch.no_grad():
        for image, _ in val_images(root):
            chw = torch.from_numpy(np.ascontiguousarray(resize_shorter_side(image, 48))).permute(2, 0, 1)[None]
            model.logits(model.normalize(torch.cat([chw, chw.flip(-1)])))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The synthetic val set and two classifier checkpoints, saved with the entries of tools/train_cls.py's
    checkpoints that the tables read (weights, meta, config), and their configs as config.yaml files."""
    base = tmp_path_factory.mktemp("tables")
    root = ensure_synthetic_loc(str(base / "data"), images_per_class={"val": 8}, sides=(48, 64))
    nets = {}
    for seed, (name, variant) in enumerate({"plain-18": ["model.backbone.plain=true"],
                                            "ResNet-18": ["model.backbone.shortcut=A"]}.items()):
        cfg = load_classification_config("cls_shapes.yaml", [*TINY, f"data.root={root}", *variant,
                                                              f"output_dir={base / name}"])
        model = untrained_classifier(cfg, root, seed)
        path = str(base / f"{name}.pth")
        torch.save({"model": model.state_dict(), "meta": {"task": "classification", "num_classes": 6},
                    "config": config_to_text(cfg)}, path)
        (base / f"{name}.yaml").write_text(config_to_text(cfg))
        nets[name] = (path, model)
    return base, root, nets


# --------------------------------------------------------------------------------------------- references


def val_images(root):
    """(RGB image, label) of each val image, labels by hand from the synset list and the val CSV."""
    with open(os.path.join(root, "LOC_synset_mapping.txt")) as handle:
        wnids = [line.split()[0] for line in handle if line.strip()]
    with open(os.path.join(root, "LOC_val_solution.csv")) as handle:
        rows = sorted((row["ImageId"], row["PredictionString"].split()[0]) for row in csv.DictReader(handle))
    return [(read_image(os.path.join(root, "ILSVRC", "Data", "CLS-LOC", "val", f"{image_id}.JPEG")), wnids.index(wnid))
            for image_id, wnid in rows]


def whole_image_logits(model, image):
    """The classifier's logits of uint8 (V, 3, H, W) views: torchvision's Normalize, the ResNet's res5,
    global average pooling and the fc as a matrix product."""
    x = normalize(image.float() / 255, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    res5 = model.backbone(x)["res5"]
    return F.adaptive_avg_pool2d(res5, 1).flatten(1) @ model.backbone.fc.weight.T + model.backbone.fc.bias


@torch.no_grad()
def view_probabilities(model, root, views_of):
    """([the softmax of each view (V, K), for each val image], [labels])."""
    samples = val_images(root)
    probabilities = [torch.cat([whole_image_logits(model, v).softmax(1) for v in views_of(image)])
                     for image, _ in samples]
    return probabilities, [label for _, label in samples]


def reference_errors(probabilities, labels, views=slice(None)):
    """Top-1 and top-5 error (%) with the softmax averaged over each image's ``views``."""
    wrong1 = wrong5 = 0
    for image_views, label in zip(probabilities, labels):
        top5 = image_views[views].mean(0).topk(5).indices.tolist()
        wrong1 += top5[0] != label
        wrong5 += label not in top5
    return 100 * wrong1 / len(labels), 100 * wrong5 / len(labels)


def resized(image, side):
    return torch.from_numpy(np.ascontiguousarray(resize_shorter_side(image, side))).permute(2, 0, 1)


def ten_crop_views(resize, crop):
    """The four corners and the centre (index 4) of the resized image (an odd margin leaves its extra pixel
    right and below the centre crop), and the mirror image of each of the five."""
    def views(image):
        chw = resized(image, resize)
        height, width = chw.shape[1:]
        corners = [(0, 0), (0, width - crop), (height - crop, 0), (height - crop, width - crop),
                   ((height - crop) // 2, (width - crop) // 2)]
        five = [chw[:, top:top + crop, left:left + crop] for top, left in corners]
        return [torch.stack(five + [patch.flip(-1) for patch in five])]
    return views


def dense_views(scales):
    """The whole image at each scale, then the mirror images in the same order."""
    def views(image):
        whole = [resized(image, side)[None] for side in scales]
        return whole + [v.flip(-1) for v in whole]
    return views


# --------------------------------------------------------------------------------------------- tables


def run_tool(monkeypatch, capsys, *args):
    """tools/imagenet_tables.py in this process, as run_cli runs it: (exit code, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location("imagenet_tables_tool", os.path.join(ROOT, "tools", "imagenet_tables.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    monkeypatch.setattr(sys, "argv", ["imagenet_tables.py", *args])
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # run_cli sets its own
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_code:
        run_cli(tool.main)
    captured = capsys.readouterr()
    return exit_code.value.code, captured.out, captured.err


def test_table_2_from_the_command_line(tiny, monkeypatch, capsys):
    base, root, nets = tiny
    out = base / "table2"
    with pytest.warns(UserWarning) as warned:
        code, stdout, stderr = run_tool(monkeypatch, capsys, "--table", "2", "--weights",
                                        f"plain18={nets['plain-18'][0]}", "--weights",
                                        f"ResNet-18={nets['ResNet-18'][0]}", "--out", str(out))
    assert code == 0, stderr[-3000:]
    assert {str(w.message) for w in warned} == {
        f"{name} is not tested as the table says: {deviation}" for name in ("plain-18", "ResNet-18")
        for deviation in (RESIZE_52, "input.crop=48 (the table's: 224)")}
    table = json.loads((out / "table2.json").read_text())
    rows = {row["net"]: row for row in table["rows"]}
    assert list(rows) == list(PAPER[2])
    one_crop_differs = []
    for name in ("plain-18", "ResNet-18"):
        path, model = nets[name]
        measured = rows[name]["measured"]
        assert measured["num_images"] == 48
        probabilities, labels = view_probabilities(model, root, ten_crop_views(52, 48))
        reference = reference_errors(probabilities, labels)
        assert (measured["top1_err"], measured["top5_err"]) == pytest.approx(reference, abs=1e-3)
        one_crop_differs.append(reference != reference_errors(probabilities, labels, [4]))
        # The same as tools/train_cls.py --eval-only on the checkpoint's own config in 10-crop mode.
        cfg = load_classification_config(str(base / f"{name}.yaml"), ["test.mode=10crop", f"output_dir={base / 'eval'}"])
        direct = evaluate_weights(cfg, path)["cls"]
        assert (measured["top1_err"], measured["top5_err"]) == (direct["top1_err"], direct["top5_err"])
        assert rows[name]["paper"]["top1_err"] == PAPER[2][name][0]
        assert rows[name]["deviations"] == [RESIZE_52, "input.crop=48 (the table's: 224)"]
        # The data it was measured on: the synthetic set's 6 classes, not ImageNet's 1000.
        assert (rows[name]["data_root"], rows[name]["num_classes"], rows[name]["synthetic"]) == (root, 6, True)
        assert "stride_in_1x1" not in rows[name]  # basic units: no 1x1 to stride in
    for name in ("plain-34", "ResNet-34 A"):
        assert rows[name]["status"] == "not run" and rows[name]["measured"] is None
        assert rows[name]["paper"] == {"top1_err": PAPER[2][name][0], "top5_err": None}
    lines = stdout.splitlines()
    assert lines[:3] == ["Table 2: top-1 error (%), 10-crop testing, on the val images",
                         f"The paper: the 50,000 ILSVRC 2012 val images of 1000 classes. Measured here: the val "
                         f"images of `{root}` (6 classes, the toolkit's synthetic set).", ""]
    assert lines[lines.index("Tested otherwise than the table's protocol:") + 1:] == [
        f"- {name}: {note}" for name in ("plain-18", "ResNet-18")
        for note in ("width 8 (the paper's: 64)", RESIZE_52, "input.crop=48 (the table's: 224)",
                     "the toolkit's synthetic set, not ImageNet", "6 classes (the paper's: 1000)",
                     "48 val images (the paper's: 50,000)")]
    assert "| plain-34 | 28.54 | not run |  |  |" in lines
    assert f"| ResNet-18 | 27.88 | {rows['ResNet-18']['measured']['top1_err']:.2f} | 48 | `{nets['ResNet-18'][0]}` |" in lines
    assert any(one_crop_differs)  # the data tell 10 crops from 1: the check above would see the wrong protocol
    assert (out / "table2.md").read_text().strip() == stdout.strip()


def test_table_4_tests_densely_with_flips(tiny, tmp_path):
    """A state dict (not a checkpoint) is tested with the row's shipped config, at the scales asked for."""
    _, root, _ = tiny
    overrides = [*TINY, f"data.root={root}", "test.dense_scales=[48,64]"]
    model = untrained_classifier(load_classification_config("ilsvrc_cls_r34c.yaml", overrides), root, seed=5)
    weights = str(tmp_path / "r34c.pth")
    torch.save(model.backbone.state_dict(), weights)
    with pytest.warns(UserWarning) as warned:
        table = measure_table(4, {"ResNet-34 C": weights}, overrides, str(tmp_path / "out"))
    assert [str(w.message) for w in warned] == [
        "ResNet-34 C is not tested as the table says: test.dense_scales=[48, 64] (the table's: [224, 256, 384, 480, 640])"]
    rows = {row["net"]: row for row in table["rows"]}
    measured = rows["ResNet-34 C"]["measured"]
    probabilities, labels = view_probabilities(model, root, dense_views([48, 64]))
    reference = reference_errors(probabilities, labels)
    assert (measured["top1_err"], measured["top5_err"]) == pytest.approx(reference, abs=1e-3)
    # The data tell the protocol from its neighbours: without flips, or at one scale, the errors differ.
    assert reference != reference_errors(probabilities, labels, [0, 1])
    assert reference != reference_errors(probabilities, labels, [0, 2])
    assert rows["ResNet-34 C"]["test"] == {"test.mode": "dense", "test.dense_scales": [48, 64],
                                           "test.dense_flip": True, "test.max_images": 0}
    assert [(r["net"], r["status"]) for r in table["rows"]] == [
        (name, "measured" if name == "ResNet-34 C" else "not run") for name in PAPER[4]]
    assert all((r["paper"]["top1_err"], r["paper"]["top5_err"]) == PAPER[4][r["net"]] for r in table["rows"])
    markdown = table_markdown(table)
    assert markdown.splitlines()[0] == ("Table 4: top-1 / top-5 error (%), single model, fully convolutional at "
                                        "shorter sides {48, 64} with flips, softmax averaged, on the val images")
    assert "| ResNet-50 | 20.74 | not run | 5.25 | not run |  |  |" in markdown
    assert "- ResNet-34 C: width 8 (the paper's: 64)" in markdown
    # A row measured without flips: the header says so, for that row alone when another row has them.
    without = {**rows["ResNet-34 C"], "test": {**rows["ResNet-34 C"]["test"], "test.dense_flip": False}}
    views = "fully convolutional at shorter sides {48, 64}"
    assert table_markdown({**table, "rows": [without]}).splitlines()[0] == (
        f"Table 4: top-1 / top-5 error (%), single model, {views} without flips, softmax averaged, on the val images")
    assert table_markdown({**table, "rows": [{**without, "net": "ResNet-34 B"}, rows["ResNet-34 C"]]}).splitlines()[0] == (
        f"Table 4: top-1 / top-5 error (%), single model, {views} without flips, softmax averaged (ResNet-34 B); "
        f"{views} with flips, softmax averaged (ResNet-34 C), on the val images")


def test_a_bottleneck_row_notes_its_stride_and_a_subset_of_the_val_images(tiny, tmp_path):
    """ResNet-50 as the shipped config builds it strides in the 3x3 (the paper's nets: in the 1x1); 12 of the
    48 val images are tested."""
    _, root, _ = tiny
    overrides = [*TINY, f"data.root={root}", "test.max_images=12"]
    model = untrained_classifier(load_classification_config("ilsvrc_cls_r50.yaml", overrides), root, seed=7)
    weights = str(tmp_path / "r50.pth")
    torch.save(model.backbone.state_dict(), weights)
    with pytest.warns(UserWarning):
        table = measure_table(3, {"ResNet-50": weights}, overrides, str(tmp_path / "out"))
    row = {r["net"]: r for r in table["rows"]}["ResNet-50"]
    assert (row["stride_in_1x1"], row["measured"]["num_images"], row["num_classes"]) == (False, 12, 6)
    lines = table_markdown(table).splitlines()
    assert lines[0] == "Table 3: top-1 / top-5 error (%), 10-crop testing, on the val images"
    assert lines[lines.index("Tested otherwise than the table's protocol:") + 1:] == [
        "- ResNet-50: width 8 (the paper's: 64)", f"- ResNet-50: {RESIZE_52}", "- ResNet-50: input.crop=48 (the table's: 224)",
        "- ResNet-50: test.max_images=12 (the table's: 0)", "- ResNet-50: the toolkit's synthetic set, not ImageNet",
        "- ResNet-50: 6 classes (the paper's: 1000)", "- ResNet-50: 12 val images (the paper's: 50,000)", "",
        "ResNet-50: stride 2 in the 3x3 convolution of the bottleneck units (model.backbone.stride_in_1x1=false, as "
        "torchvision's weights), where the paper's nets stride in the first 1x1."]


def test_rows_measured_on_other_data_name_theirs():
    """The header names each row's data; ImageNet's own 50,000 images of 1000 classes get no note."""
    def row(net, root, classes, synthetic, images):
        return {"net": net, "paper": {"top1_err": 1.0, "top5_err": 1.0}, "status": "measured", "weights": "w.pth",
                "data_root": root, "num_classes": classes, "synthetic": synthetic, "width": 64,
                "measured": {"top1_err": 2.0, "top5_err": 2.0, "num_images": images}, "deviations": [],
                "test": {"test.mode": "10crop", "test.resize": 256, "input.crop": 224, "test.max_images": 0}}
    rows = [row("plain-34", "/data/ilsvrc", 1000, False, 50_000), row("ResNet-34 A", "/data/subset", 100, False, 5_000)]
    table = {"table": 3, "protocol": PROTOCOL_TEXT[3], "rows": rows}
    lines = table_markdown(table).splitlines()
    assert lines[1] == ("The paper: the 50,000 ILSVRC 2012 val images of 1000 classes. Measured here: plain-34 on the "
                        "val images of `/data/ilsvrc` (1000 classes); ResNet-34 A on the val images of `/data/subset` "
                        "(100 classes).")
    assert lines[lines.index("Tested otherwise than the table's protocol:") + 1:] == [
        "- ResNet-34 A: 100 classes (the paper's: 1000)", "- ResNet-34 A: 5,000 val images (the paper's: 50,000)"]
    table["rows"] = table["rows"][:1]
    assert table_markdown(table).splitlines()[1] == ("The paper: the 50,000 ILSVRC 2012 val images of 1000 classes. "
                                                     "Measured here: the val images of `/data/ilsvrc` (1000 classes).")
    assert "Tested otherwise" not in table_markdown(table)


@pytest.mark.parametrize("table", [2, 3, 4])
def test_the_papers_figures_and_protocols(table, tmp_path):
    result = measure_table(table, {}, [], str(tmp_path))
    assert result["protocol"] == PROTOCOL_TEXT[table]
    assert [(r["net"], (r["paper"]["top1_err"], r["paper"]["top5_err"]), r["status"]) for r in result["rows"]] == [
        (name, errors, "not run") for name, errors in PAPER[table].items()]
    name = next(iter(PAPER[table]))
    cfg = row_config(table, name, "torchvision:IMAGENET1K_V1", [], str(tmp_path))
    if table == 4:
        assert (cfg.test.mode, list(cfg.test.dense_scales), cfg.test.dense_flip) == ("dense", [224, 256, 384, 480, 640], True)
    else:
        assert (cfg.test.mode, cfg.test.resize, cfg.input.crop) == ("10crop", 256, 224)
    assert protocol_deviations(table, cfg) == []
    assert table_markdown(result).splitlines()[:2] == [
        f"Table {table}: {PROTOCOL_TEXT[table]}, on the val images",
        "The paper: the 50,000 ILSVRC 2012 val images of 1000 classes."]


def test_the_paper_gives_the_crops_and_scales_and_the_toolkit_the_resize_and_the_flips(tmp_path):
    def deviations(table, *overrides):
        return protocol_deviations(table, row_config(table, "ResNet-50", "torchvision:IMAGENET1K_V1", list(overrides),
                                                     str(tmp_path)))
    assert deviations(3, "test.resize=288", "input.crop=256") == [
        f"test.resize=288 (the table's: 256, {TOOLKIT_CHOICE})", "input.crop=256 (the table's: 224)"]
    assert deviations(4, "test.dense_flip=false", "test.dense_scales=[224,256]") == [
        "test.dense_scales=[224, 256] (the table's: [224, 256, 384, 480, 640])",
        f"test.dense_flip=false (the table's: true, {TOOLKIT_CHOICE})"]


# --------------------------------------------------------------------------------------------- bad input


def one_line_error(call, *args):
    with pytest.raises(UserError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_row_names_and_weights_options(tiny):
    assert parse_weights_options(3, ["resnet_34-b=a.pth", "ResNet-152=b.pth"]) == {"ResNet-34 B": "a.pth",
                                                                                  "ResNet-152": "b.pth"}
    message = one_line_error(parse_weights_options, 2, ["ResNet-50=w.pth"])
    assert message == ("unknown network 'ResNet-50' for Table 2 (ResNet-50 is in Table 3, 4): choose one of plain-18, "
                       "plain-34, ResNet-18, ResNet-34 A")
    assert "choose one of plain-34, ResNet-34 A, ResNet-34 B" in one_line_error(parse_weights_options, 3, ["vgg=w"])
    assert "give NET=WEIGHTS" in one_line_error(parse_weights_options, 3, ["w.pth"])
    assert "gives ResNet-50 twice" in one_line_error(parse_weights_options, 3, ["ResNet-50=a", "resnet50=b"])


def test_weights_that_are_not_the_row_stop_before_testing(tiny, tmp_path):
    base, root, nets = tiny
    out = str(tmp_path / "out")
    message = one_line_error(measure_table, 2, {"ResNet-18": nets["plain-18"][0], "plain-18": nets["plain-18"][0]},
                             [], out)
    assert message == (f"{nets['plain-18'][0]} holds plain-18, not ResNet-18 with option A shortcuts (the row "
                       f"ResNet-18): give the weights of that network (configs/ilsvrc_cls_r18.yaml trains it)")
    assert "weights not found: nothing.pth" in one_line_error(measure_table, 3, {"ResNet-50": "nothing.pth"}, [], out)
    cifar = load_classification_config("cifar10_resnet56.yaml", ["model.backbone.depth=20"])
    path = str(tmp_path / "cifar.pth")
    torch.save({"model": build_classifier(cifar, 10).state_dict(), "meta": {"task": "classification"},
                "config": config_to_text(cifar)}, path)
    assert "is a cifar10 classifier" in one_line_error(measure_table, 2, {"ResNet-18": path}, [], out)
    # A detector's checkpoint was tested as a classifier without an fc ("set model.num_classes=0", then
    # "holds no fc"): it is named as what it is.
    detector = str(tmp_path / "detector.pth")
    torch.save({"model": {}, "meta": {"task": "detection"}, "config": ""}, detector)
    assert one_line_error(measure_table, 2, {"ResNet-18": detector}, [], out) == (
        f"{detector} is a detection checkpoint of tools/train_det.py, not a classifier: give a classifier of "
        f"tools/train_cls.py, a state dict of the network, or torchvision:NAME")
    assert not os.path.exists(out)  # nothing was tested or written


def test_unknown_name_on_the_command_line_is_one_line_and_exit_code_2(monkeypatch, capsys):
    code, _, stderr = run_tool(monkeypatch, capsys, "--table", "4", "--weights", "plain-18=w.pth")
    assert code == 2
    assert stderr == ("error: unknown network 'plain-18' for Table 4 (plain-18 is in Table 2): choose one of "
                      "ResNet-34 B, ResNet-34 C, ResNet-50, ResNet-101, ResNet-152\n")
