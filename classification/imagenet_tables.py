"""The paper's ImageNet classification tables, measured for trained classifiers beside the paper's figures.

* Table 2: plain-18 and plain-34 against ResNet-18 and ResNet-34 with option A shortcuts; top-1 error,
  10-crop testing.
* Table 3: plain-34, ResNet-34 with shortcut options A, B and C, ResNet-50, 101 and 152 (option B); top-1
  and top-5 error, 10-crop testing.
* Table 4: single models tested fully convolutionally at shorter sides 224, 256, 384, 480 and 640, the
  softmax averaged over the scales and their mirror images; top-1 and top-5 error.

All on the ImageNet val images. Each row names a network; its weights are a checkpoint of
tools/train_cls.py, tested with the config saved in it, or a state dict file or a ``torchvision:`` /
``timm:`` weights name, tested with the row's shipped config (configs/ilsvrc_cls_*.yaml). Either way the
table's test protocol is set first and the caller's overrides after it (``data.root=DIR``, or smaller test
views on the synthetic set); a row tested otherwise than the table says carries a note and a warning. The
testing itself is classification.evaluation.evaluate_weights, as ``tools/train_cls.py --eval-only`` runs it.
The markdown names the data each row was measured on beside the paper's (the 50,000 ILSVRC 2012 val images
of 1000 classes) and notes other data: a row of the synthetic set is not the paper's figure measured again.

    from classification.imagenet_tables import measure_table, table_markdown

    table = measure_table(3, {"ResNet-50": "output/ilsvrc_cls_r50/model_final.pth"}, ["data.root=/data/ilsvrc"],
                          "output/imagenet_table3")
    print(table_markdown(table))

Rows without weights show the paper's figures and "not run".
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass

from backbones.weights import resolve_weights
from resnet_engine import distributed as dist_utils
from resnet_engine.checkpoint import CheckpointError, load_checkpoint
from resnet_engine.config import config_from_text, save_config
from resnet_engine.errors import UserError
from resnet_engine.files import write_json

from .config import PAPER_NETWORK, ClassificationConfig, is_cifar, load_classification_config
from .data.loaders import prepare_data
from .data.synthetic_ilsvrc import is_synthetic_loc
from .evaluation import evaluate_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Network:
    """A network of the paper's ImageNet tables and the shipped config that trains it."""

    depth: int
    plain: bool
    shortcut: str  # of a residual net (a plain net has none)
    config: str

    def describe(self) -> str:
        return f"plain-{self.depth}" if self.plain else f"ResNet-{self.depth} with option {self.shortcut} shortcuts"


NETWORKS = {
    "plain-18": Network(18, True, "", "ilsvrc_cls_plain18.yaml"),
    "plain-34": Network(34, True, "", "ilsvrc_cls_plain34.yaml"),
    "ResNet-18": Network(18, False, "A", "ilsvrc_cls_r18.yaml"),
    "ResNet-34 A": Network(34, False, "A", "ilsvrc_cls_r34a.yaml"),
    "ResNet-34 B": Network(34, False, "B", "ilsvrc_cls_r34b.yaml"),
    "ResNet-34 C": Network(34, False, "C", "ilsvrc_cls_r34c.yaml"),
    "ResNet-50": Network(50, False, "B", "ilsvrc_cls_r50.yaml"),
    "ResNet-101": Network(101, False, "B", "ilsvrc_cls_r101.yaml"),
    "ResNet-152": Network(152, False, "B", "ilsvrc_cls_r152.yaml"),
}

