"""Speed against torchvision's Faster R-CNN on the same weights, side by side in one process.

    python benchmarks/bench_det.py                 # inference at 800/1333 and 600/1000, training steps
    python benchmarks/bench_det.py --only infer    # or: train
    python benchmarks/bench_det.py --device cuda --amp bf16   # on a GPU, under bf16 autocast

A torchvision fasterrcnn_resnet50_fpn (FrozenBatchNorm2d, as it is built for trained weights) gets
random weights with measured BatchNorm statistics; its state dict is converted with
tools/convert_weights.py's code and loaded into configs/tv_fasterrcnn_r50_fpn.yaml. The two models
run interleaved on the same images; each figure is the median of several runs. The ratio (this
toolkit's speed / torchvision's) is the median of the per-run ratios, each run of torchvision
paired with the run of ours next to it, so that the machine's drift between runs (other jobs on a
shared machine) cancels; the ratio of the medians is kept in the results file too. Our images are resized before the clock starts (the data loader's
workers do it in a real run); torchvision resizes inside its model. Results go to
benchmarks/results/det_<device>_<amp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def torchvision_detector(min_size: int, max_size: int, state: dict | None = None):
    """torchvision's R50-FPN as built for trained weights (FrozenBatchNorm2d), with the calibrated
    reference's weights, or with ``state`` when given."""
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    if state is None:
        from tests.detection.tv_reference import calibrated_torchvision_detector

        state = calibrated_torchvision_detector(min_size, max_size).state_dict()
    backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d,
                                   trainable_layers=3)
    model = torchvision.models.detection.FasterRCNN(backbone, num_classes=91, min_size=min_size, max_size=max_size)
    model.load_state_dict(state, strict=False)  # FrozenBatchNorm2d has no num_batches_tracked
    return model.eval()


def our_detector(tv_model, min_size: int, max_size: int, fast: bool):
    from detection.convert import convert_torchvision_detector

    state, _ = convert_torchvision_detector(tv_model.state_dict())
    return our_detector_from_state(state, min_size, max_size, fast)


def our_detector_from_state(state: dict, min_size: int, max_size: int, fast: bool):
    """configs/tv_fasterrcnn_r50_fpn.yaml with converted weights ``state``, as load_fast_detector
    builds it; returns (model, cfg)."""
    from detection.config import load_detection_config
    from detection.modeling.build import build_model
    from detection.modeling.speed import optimize_for_inference

    cfg = load_detection_config(os.path.join(ROOT, "configs", "tv_fasterrcnn_r50_fpn.yaml"),
                                [f"input.min_size_test={min_size}", f"input.max_size_test={max_size}"])
    model = build_model(cfg, 90, backbone_weights=False)
    model.load_state_dict(state)
    model.eval()
    return (optimize_for_inference(model) if fast else model), cfg


def images(height: int, width: int, count: int = 3) -> list[torch.Tensor]:
    from tests.detection.tv_reference import shapes_image

    return [torch.from_numpy(shapes_image(200 + i, height, width)).permute(2, 0, 1).contiguous() for i in range(count)]


DEVICE = torch.device("cpu")
AMP_DTYPE: torch.dtype | None = None


def autocast():
    """bf16 autocast for both models when --amp bf16, else nothing."""
    if AMP_DTYPE is None:
        return contextlib.nullcontext()
    return torch.autocast(DEVICE.type, dtype=AMP_DTYPE)


def synchronize() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(function, repeats: int, amp: bool = True) -> float:
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        with autocast() if amp else contextlib.nullcontext():
            function()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


PROFILE = False
TRAIN_OVERRIDES: list[str] = []  # config overrides of our training rows (--train-opts)


