"""The degradation experiment of the paper (Fig. 1, Fig. 6 and Table 6): plain and residual CIFAR nets of
several depths, trained with one recipe and one seed, their training and test errors side by side.

    from classification.degradation import run_degradation

    report = run_degradation("configs/cifar_degradation.yaml", [], depths=[20, 56], iters=None, out="output/deg")
    report.runs[0].train_error, report.json_path, report.figure_path, report.table_path

Each net trains through :func:`classification.training.train_classifier` into ``out/<net>/`` (``plain-20``,
``ResNet-20``, ...), so a run can be resumed and a finished one is reused. The recipe is the config's, with
its schedule scaled to ``iters``: the learning-rate steps, the evaluation period and the checkpoint period
keep their fractions of the config's solver.max_iter (base_cifar.yaml's steps at 32k and 48k of 64k become
50% and 75% of ``iters``); a linear warm-up (solver.warmup_iters) keeps its length. Nets of 110 layers and
more warm up as the paper's ResNet-110 does (lr 0.01 until the training error is below 80%) unless the
config sets a warm-up of its own.

The training error of a net is the mean top-1 error of its training batches over the last
:data:`TRAIN_ERROR_WINDOW` iterations: the trainer logs the mean of every :data:`LOG_PERIOD` iterations,
and the last five records are averaged, weighted by the iterations each covers. The test error is the
final top-1 error on the test split.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass

from backbones.cifar import BOTTLENECK_DEPTHS
from resnet_engine.checkpoint import FINAL_NAME
from resnet_engine.config import config_to_text
from resnet_engine.errors import UserError
from resnet_engine.plot_logs import read_metrics

from .classifier import build_classifier, network_name
from .config import CIFAR_CLASSES, load_classification_config
from .data.cifar import find_cifar
from .training import train_classifier

logger = logging.getLogger(__name__)

LOG_PERIOD = 10  # iterations per logged training-error record
TRAIN_ERROR_WINDOW = 50  # iterations the reported training error averages
# The tool sets these keys itself (from --depths, --iters and --out): an override of them would be lost.
KEYS_OF_THE_TOOL = {"model.backbone.depth": "from --depths", "model.backbone.plain": "both ways, for each of --depths",
                    "solver.max_iter": "from --iters", "solver.log_period": "to 10, for the last-50-iterations error",
                    "output_dir": "to a folder of --out per net"}
# Table 6: the CIFAR-10 test error (%) of the paper's ResNets; its plain nets appear only as curves (Fig. 6).
PAPER_RESNET_TEST_ERROR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
# What the paper says of a figure beside it: ResNet-110's is the best of 5 runs.
PAPER_RESNET_NOTES = {110: "best of 5; mean 6.61 ± 0.16"}
# Table 6's nets: option A shortcuts, 16 filters in the first stage, BatchNorm, the usual initialization.
TABLE_6_ARCHITECTURE = {"plain": False, "preact": False, "shortcut": "A", "base_width": 16, "norm": "bn",
                        "zero_init_residual": False}
CIFAR_TRAINING_IMAGES = 50_000
# The paper's warm-up for ResNet-110 and deeper: lr 0.01 until the training error falls below 80%.
DEEP_WARMUP_DEPTH = 110
DEEP_WARMUP = ["solver.warmup_until.metric=train_error", "solver.warmup_until.below=80",
               "solver.warmup_until.lr_factor=0.1"]


class DegradationError(UserError):
    """A bad argument of the degradation experiment (a depth, the iterations, an override)."""


@dataclass
class DegradationRun:
    """One trained net, as degradation.json lists it (errors in percent)."""

    net: str
    depth: int
    residual: bool
    params: int
    iters: int
    train_error: float
    test_error: float
    # Whether the paper's Table 6 reports this net: a ResNet of TABLE_6_ARCHITECTURE on the CIFAR-10 files
    # (its figure beside another dataset, a synthetic set or a variant would read as a like-for-like one).
    in_table_6: bool = False
    # The metric warm-up of deep nets (lr x0.1 until the training error is below 80%): the first iteration
    # at the schedule's lr, -1 when the whole run trained in it; None without a warm-up.
    full_lr_from_iteration: int | None = None


@dataclass
class DegradationReport:
    runs: list[DegradationRun]
    schedule: str  # how the config's schedule was scaled, in words
    dataset: str
    json_path: str
    figure_path: str
    table_path: str


# --------------------------------------------------------------------------------------------- arguments


def check_depths(depths) -> list[int]:
    """The depths of the experiment: 6n+2 nets of basic units (8, 14, 20, 32, 44, 56, 110, 1202, ...)."""
    if not depths:
        raise DegradationError("--depths is empty: give depths of the form 6n+2, such as --depths 20 56")
    for depth in depths:
        if depth < 8 or (depth - 2) % 6 or depth in BOTTLENECK_DEPTHS:
            raise DegradationError(
                f"--depths {depth}: the plain and residual CIFAR nets have 6n+2 layers of basic units with n >= 1 "
                f"(8, 14, 20, 32, 44, 56, 110, 1202; 164 and 1001 name bottleneck nets): give such depths")
    return sorted(set(depths))


def check_iters(iters: int) -> int:
    if iters < TRAIN_ERROR_WINDOW or iters % LOG_PERIOD:
        raise DegradationError(
            f"--iters {iters}: give a multiple of {LOG_PERIOD} of at least {TRAIN_ERROR_WINDOW} (the training error "
            f"is the mean over the last {TRAIN_ERROR_WINDOW} iterations, logged every {LOG_PERIOD})")
    return iters


def check_overrides(overrides) -> None:
    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if key in KEYS_OF_THE_TOOL:
            raise DegradationError(f"override '{text}': the degradation experiment sets {key} itself "
                                   f"({KEYS_OF_THE_TOOL[key]}): remove the override")


# --------------------------------------------------------------------------------------------- the recipe


def scaled(value: int, iters: int, max_iter: int) -> int:
    """``value`` (an iteration count of a max_iter-long schedule) at the same fraction of ``iters``."""
    return max(1, round(value * iters / max_iter))


def schedule_overrides(base, iters: int) -> tuple[list[str], str]:
    """The overrides that scale ``base``'s schedule to ``iters`` iterations, and a sentence saying how."""
    solver, max_iter = base.solver, base.solver.max_iter
    steps = [scaled(step, iters, max_iter) for step in solver.steps if step < max_iter]
    # The linear warm-up keeps its length (what it guards against is the first iterations' instability):
    # a run so short that it would cover a step never trains at the lr the table names.
    warmup_iters = solver.warmup_iters
    if steps and warmup_iters >= steps[0]:
        raise DegradationError(f"--iters {iters}: the linear warm-up over the first {warmup_iters} iterations would "
                               f"cover the first lr step, scaled to iteration {steps[0]}: give more iterations, or a "
                               f"shorter warm-up (solver.warmup_iters)")
    periods = {"test.eval_period": base.test.eval_period, "solver.checkpoint_period": solver.checkpoint_period}
    overrides = [f"solver.max_iter={iters}", f"solver.steps=[{', '.join(map(str, steps))}]",
                 f"solver.log_period={LOG_PERIOD}"]
    overrides += [f"{key}={scaled(value, iters, max_iter) if value else 0}" for key, value in periods.items()]
    percent = ", ".join(f"{100 * step / max_iter:g}%" for step in solver.steps if step < max_iter) or "none"
    warmup = f" after a linear warm-up over the first {warmup_iters} iterations" if warmup_iters else ""
    sentence = (f"{iters} iterations of batch {solver.ims_per_batch}, lr {solver.base_lr:g}{warmup}, divided by "
                f"{1 / solver.gamma:g} at iterations {', '.join(map(str, steps)) or 'none'} (the config's steps "
                f"at {percent} of its {max_iter} iterations, kept at the same fractions)")
    return overrides, sentence