# The paper's errors on the ImageNet val set in percent, (top-1, top-5), None where a table gives none:
# "Deep Residual Learning for Image Recognition", Tables 2, 3 and 4 (the rows of its own networks).
PAPER_ERRORS: dict[int, dict[str, tuple[float, float | None]]] = {
    2: {"plain-18": (27.94, None), "plain-34": (28.54, None), "ResNet-18": (27.88, None),
        "ResNet-34 A": (25.03, None)},
    3: {"plain-34": (28.54, 10.02), "ResNet-34 A": (25.03, 7.76), "ResNet-34 B": (24.52, 7.46),
        "ResNet-34 C": (24.19, 7.40), "ResNet-50": (22.85, 6.71), "ResNet-101": (21.75, 6.05),
        "ResNet-152": (21.43, 5.71)},
    4: {"ResNet-34 B": (21.84, 5.71), "ResNet-34 C": (21.53, 5.60), "ResNet-50": (20.74, 5.25),
        "ResNet-101": (19.87, 4.60), "ResNet-152": (19.38, 4.49)},
}
TABLES = tuple(PAPER_ERRORS)
PAPER_WIDTH = PAPER_NETWORK["imagenet"]["base_width"]
# The paper's data: the ILSVRC 2012 val images.
PAPER_CLASSES, PAPER_VAL_IMAGES = 1000, 50_000
WEIGHTS_NAME_PREFIXES = ("torchvision:", "timm:")

# Each table's test protocol: the config values set for every row (the caller's overrides come after them).
# 10-crop testing keeps the row's own crop and resize (input.crop is also the training crop).
PROTOCOLS = {2: {"test.mode": "10crop"}, 3: {"test.mode": "10crop"},
             4: {"test.mode": "dense", "test.dense_scales": [224, 256, 384, 480, 640], "test.dense_flip": True}}
# The values a row must be tested with to be the table's: the 10 crops are the 224-pixel corners and centre
# of the image resized to shorter side 256, and their mirror images (the paper does not give the resize: 256
# is the common choice, and the toolkit's default); every val image is tested.
PAPER_TEST = {2: {**PROTOCOLS[2], "test.resize": 256, "input.crop": 224, "test.max_images": 0},
              3: {**PROTOCOLS[3], "test.resize": 256, "input.crop": 224, "test.max_images": 0},
              4: {**PROTOCOLS[4], "test.max_images": 0}}
# Values of PAPER_TEST that the paper does not give (configs/base_ilsvrc_cls.yaml): a row tested otherwise
# differs from the toolkit's protocol, not from the paper's.
TOOLKIT_CHOICES = ("test.resize", "test.dense_flip")
ERRORS_TEXT = {2: "top-1 error (%)", 3: "top-1 / top-5 error (%)", 4: "top-1 / top-5 error (%), single model"}


# --------------------------------------------------------------------------------------------- rows


def row_name(table: int, given: str) -> str:
    """The row of ``table`` that ``given`` names, in any case, with or without spaces, hyphens and
    underscores ("resnet34a", "ResNet-34 A")."""
    wanted = _squeeze(given)
    for name in PAPER_ERRORS[table]:
        if _squeeze(name) == wanted:
            return name
    other = [t for t in TABLES if any(_squeeze(n) == wanted for n in PAPER_ERRORS[t])]
    where = f" ({given} is in Table {', '.join(map(str, other))})" if other else ""
    raise UserError(f"unknown network {given!r} for Table {table}{where}: choose one of "
                    f"{', '.join(PAPER_ERRORS[table])}")


def _squeeze(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).lower()


def parse_weights_options(table: int, options: list[str]) -> dict[str, str]:
    """``--weights NET=W`` options -> {row: W}, in the order given; each row at most once."""
    chosen: dict[str, str] = {}
    for option in options:
        given, separator, weights = option.partition("=")
        if not separator or not given.strip() or not weights.strip():
            raise UserError(f"--weights {option}: give NET=WEIGHTS, such as "
                            f"--weights ResNet-50=output/ilsvrc_cls_r50/model_final.pth")
        name = row_name(table, given.strip())
        if name in chosen:
            raise UserError(f"--weights gives {name} twice ({chosen[name]} and {weights.strip()}): keep one")
        chosen[name] = weights.strip()
    return chosen