def profile_steps(name: str, step, steps: int = 3) -> None:
    """torch.profiler over a few steps: the ops by self CPU time (host overhead) and by device time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            with autocast():
                step()
        synchronize()
    averages = prof.key_averages()
    tables = [averages.table(sort_by="self_cpu_time_total", row_limit=30)]
    if DEVICE.type == "cuda":
        tables.append(averages.table(sort_by="self_device_time_total", row_limit=30))
    path = os.path.join(ROOT, "benchmarks", "results", f"profile_{name}_{DEVICE.type}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(tables))
    print(f"profile written to {path}", flush=True)


def paired_ratio(reference_times: list[float], our_times: list[float]) -> float:
    """Median over runs of (reference time / our time), each pair measured back to back."""
    return statistics.median(r / o for r, o in zip(reference_times, our_times))


def precision() -> str:
    return "fp32" if AMP_DTYPE is None else "bf16 autocast"


@torch.inference_mode()
def bench_inference(min_size: int, max_size: int, size: tuple[int, int], repeats: int) -> dict:
    from detection.data.transforms import EvalTransform

    tv_model = torchvision_detector(min_size, max_size)
    ours, _ = our_detector(tv_model, min_size, max_size, fast=True)
    tv_model, ours = tv_model.to(DEVICE), ours.to(DEVICE)
    batch = images(*size)
    resize = EvalTransform(min_size, max_size)
    resized = [torch.from_numpy(resize(img.permute(1, 2, 0).numpy())).permute(2, 0, 1).contiguous().to(DEVICE)
               for img in batch]
    batch = [img.to(DEVICE) for img in batch]

    def run_tv():
        for img in batch:
            tv_model([img.float() / 255])

    def run_ours():
        for img, small in zip(batch, resized):
            ours([{"image": small, "height": img.shape[1], "width": img.shape[2]}])

    for _ in range(2 if DEVICE.type == "cuda" else 1):  # warm-up (cuDNN picks its algorithms on CUDA)
        timed(run_tv, 1), timed(run_ours, 1)
    tv_times, our_times, tv_fp32_times = [], [], []
    for _ in range(repeats):  # interleaved, so that both see the same machine state
        tv_times.append(timed(run_tv, 1) / len(batch))
        our_times.append(timed(run_ours, 1) / len(batch))
        if AMP_DTYPE is not None:  # torchvision as users run it by default, for the bf16 speed-up
            tv_fp32_times.append(timed(run_tv, 1, amp=False) / len(batch))
    tv_s, our_s = statistics.median(tv_times), statistics.median(our_times)
    row = {"setting": f"inference {min_size}/{max_size}, image {size[0]}x{size[1]}, batch 1, {precision()}",
           "torchvision_img_s": round(1 / tv_s, 3), "ours_img_s": round(1 / our_s, 3),
           "ratio": round(paired_ratio(tv_times, our_times), 2), "ratio_of_medians": round(tv_s / our_s, 2),
           "run_ratios": [round(t / o, 2) for t, o in zip(tv_times, our_times)]}
    if tv_fp32_times:
        tv_fp32_s = statistics.median(tv_fp32_times)
        row["torchvision_fp32_img_s"] = round(1 / tv_fp32_s, 3)
        row["ratio_vs_torchvision_fp32"] = round(paired_ratio(tv_fp32_times, our_times), 2)
    return row


def status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak_rss() -> float:
    """Reset the kernel's resident high-water mark (Linux); returns the resident MB now. Imports of
    the CUDA build map large libraries briefly, which would otherwise be the peak of both models."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
        handle.write("5")
    return status_mb("VmRSS")


def peak_memory_child(which: str, min_size: int, max_size: int, weights: str) -> None:
    """Run in a fresh process: build one model from saved weights, detect on the images, print the
    peak memory (CPU: the process's peak resident set above what the imports took; CUDA: allocated
    by PyTorch)."""
    from detection.data.transforms import EvalTransform

    imported = reset_peak_rss()
    state = torch.load(weights, weights_only=True)
    if which == "torchvision":
        model = torchvision_detector(min_size, max_size, state).to(DEVICE)
    else:
        model = our_detector_from_state(state, min_size, max_size, fast=True)[0].to(DEVICE)
    del state
    resize = EvalTransform(min_size, max_size)
    with torch.inference_mode():
        for img in images(600, 800):
            if which == "torchvision":
                model([img.to(DEVICE).float() / 255])
            else:
                small = torch.from_numpy(resize(img.permute(1, 2, 0).numpy())).permute(2, 0, 1).contiguous()
                model([{"image": small.to(DEVICE), "height": img.shape[1], "width": img.shape[2]}])
    if DEVICE.type == "cuda":
        peak = torch.cuda.max_memory_allocated(DEVICE) / 2**20
    else:
        peak = status_mb("VmHWM") - imported
    print(json.dumps({"peak_mb": round(peak)}))