def net_overrides(depth: int, residual: bool, base) -> list[str]:
    overrides = [f"model.backbone.depth={depth}", f"model.backbone.plain={not residual}"]
    if gets_deep_warmup(depth, base):
        overrides += DEEP_WARMUP
    return overrides


def gets_deep_warmup(depth: int, base) -> bool:
    """The paper's warm-up of ResNet-110 and deeper, unless the config has a warm-up of its own."""
    return depth >= DEEP_WARMUP_DEPTH and not (base.solver.warmup_until.metric or base.solver.warmup_iters)


def warmup_sentence(depths: list[int], base) -> str:
    """What the schedule sentence leaves out: the metric warm-up that some or all of the nets train with."""
    until = base.solver.warmup_until
    if until.metric:
        return (f"; every net trains at lr x{until.lr_factor:g} until its {until.metric} averages below "
                f"{until.below:g} (solver.warmup_until)")
    if any(gets_deep_warmup(depth, base) for depth in depths):
        return (f"; nets of {DEEP_WARMUP_DEPTH} layers and more train at lr x0.1 until their training error is below "
                f"80% (the paper's warm-up of ResNet-110)")
    return ""


def count_parameters(cfg) -> int:
    model = build_classifier(cfg, CIFAR_CLASSES[cfg.data.dataset], load_backbone_weights=False)
    return sum(parameter.numel() for parameter in model.parameters())