def saved_config_text(weights: str) -> str | None:
    """The config saved in a classifier checkpoint of tools/train_cls.py; None for other weights (a state
    dict file, a torchvision:/timm: name)."""
    if not (os.path.isfile(weights) and weights.lower().endswith((".pth", ".pt"))):
        return None
    try:
        state = load_checkpoint(weights)
    except CheckpointError as error:
        if "no 'model' entry" in str(error):  # a bare state dict
            return None
        raise
    task = (state.get("meta") or {}).get("task")
    if task in OTHER_TASKS:
        raise UserError(f"{weights} is a {task} checkpoint of {OTHER_TASKS[task]}, not a classifier: give a "
                        f"classifier of tools/train_cls.py, a state dict of the network, or torchvision:NAME")
    return state.get("config") if task == "classification" else None


# The checkpoints of the other tasks' trainers, which record their task: not classifiers, though their
# backbone's tensors would partly load.
OTHER_TASKS = {"detection": "tools/train_det.py", "localization": "tools/train_loc.py"}


def row_config(table: int, name: str, weights: str, overrides: list[str], output_dir: str):
    """The config that tests ``weights`` as row ``name``: the checkpoint's own or the row's shipped one, then
    the table's protocol, then ``overrides``; its output_dir is ``output_dir``."""
    protocol = [f"{key}={_yaml(value)}" for key, value in PROTOCOLS[table].items()]
    layered = [*protocol, *overrides, f"output_dir={output_dir}"]
    text = saved_config_text(weights)
    if text is None:
        return load_classification_config(NETWORKS[name].config, layered)
    saved = config_from_text(ClassificationConfig, text)
    if is_cifar(saved):
        raise UserError(f"{weights} is a {saved.data.dataset} classifier: the ImageNet tables test ImageNet "
                        f"classifiers (tools/train_cls.py --eval-only tests CIFAR ones)")
    # Through a file, so that the overrides are checked as on any command line.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "config.yaml")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return load_classification_config(path, layered)