def peak_memory_run(which: str, weights: str, min_size: int, max_size: int) -> float:
    """peak_memory_child in a fresh process; its peak in MB."""
    import subprocess

    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--memory-child", which, weights,
                          "--device", DEVICE.type, "--size", str(min_size), str(max_size)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def bench_memory(min_size: int, max_size: int, repeats: int) -> dict:
    """Peak memory of inference, each model in fresh processes (median of ``repeats``, alternating)
    that load their weights file as the tools do: torchvision's state dict, and the same weights
    converted to ours."""
    import tempfile

    from detection.convert import convert_torchvision_detector

    with tempfile.TemporaryDirectory() as folder:
        tv_state = torchvision_detector(min_size, max_size).state_dict()
        files = {"torchvision": os.path.join(folder, "tv.pth"), "ours": os.path.join(folder, "ours.pth")}
        torch.save(tv_state, files["torchvision"])
        torch.save(convert_torchvision_detector(tv_state)[0], files["ours"])
        runs = {which: [] for which in files}
        for _ in range(repeats):  # the peak resident set varies by tens of MB between processes
            for which, weights in files.items():
                runs[which].append(peak_memory_run(which, weights, min_size, max_size))
    peaks = {which: round(statistics.median(values)) for which, values in runs.items()}
    return {"setting": f"peak memory, inference {min_size}/{max_size}, 3 images, {DEVICE.type}",
            "torchvision_mb": peaks["torchvision"], "ours_mb": peaks["ours"],
            "ratio": round(peaks["torchvision"] / peaks["ours"], 2), "runs_mb": runs}


def bench_training(depth: int, size: int, batch_size: int, repeats: int) -> dict:
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from backbones.speed import apply_speed_switches
    from detection.config import load_detection_config
    from detection.modeling.build import build_model

    torch.manual_seed(0)
    # The same network on both sides: BatchNorm trained (a from-scratch recipe), RoIAlign with 2 samples.
    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d)
    light = {"rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300, "box_batch_size_per_image": 128,
             "min_size": size, "max_size": size * 2}
    tv_model = torchvision.models.detection.FasterRCNN(backbone, num_classes=6, **light)
    from torchvision.models.detection.faster_rcnn import TwoMLPHead

    tv_model.roi_heads.box_head = TwoMLPHead(256 * 7 * 7, 256)
    tv_model.roi_heads.box_predictor = torchvision.models.detection.faster_rcnn.FastRCNNPredictor(256, 6)
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), [
        f"model.backbone.depth={depth}", "model.backbone.base_width=64", "model.fpn.out_channels=256",
        "model.roi_head.sampling_ratio=2",
        "model.anchors.sizes=[[32],[64],[128],[256],[512]]", f"input.min_size_train=[{size}]",
        f"input.max_size_train={size * 2}", *TRAIN_OVERRIDES])
    ours = build_model(cfg, 5, backbone_weights=False).train().to(DEVICE)
    apply_speed_switches(ours, cfg.solver)
    tv_model.train().to(DEVICE)
    batch = [img.to(DEVICE) for img in images(size, int(size * 4 / 3), batch_size)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 150.0], [200.0, 100.0, 300.0, 220.0]], device=DEVICE),
                "labels": torch.tensor([1, 3], device=DEVICE)} for _ in batch]
    tv_optimizer = torch.optim.SGD(tv_model.parameters(), lr=1e-4, momentum=0.9)
    our_optimizer = torch.optim.SGD(ours.parameters(), lr=1e-4, momentum=0.9)

    def step_tv():
        losses = tv_model([img.float() / 255 for img in batch], targets)
        tv_optimizer.zero_grad()
        sum(losses.values()).backward()
        tv_optimizer.step()

    def step_ours():
        losses = ours([{"image": img, **t} for img, t in zip(batch, targets)])
        our_optimizer.zero_grad()
        sum(losses.values()).backward()
        our_optimizer.step()

    for _ in range(3 if DEVICE.type == "cuda" else 1):
        timed(step_tv, 1), timed(step_ours, 1)
    tv_times, our_times = [], []
    for _ in range(repeats):
        tv_times.append(timed(step_tv, 1))
        our_times.append(timed(step_ours, 1))
    tv_s, our_s = statistics.median(tv_times), statistics.median(our_times)
    if PROFILE:
        profile_steps(f"train_r{depth}", step_ours)
    return {"setting": f"training R{depth}-FPN, light heads, batch {batch_size}, {size} px, {precision()}",
            "torchvision_s_it": round(tv_s, 3), "ours_s_it": round(our_s, 3),
            "ratio": round(paired_ratio(tv_times, our_times), 2), "ratio_of_medians": round(tv_s / our_s, 2),
            "run_ratios": [round(t / o, 2) for t, o in zip(tv_times, our_times)]}