# --------------------------------------------------------------------------------------------- the runs


def last_window_error(output_dir: str, iters: int) -> float:
    """The mean training error over the last TRAIN_ERROR_WINDOW iterations, from the run's metrics.jsonl:
    each record averages the iterations since the previous one, so records are weighted by those counts."""
    train, _ = read_metrics(output_dir)
    records = sorted((r["iteration"], r["train_error"]) for r in train if "train_error" in r and r["iteration"] <= iters)
    start = iters - TRAIN_ERROR_WINDOW
    weighted, covered, previous = 0.0, 0, 0
    for iteration, error in records:
        if iteration > start:
            span = iteration - max(previous, start)
            weighted, covered = weighted + span * error, covered + span
        previous = iteration
    if covered != TRAIN_ERROR_WINDOW or not records or records[-1][0] != iters:
        raise DegradationError(f"{output_dir}/metrics.jsonl does not log the training error of the last "
                               f"{TRAIN_ERROR_WINDOW} iterations up to {iters}: train the net again (--overwrite)")
    return weighted / covered


def is_finished(cfg) -> bool:
    """A finished run of exactly this config in its output_dir (reused rather than trained again)."""
    folder = cfg.output_dir
    files = [os.path.join(folder, name) for name in ("config.yaml", "metrics.json", FINAL_NAME)]
    if not all(os.path.isfile(path) for path in files):
        return False
    with open(files[0], encoding="utf-8") as handle:
        return handle.read() == config_to_text(cfg)


def final_test_error(cfg) -> float:
    with open(os.path.join(cfg.output_dir, "metrics.json"), encoding="utf-8") as handle:
        metrics = json.load(handle)
    return float(metrics["test"]["top1_err"])


def train_one(cfg, resume: bool, overwrite: bool) -> DegradationRun:
    name = network_name(cfg)
    if resume and is_finished(cfg):
        logger.info("%s: reusing the finished run in %s", name, cfg.output_dir)
    else:
        train_classifier(cfg, resume=resume, overwrite=overwrite)
    backbone, iters = cfg.model.backbone, cfg.solver.max_iter
    return DegradationRun(name, backbone.depth, not backbone.plain, count_parameters(cfg), iters,
                          round(last_window_error(cfg.output_dir, iters), 4), final_test_error(cfg),
                          in_table_6(cfg), full_lr_from_iteration(cfg))


def in_table_6(cfg) -> bool:
    """Whether Table 6 reports this net: its architecture on the CIFAR-10 files (not a synthetic set)."""
    backbone = cfg.model.backbone
    same_net = all(backbone.get(key) == value for key, value in TABLE_6_ARCHITECTURE.items())
    return same_net and cfg.data.dataset == "cifar10" and not is_synthetic(cfg)


def is_synthetic(cfg) -> bool:
    """The toolkit's generated CIFAR set: the embedded default (no data.root), or a folder with its settings file."""
    if not cfg.data.root:
        return True
    return find_cifar(cfg.data.root, CIFAR_CLASSES[cfg.data.dataset]).generated