def _yaml(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


def check_network(cfg, name: str, weights: str) -> None:
    """The config of ``weights`` builds the row's network (its width may differ, and is shown)."""
    backbone, wanted = cfg.model.backbone, NETWORKS[name]
    held = Network(backbone.depth, bool(backbone.plain), "" if backbone.plain else backbone.shortcut, "")
    if backbone.preact or (held.depth, held.plain, held.shortcut) != (wanted.depth, wanted.plain, wanted.shortcut):
        found = ("pre-activation " if backbone.preact else "") + held.describe()
        raise UserError(f"{weights} holds {found}, not {wanted.describe()} (the row {name}): give the weights of "
                        f"that network (configs/{wanted.config} trains it)")


def protocol_deviations(table: int, cfg) -> list[str]:
    """``key=value (the table's: value)`` for each test setting of ``cfg`` that is not the table's; the
    table's values that the paper does not give say so."""
    deviations = []
    for key, value in PAPER_TEST[table].items():
        used = _plain(_select(cfg, key))
        if used != value:
            choice = ", the toolkit's choice: the paper does not give it" if key in TOOLKIT_CHOICES else ""
            deviations.append(f"{key}={_yaml(used)} (the table's: {_yaml(value)}{choice})")
    return deviations


def views_text(test: dict) -> str:
    """Test settings ({"test.mode": ..., ...}) in words, as the paper's tables give them."""
    if test["test.mode"] == "dense":
        scales = ", ".join(map(str, test["test.dense_scales"]))
        flips = "with" if test["test.dense_flip"] else "without"
        return f"fully convolutional at shorter sides {{{scales}}} {flips} flips, softmax averaged"
    return {"10crop": "10-crop testing", "1crop": "1-crop testing"}[test["test.mode"]]


PROTOCOL_TEXT = {table: f"{ERRORS_TEXT[table]}, {views_text(PAPER_TEST[table])}" for table in TABLES}


def _select(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _plain(value):
    return [int(v) for v in value] if not isinstance(value, (str, bool, int, float)) else value


# --------------------------------------------------------------------------------------------- the table


@dataclass
class PlannedRow:
    name: str
    weights: str
    cfg: object
    deviations: list[str]


def plan_rows(table: int, weights: dict[str, str], overrides: list[str], out: str) -> list[PlannedRow]:
    """Every row's config, network and protocol checked before any image is read."""
    planned = []
    for name, spec in weights.items():
        check_weights_exist(name, spec)
        cfg = row_config(table, name, spec, overrides, os.path.join(out, _slug(name)))
        check_network(cfg, name, spec)
        planned.append(PlannedRow(name, spec, cfg, protocol_deviations(table, cfg)))
    return planned


def check_weights_exist(name: str, spec: str) -> None:
    """A weights file exists, a torchvision:/timm: name is cached (or downloads): before any row is tested."""
    if spec.startswith(WEIGHTS_NAME_PREFIXES):
        resolve_weights(spec, NETWORKS[name].depth)
    elif not os.path.isfile(spec):
        raise UserError(f"weights not found: {spec} (--weights {name}=...): give a checkpoint of tools/train_cls.py, "
                        f"a state dict file, or a torchvision:NAME or timm:NAME")


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def measure_table(table: int, weights: dict[str, str], overrides: list[str], out: str) -> dict:
    """Test each row's weights with the table's protocol; returns the table (see :func:`table_markdown`)
    and, on the main process, writes out/table<N>.json and .md and each row's config and eval json under
    out/<row>/."""
    if table not in PAPER_ERRORS:
        raise UserError(f"there is no Table {table} of ImageNet classification results: choose one of "
                        f"{', '.join(map(str, TABLES))}")
    planned = {row.name: row for row in plan_rows(table, weights, list(overrides), out)}
    rows = []
    for name, (top1, top5) in PAPER_ERRORS[table].items():
        row = {"net": name, "paper": {"top1_err": top1, "top5_err": top5}, "status": "not run", "measured": None}
        if name in planned:
            row.update(measure_row(planned[name]))
        rows.append(row)
    result = {"table": table, "protocol": PROTOCOL_TEXT[table], "rows": rows}
    if dist_utils.is_main_process():
        write_json(result, os.path.join(out, f"table{table}.json"))
        with open(os.path.join(out, f"table{table}.md"), "w", encoding="utf-8") as handle:
            handle.write(table_markdown(result) + "\n")
    return result


def measure_row(row: PlannedRow) -> dict:
    """The measured part of a row: errors, images, what was tested and how."""
    for deviation in row.deviations:
        warnings.warn(f"{row.name} is not tested as the table says: {deviation}", stacklevel=2)
    if dist_utils.is_main_process():
        save_config(row.cfg, os.path.join(row.cfg.output_dir, "config.yaml"))
    logger.info("%s: testing %s", row.name, row.weights)
    metrics = evaluate_weights(row.cfg, row.weights)["cls"]
    backbone = row.cfg.model.backbone
    wnids = prepare_data(row.cfg).wnids
    measured = {"status": "measured", "weights": row.weights, "data_root": row.cfg.data.root,
                "num_classes": len(wnids), "synthetic": is_synthetic_loc(wnids),
                "measured": {key: metrics[key] for key in ("top1_err", "top5_err", "num_images")},
                "width": backbone.base_width,
                "test": {key: _plain(_select(row.cfg, key)) for key in _test_keys(row.cfg)},
                "deviations": row.deviations}
    if NETWORKS[row.name].depth >= 50:  # bottleneck units: a 1x1 and a 3x3 that the stride could be in
        measured["stride_in_1x1"] = bool(backbone.stride_in_1x1)
    return measured


def _test_keys(cfg) -> tuple[str, ...]:
    if cfg.test.mode == "dense":
        return ("test.mode", "test.dense_scales", "test.dense_flip", "test.max_images")
    return ("test.mode", "test.resize", "input.crop", "test.max_images")


def table_markdown(result: dict) -> str:
    """The table as markdown: its test views as measured, the paper's data and the measured rows', the
    paper's errors and the measured ones side by side ("not run" where no weights were given), then a
    note for each row tested otherwise than the table says and for bottleneck nets that stride elsewhere
    than the paper's."""
    table, rows = result["table"], result["rows"]
    with_top5 = table != 2
    header = ["network", "top-1 paper", "top-1 here"] + (["top-5 paper", "top-5 here"] if with_top5 else [])
    header += ["val images", "weights"]
    lines = [f"Table {table}: {ERRORS_TEXT[table]}, {tested_views(table, rows)}, on the val images",
             data_sentence(rows), "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    notes = []
    for row in rows:
        measured = row["measured"] or {}
        cells = [row["net"], _number(row["paper"]["top1_err"]), _measured(measured, "top1_err")]
        if with_top5:
            cells += [_number(row["paper"]["top5_err"]), _measured(measured, "top5_err")]
        cells += [str(measured.get("num_images", "")), f"`{row['weights']}`" if measured else ""]
        lines.append("| " + " | ".join(cells) + " |")
        notes += [f"{row['net']}: {note}" for note in row_notes(row)]
    if notes:
        lines += ["", "Tested otherwise than the table's protocol:", *[f"- {note}" for note in notes]]
    striding = [row["net"] for row in rows if row["measured"] and row.get("stride_in_1x1") is False]
    if striding:
        lines += ["", f"{', '.join(striding)}: stride 2 in the 3x3 convolution of the bottleneck units "
                      f"(model.backbone.stride_in_1x1=false, as torchvision's weights), where the paper's nets "
                      f"stride in the first 1x1."]
    return "\n".join(lines)


def tested_views(table: int, rows: list[dict]) -> str:
    """The test views of the measured rows in words (the table's when none was measured); when the rows
    were tested differently, each way names its rows."""
    by_views: dict[str, list[str]] = {}
    for row in rows:
        if row["measured"]:
            by_views.setdefault(views_text(row["test"]), []).append(row["net"])
    if len(by_views) <= 1:
        return next(iter(by_views), views_text(PAPER_TEST[table]))
    return "; ".join(f"{text} ({', '.join(names)})" for text, names in by_views.items())


def data_sentence(rows: list[dict]) -> str:
    """The paper's data and the measured rows': a row measured on another set is not the paper's figure
    measured again, whatever its errors."""
    paper = f"The paper: the {PAPER_VAL_IMAGES:,} ILSVRC 2012 val images of {PAPER_CLASSES} classes."
    by_data: dict[str, list[str]] = {}
    for row in rows:
        if row["measured"]:
            by_data.setdefault(data_text(row), []).append(row["net"])
    if not by_data:
        return paper
    if len(by_data) == 1:
        return f"{paper} Measured here: the val images of {next(iter(by_data))}."
    sets = "; ".join(f"{', '.join(names)} on the val images of {text}" for text, names in by_data.items())
    return f"{paper} Measured here: {sets}."


def data_text(row: dict) -> str:
    synthetic = ", the toolkit's synthetic set" if row["synthetic"] else ""
    return f"`{row['data_root']}` ({row['num_classes']} classes{synthetic})"


def row_notes(row: dict) -> list[str]:
    """How a measured row differs from the paper's: its width, its test settings, its data."""
    if not row["measured"]:
        return []
    notes = [f"width {row['width']} (the paper's: {PAPER_WIDTH})"] if row["width"] != PAPER_WIDTH else []
    notes += row["deviations"]
    if row["synthetic"]:
        notes.append("the toolkit's synthetic set, not ImageNet")
    if row["num_classes"] != PAPER_CLASSES:
        notes.append(f"{row['num_classes']} classes (the paper's: {PAPER_CLASSES})")
    if row["measured"]["num_images"] != PAPER_VAL_IMAGES:
        notes.append(f"{row['measured']['num_images']:,} val images (the paper's: {PAPER_VAL_IMAGES:,})")
    return notes


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _measured(measured: dict, key: str) -> str:
    return f"{measured[key]:.2f}" if measured else "not run"