def merged_rows(path: str, rows: list[dict]) -> list[dict]:
    """The rows of an earlier results file with this run's rows replacing those of the same setting
    (so that ``--only train`` keeps the inference rows of an earlier run)."""
    try:
        with open(path, encoding="utf-8") as handle:
            earlier = json.load(handle).get("rows", [])
    except (OSError, ValueError):
        earlier = []
    settings = {row["setting"] for row in rows}
    return [row for row in earlier if row.get("setting") not in settings] + rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["infer", "train", "memory"])
    parser.add_argument("--memory-child", nargs=2, metavar=("MODEL", "WEIGHTS"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, nargs=2, default=[800, 1333], help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast for both models")
    parser.add_argument("--train-batch", type=int, default=0, help="images per training step (default: 2 for "
                        "R50 and 4 for R18 on the CPU, 8 and 16 on CUDA)")
    parser.add_argument("--train-opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for our side of the training rows, e.g. solver.channels_last=true")
    parser.add_argument("--profile", action="store_true", help="also write torch.profiler tables of our "
                        "training steps to benchmarks/results/profile_*.txt")
    args = parser.parse_args()
    global DEVICE, AMP_DTYPE, PROFILE, TRAIN_OVERRIDES
    PROFILE, TRAIN_OVERRIDES = args.profile, args.train_opts
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    DEVICE = torch.device(args.device)
    AMP_DTYPE = torch.bfloat16 if args.amp == "bf16" else None
    cuda = DEVICE.type == "cuda"
    if not cuda:
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    if args.memory_child:
        peak_memory_child(args.memory_child[0], *args.size, args.memory_child[1])
        return
    rows = []
    if args.only in (None, "infer"):
        rows.append(bench_inference(800, 1333, (600, 800), args.repeats))
        rows.append(bench_inference(600, 1000, (600, 800), args.repeats))
    if args.only in (None, "memory"):
        rows.append(bench_memory(800, 1333, args.repeats))
    if args.only in (None, "train"):
        scale = 4 if cuda else 1
        rows.append(bench_training(50, 512, args.train_batch or 2 * scale, args.repeats))
        rows.append(bench_training(18, 512, args.train_batch or 4 * scale, args.repeats))
    machine = (torch.cuda.get_device_name(DEVICE) if cuda
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    path = os.path.join(ROOT, "benchmarks", "results", f"det_{args.device}_{args.amp}.json")
    result = {"rows": merged_rows(path, rows), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": machine, "device": args.device, "amp": args.amp}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print("| setting | torchvision | this toolkit | ratio |\n|---|---|---|---|")
    for row in rows:
        if "ours_mb" in row:
            print(f"| {row['setting']} | {row['torchvision_mb']} MB | {row['ours_mb']} MB | {row['ratio']}x less |")
        elif "ours_img_s" in row:
            print(f"| {row['setting']} | {row['torchvision_img_s']} img/s | {row['ours_img_s']} img/s | {row['ratio']}x |")
            if "ratio_vs_torchvision_fp32" in row:
                print(f"| same, torchvision in fp32 | {row['torchvision_fp32_img_s']} img/s | {row['ours_img_s']} img/s | "
                      f"{row['ratio_vs_torchvision_fp32']}x |")
        else:
            print(f"| {row['setting']} | {row['torchvision_s_it']} s/it | {row['ours_s_it']} s/it | {row['ratio']}x |")


if __name__ == "__main__":
    main()