def full_lr_from_iteration(cfg) -> int | None:
    """From the run's metrics.json: where its metric warm-up ended (-1: never), None without one."""
    with open(os.path.join(cfg.output_dir, "metrics.json"), encoding="utf-8") as handle:
        warmup = json.load(handle).get("metric_warmup")
    if warmup is None:
        return -1 if cfg.solver.warmup_until.metric else None  # a metrics.json written before it was recorded
    return -1 if warmup["full_lr_from_iteration"] is None else int(warmup["full_lr_from_iteration"])


def run_degradation(cfg_path: str, overrides, depths, iters: int | None, out: str, resume: bool = False,
                    overwrite: bool = False) -> DegradationReport:
    """Train a plain and a residual net of each depth with ``cfg_path``'s recipe scaled to ``iters``
    (None: the config's own max_iter), then write out/degradation.json, .png and .md."""
    import matplotlib  # noqa: F401 - the figure comes after the training: a missing package stops the run now

    overrides = list(overrides)
    check_overrides(overrides)
    depths = check_depths(depths)
    # An override of the dataset is checked before the config loads, whose CIFAR-only keys (the default's
    # data.train_split) it would otherwise report instead.
    datasets = [text.split("=", 1)[1].strip() for text in overrides if text.split("=", 1)[0].strip() == "data.dataset"]
    dataset = datasets[-1] if datasets else load_classification_config(cfg_path, overrides).data.dataset
    if dataset not in CIFAR_CLASSES:
        raise DegradationError(f"data.dataset={dataset} ({cfg_path} and the overrides): the degradation "
                               f"experiment trains CIFAR nets: give a CIFAR config, such as configs/cifar_degradation.yaml")
    check_report_kept(out, depths, overwrite)
    base = load_classification_config(cfg_path, overrides)
    iters = check_iters(base.solver.max_iter if iters is None else iters)
    schedule, sentence = schedule_overrides(base, iters)
    sentence += warmup_sentence(depths, base)
    logger.info("degradation experiment, depths %s: %s", ", ".join(map(str, depths)), sentence)
    runs = []
    for depth in depths:
        for residual in (False, True):
            cfg = load_classification_config(cfg_path, [*overrides, *schedule, *net_overrides(depth, residual, base),
                                                         f"output_dir={run_folder(out, depth, residual)}"])
            runs.append(train_one(cfg, resume, overwrite))
    dataset = describe_dataset(base)
    return write_report(runs, sentence, dataset, out)


def check_report_kept(out: str, depths: list[int], overwrite: bool) -> None:
    """The report of --out is rewritten with this run's nets alone: one that lists others is kept unless
    --overwrite (the nets' folders stay either way)."""
    path = os.path.join(out, "degradation.json")
    if overwrite or not os.path.isfile(path):
        return
    try:
        with open(path, encoding="utf-8") as handle:
            listed = sorted({int(run["depth"]) for run in json.load(handle)["runs"]})
    except (OSError, ValueError, KeyError, TypeError):
        return  # not a report of this tool: rewritten
    others = [depth for depth in listed if depth not in depths]
    if others:
        raise DegradationError(f"{path} reports depths {', '.join(map(str, listed))}, and this run trains "
                               f"{', '.join(map(str, depths))}: its report would lose depth {others[0]}; give all of "
                               f"them (--depths {' '.join(map(str, sorted(set(listed) | set(depths))))} --resume "
                               f"reuses the finished nets), another --out, or --overwrite")


def run_folder(out: str, depth: int, residual: bool) -> str:
    return os.path.join(out, f"{'ResNet' if residual else 'plain'}-{depth}")


def describe_dataset(cfg) -> str:
    """The data in words: which set, and how many of its training images the nets train on."""
    name = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100"}[cfg.data.dataset]
    if not cfg.data.root:
        return "the embedded synthetic CIFAR-10"
    if is_synthetic(cfg):
        return f"a synthetic set in the {name} format in {cfg.data.root}"
    held_out = (cfg.data.val_images or CIFAR_TRAINING_IMAGES // 10) if cfg.data.train_split == "train" else 0
    if not held_out:
        return f"{name} in {cfg.data.root}"
    return (f"{name} in {cfg.data.root}, trained on {CIFAR_TRAINING_IMAGES - held_out:,} of its "
            f"{CIFAR_TRAINING_IMAGES:,} training images (data.train_split=train; Table 6's nets train on all)")


# --------------------------------------------------------------------------------------------- outputs


def write_report(runs: list[DegradationRun], schedule: str, dataset: str, out: str) -> DegradationReport:
    os.makedirs(out, exist_ok=True)
    report = DegradationReport(runs, schedule, dataset, os.path.join(out, "degradation.json"),
                               os.path.join(out, "degradation.png"), os.path.join(out, "degradation.md"))
    write_atomically(report.json_path, json.dumps({"runs": [asdict(run) for run in runs]}, indent=1) + "\n")
    write_atomically(report.table_path, degradation_table(runs, schedule, dataset))
    plot_degradation(runs, out, report.figure_path)
    return report


def write_atomically(path: str, text: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def degradation_table(runs: list[DegradationRun], schedule: str, dataset: str) -> str:
    """The runs in the shape of the paper's Table 6, with its test error where it reports one."""
    paper_column = ("The paper's column is its CIFAR-10 test error (Table 6, full schedule); it reports its plain nets "
                    "only as curves (Fig. 6)." if any(run.in_table_6 for run in runs) else
                    "The paper's column is empty: Table 6 reports CIFAR-10 ResNets of option A, width 16 and "
                    "BatchNorm, trained on the official files, and none of these runs is one.")
    lines = [f"Plain and residual nets on {dataset}: {schedule}; one seed. Training error: the mean over the "
             f"last {TRAIN_ERROR_WINDOW} iterations; test error: the test split at the end. {paper_column}",
             "",
             "| network | layers | parameters | training error (%) | test error (%) | paper's test error (%) |",
             "|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run.net} | {run.depth} | {run.params / 1e6:.2f}M ({run.params:,}) | {run.train_error:.2f} "
                     f"| {run.test_error:.2f} | {paper_figure(run)} |")
    notes = [warmup_note(run) for run in runs if run.full_lr_from_iteration is not None]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def paper_figure(run: DegradationRun) -> str:
    paper = PAPER_RESNET_TEST_ERROR.get(run.depth) if run.in_table_6 else None
    if paper is None:
        return "-"
    note = PAPER_RESNET_NOTES.get(run.depth)
    return f"{paper:.2f} ({note})" if note else f"{paper:.2f}"


def warmup_note(run: DegradationRun) -> str:
    if run.full_lr_from_iteration == -1:
        return (f"- {run.net}: never left the warm-up: the whole run trained below the learning rate the schedule "
                f"names.")
    return f"- {run.net}: left the warm-up at iteration {run.full_lr_from_iteration} of {run.iters}."


def error_curves(output_dir: str) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(training error records, test error evaluations) of a run, as (iteration, percent) pairs."""
    train, evals = read_metrics(output_dir)
    training = [(r["iteration"], r["train_error"]) for r in train if "train_error" in r]
    testing = [(r["iteration"], r["test"]["top1_err"]) for r in evals if "top1_err" in r.get("test", {})]
    return training, testing


def plot_degradation(runs: list[DegradationRun], out: str, path: str) -> None:
    """Fig. 6 of the paper: plain nets on the left, residual nets on the right; training error thin, test
    error bold, one colour per depth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depths = sorted({run.depth for run in runs})
    colours = dict(zip(depths, plt.cm.viridis_r([0.25 + 0.65 * i / max(len(depths) - 1, 1)
                                                  for i in range(len(depths))])))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for axis, residual in zip(axes, (False, True)):
        for run in (r for r in runs if r.residual == residual):
            training, testing = error_curves(run_folder(out, run.depth, run.residual))
            colour = colours[run.depth]
            if training:
                axis.plot(*zip(*training), color=colour, linewidth=0.8, alpha=0.8)
            if testing:
                axis.plot(*zip(*testing), color=colour, linewidth=2.5, label=f"{run.net}")
        axis.set(title="residual nets" if residual else "plain nets", xlabel="iteration")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small", title="bold: test, thin: training", title_fontsize="small")
    axes[0].set_ylabel("error (%)")
    axes[0].set_ylim(bottom=0)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
