"""Operator calls and host syncs of one training step: our R50-FPN detector against torchvision's.

    python benchmarks/bench_step_ops.py                       # batch 2, 8, 16 on the CPU
    python benchmarks/bench_step_ops.py --batches 2 --size 64 --time-size 32
    python benchmarks/bench_step_ops.py --device cuda         # adds training images/s on a GPU
    python benchmarks/bench_step_ops.py --device cuda --batches 16 --amp bf16 --tag cudagraphs \
        --ours-opts solver.compile_backbone=true solver.compile_mode=reduce-overhead

Both detectors are ResNet-50 FPN Faster R-CNNs with random weights and the same number of classes:
ours from configs/coco_r50_fpn.yaml, torchvision's ``fasterrcnn_resnet50_fpn(weights=None,
weights_backbone=None)`` with min_size = max_size = the image size, so that its transform never
resizes. Each gets the same random images (fixed seed) with a few random boxes each, in training
mode; one step is a forward and a backward of the summed losses.

Counted per step, with torch.profiler:

* operator calls: the *top-level* aten operators, i.e. the events whose name starts with "aten::"
  and none of whose enclosing events (the profiler's parent chain) is an aten operator. An
  ``aten::linear`` counts once, not with the ``aten::addmm`` it calls; a backward node's operators
  count, since their parent is the autograd node, not an aten operator. The same rule for both models;
* sync-forcing calls: aten::item, aten::_local_scalar_dense, aten::nonzero and aten::is_nonzero at
  any depth (a boolean-mask index calls nonzero inside aten::index), split into those inside the
  model's forward and backward and those elsewhere in the step. A device-to-host sync happens once
  per _local_scalar_dense and once per nonzero (item and is_nonzero call _local_scalar_dense).
  Syncs that are no aten operator (the output size of torchvision's NMS on a GPU) are
  not counted: detection/modeling/rpn.py's docstring lists every sync left in our training step.

Also the CPU step time at a tiny image size, where the arithmetic is small and the per-operator
overhead dominates: the median of a few steps after a warm-up; the time of our RPN's training
proposals alone at 512 px per batch (NMS per image: flat per image). With ``--device cuda`` (skipped
when no GPU is present), training images/s of both at the largest batch, and one profiled step of
each: its GPU kernel time against its wall time (how far the host bounds it). Results go to
benchmarks/results/step_ops.json (step_ops_cuda.json for the GPU rows).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

NUM_CLASSES = 80
SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero")
# Each of these is one device-to-host synchronization (item and is_nonzero go through the first).
SYNC_POINTS = ("aten::_local_scalar_dense", "aten::nonzero")
FORWARD, BACKWARD = "step_ops.forward", "step_ops.backward"


# -- the two detectors and their inputs ------------------------------------------------------------
def our_detector(depth: int, device: torch.device, overrides: tuple[str, ...] = ()):
    """configs/coco_r50_fpn.yaml with ``overrides`` (key=value), its solver's speed switches applied
    as training applies them (none by default; e.g. solver.compile_backbone=true)."""
    from backbones.speed import apply_speed_switches
    from detection.config import load_detection_config
    from detection.modeling.build import build_model

    cfg = load_detection_config(os.path.join(ROOT, "configs", "coco_r50_fpn.yaml"),
                                ["model.backbone.weights=null", f"model.backbone.depth={depth}", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg, NUM_CLASSES, backbone_weights=False).to(device).train()
    return apply_speed_switches(model, cfg.solver)


def torchvision_detector(depth: int, size: int, device: torch.device):
    """fasterrcnn_resnet50_fpn without weights (hence trainable BatchNorm in every stage), or the same
    construction on another ResNet depth."""
    from torchvision.models.detection import FasterRCNN, fasterrcnn_resnet50_fpn
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    torch.manual_seed(0)
    if depth == 50:
        model = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES + 1,
                                        min_size=size, max_size=size)
    else:
        backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None, trainable_layers=5,
                                       norm_layer=torch.nn.BatchNorm2d)
        model = FasterRCNN(backbone, num_classes=NUM_CLASSES + 1, min_size=size, max_size=size)
    return model.to(device).train()


def random_batch(batch: int, size: int, seed: int = 0, boxes_per_image: int = 3) -> list[dict]:
    """``batch`` images of size x size (0-255 floats) with a few random boxes of at least 8 pixels."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(batch):
        image = torch.rand(3, size, size, generator=generator) * 255
        corner = torch.rand(boxes_per_image, 2, generator=generator) * (size - 16)
        extent = 8 + torch.rand(boxes_per_image, 2, generator=generator) * (size / 2)
        boxes = torch.cat([corner, (corner + extent).clamp(max=size)], dim=1)
        labels = torch.randint(1, NUM_CLASSES + 1, (boxes_per_image,), generator=generator)
        samples.append({"image": image, "boxes": boxes, "labels": labels, "seed": seed * 1000 + index})
    return samples


def autocast(device: torch.device, amp: str):
    """bf16 autocast for ``amp`` "bf16" (the forward only, as in training), else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16")


def our_step(model, samples: list[dict], device: torch.device, amp: str = "off"):
    """A callable running one forward and backward of our detector on ``samples``."""
    batch = [{**s, "image": s["image"].to(device)} for s in samples]

    def step():
        with torch.profiler.record_function(FORWARD), autocast(device, amp):
            loss = sum(model(batch).values())
        with torch.profiler.record_function(BACKWARD):
            loss.backward()
    return step


def torchvision_step(model, samples: list[dict], device: torch.device, amp: str = "off"):
    """The same for torchvision's detector (0-1 images, its target format), its transform set to the
    images' size so that it never resizes them."""
    size = samples[0]["image"].shape[-1]
    model.transform.min_size, model.transform.max_size = (size,), size
    images = [(s["image"] / 255).to(device) for s in samples]
    targets = [{"boxes": s["boxes"].to(device), "labels": s["labels"].to(device)} for s in samples]

    def step():
        with torch.profiler.record_function(FORWARD), autocast(device, amp):
            loss = sum(model(images, targets).values())
        with torch.profiler.record_function(BACKWARD):
            loss.backward()
    return step


# -- counting --------------------------------------------------------------------------------------
def has_aten_ancestor(event) -> bool:
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::"):
            return True
        parent = parent.cpu_parent
    return False


def within(event, name: str) -> bool:
    """Whether ``event`` ran inside the record_function range ``name``."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name == name:
            return True
        parent = parent.cpu_parent
    return False


def repository_frame(frame: str) -> str | None:
    """"path(line): function" of a profiler's Python frame, relative to the repository, if the file
    is in it (the benchmark aside)."""
    path = frame.split("(", 1)[0]
    full = os.path.normpath(os.path.join(ROOT, path))  # an absolute path stays as it is
    if not full.startswith(ROOT + os.sep) or full == os.path.abspath(__file__) or not os.path.isfile(full):
        return None
    return os.path.relpath(full, ROOT) + frame[len(path):]


def sync_site(event) -> str | None:
    """The innermost function of this repository's code around ``event`` ("file(line of its def): name"): the profiler records Python
    frames (with_stack) as enclosing events or as an event's ``stack``. None where there is none."""
    while event is not None:
        for frame in event.stack or [event.name]:
            site = repository_frame(frame)
            if site:
                return site
        event = event.cpu_parent
    return None


def count_events(events) -> dict:
    """Top-level aten calls, and the sync-forcing calls by name, inside forward/backward or not; for
    those inside, where they were called (when the profile recorded stacks)."""
    top_level = 0
    syncs = {"model": collections.Counter(), "elsewhere": collections.Counter()}
    sites = collections.Counter()
    for event in events:
        if not event.name.startswith("aten::"):
            continue
        if not has_aten_ancestor(event):
            top_level += 1
        if event.name in SYNC_OPS:
            inside = within(event, FORWARD) or within(event, BACKWARD)
            syncs["model" if inside else "elsewhere"][event.name] += 1
            site = sync_site(event) if inside and event.name in SYNC_POINTS else None
            if site:
                sites[site] += 1
    return {"aten_calls": top_level,
            "sync_calls": {where: dict(sorted(counter.items())) for where, counter in syncs.items()},
            "sync_points_in_model": sum(syncs["model"][name] for name in SYNC_POINTS),
            "sync_sites_in_model": dict(sites.most_common())}


def profile(function, with_stack: bool = False) -> dict:
    """:func:`count_events` of one call of ``function``."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_stack=with_stack) as prof:
        function()
    return count_events(prof.events())


def step_seconds(step, model, device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``repeats`` steps after ``warmup`` ones (gradients cleared in between)."""
    times = []
    for index in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


# -- the rows --------------------------------------------------------------------------------------
def build_detectors(depth: int, size: int, device: torch.device, overrides: tuple[str, ...] = ()) -> dict:
    """Each detector's (model, make_step), built once for all the rows of a run (a compiled model
    compiles once); ``overrides`` apply to ours."""
    return {"ours": (our_detector(depth, device, overrides), our_step),
            "torchvision": (torchvision_detector(depth, size, device), torchvision_step)}


def count_rows(batches: list[int], size: int, device: torch.device, depth: int = 50, amp: str = "off",
               overrides: tuple[str, ...] = (), detectors: dict | None = None) -> list[dict]:
    """Operator and sync counts of one step per batch, after an uncounted step of the same batch
    (one-off work: cuDNN's choices, torch.compile for that shape)."""
    detectors = detectors or build_detectors(depth, size, device, overrides)
    rows = []
    for name, (model, make_step) in detectors.items():
        for batch in batches:
            step = make_step(model, random_batch(batch, size), device, amp)
            step()
            model.zero_grad(set_to_none=True)
            rows.append({"model": name, "batch": batch, "size": size,
                         **profile(step, with_stack=name == "ours")})
            model.zero_grad(set_to_none=True)
    return rows


def timing_rows(batches: list[int], size: int, device: torch.device, warmup: int, repeats: int,
                depth: int = 50, amp: str = "off", overrides: tuple[str, ...] = (),
                detectors: dict | None = None) -> list[dict]:
    detectors = detectors or build_detectors(depth, size, device, overrides)
    rows = []
    for name, (model, make_step) in detectors.items():
        for batch in batches:
            step = make_step(model, random_batch(batch, size), device, amp)
            seconds = step_seconds(step, model, device, warmup, repeats)
            rows.append({"model": name, "batch": batch, "size": size, "step_s": round(seconds, 4),
                         "images_per_s": round(batch / seconds, 2)})
    return rows


def proposal_rows(batches: list[int], size: int, device: torch.device, repeats: int, detectors: dict) -> list[dict]:
    """Seconds of our RPN's training proposals alone (decoding, clipping, NMS per image, padding) on
    random candidates at the pyramid's anchor counts for ``size`` x ``size`` images: the median of
    ``repeats`` calls per batch. Per image it should stay flat with the batch (NMS over the whole
    batch at once grew with its square)."""
    rpn = detectors["ours"][0].rpn
    generator = torch.Generator().manual_seed(0)
    strides = rpn.anchor_generator.strides or [4, 8, 16, 32, 64]  # None: torchvision's rule, for these maps the same
    maps = [(size // stride, size // stride) for stride in strides]
    anchors = rpn.anchor_generator((size, size), maps, device)
    rows = []
    for batch in batches:
        logits = [torch.randn(batch, len(a), generator=generator).to(device) for a in anchors]
        deltas = [(torch.randn(batch, len(a), 4, generator=generator) * 0.1).to(device) for a in anchors]
        times = []
        for _ in range(repeats + 1):  # the first call is not timed
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            rpn.propose(logits, deltas, anchors, [(size, size)] * batch, training_counts=True)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times[1:])
        rows.append({"batch": batch, "size": size, "candidates_per_image": sum(min(len(a), rpn.pre_nms_topk[0])
                                                                              for a in anchors),
                     "propose_s": round(seconds, 4), "per_image_s": round(seconds / batch, 4)})
    return rows


def device_seconds(event) -> float:
    """The kernel time of a profiler average (its field's name changed across releases)."""
    micro = getattr(event, "self_device_time_total", None)
    return (micro if micro is not None else getattr(event, "self_cuda_time_total", 0)) / 1e6


def gpu_busy_rows(batch: int, size: int, device: torch.device, warmup: int, detectors: dict, amp: str = "off",
                  top: int = 12) -> list[dict]:
    """Per model, one profiled step after ``warmup`` ones: its wall time, the GPU's kernel time in it
    (the sum over the kernels) and the operators that launched the most kernel time. A kernel
    time well under the wall time means the host, not the GPU, bounds the step."""
    rows = []
    for name, (model, make_step) in detectors.items():
        step = make_step(model, random_batch(batch, size), device, amp)
        step_seconds(step, model, device, warmup, 1)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
        with torch.profiler.profile(activities=activities) as prof:
            start = time.perf_counter()
            step()
            torch.cuda.synchronize()
            wall = time.perf_counter() - start
        averages = prof.key_averages()
        # Each kernel's time shows twice, on the kernel and on the operator that launched it: sum
        # the kernels, rank the operators (not the ranges of record_function, which span others).
        kernels = [a for a in averages if a.device_type == torch.autograd.DeviceType.CUDA]
        operators = sorted((a for a in averages if a.device_type == torch.autograd.DeviceType.CPU
                            and a.key not in (FORWARD, BACKWARD)), key=device_seconds, reverse=True)
        rows.append({"model": name, "batch": batch, "size": size, "profiled_step_s": round(wall, 4),
                     "kernel_s": round(sum(device_seconds(a) for a in kernels), 4),
                     "top_kernel_ops": [{"name": a.key, "calls": a.count, "kernel_s": round(device_seconds(a), 5)}
                                        for a in operators[:top]]})
    return rows


def count_table(rows: list[dict]) -> str:
    by_key = {(r["model"], r["batch"]): r for r in rows}
    lines = ["| batch | ours: aten calls | torchvision: aten calls | ours / torchvision "
             "| ours: syncs in forward+backward | torchvision: syncs in forward+backward |",
             "|---|---|---|---|---|---|"]
    for batch in sorted({r["batch"] for r in rows}):
        ours, theirs = by_key[("ours", batch)], by_key[("torchvision", batch)]
        lines.append(f"| {batch} | {ours['aten_calls']} | {theirs['aten_calls']} | "
                     f"{ours['aten_calls'] / theirs['aten_calls']:.2f} | {ours['sync_points_in_model']} | "
                     f"{theirs['sync_points_in_model']} |")
    return "\n".join(lines)


def timing_table(rows: list[dict], device: str) -> str:
    by_key = {(r["model"], r["batch"]): r for r in rows}
    lines = [f"| batch | size | ours: s/step ({device}) | torchvision: s/step | ours: img/s | torchvision: img/s "
             "| ours / torchvision speed |", "|---|---|---|---|---|---|---|"]
    for batch in sorted({r["batch"] for r in rows}):
        ours, theirs = by_key[("ours", batch)], by_key[("torchvision", batch)]
        lines.append(f"| {batch} | {ours['size']} | {ours['step_s']} | {theirs['step_s']} | "
                     f"{ours['images_per_s']} | {theirs['images_per_s']} | "
                     f"{theirs['step_s'] / ours['step_s']:.2f}x |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[2, 8, 16])
    parser.add_argument("--size", type=int, default=128, help="image side for the operator counts")
    parser.add_argument("--time-size", type=int, default=64, help="image side for the step times")
    parser.add_argument("--repeats", type=int, help="timed steps (default: 3 on the CPU, 10 on CUDA)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default: 1 on the CPU, 5 on CUDA, "
                        "enough for torch.compile and CUDA-graph recording)")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off", help="bf16 autocast, both detectors")
    parser.add_argument("--ours-opts", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides for ours, e.g. solver.compile_backbone=true "
                        "solver.compile_mode=reduce-overhead, or model.roi_head.roi_align_impl=gather")
    parser.add_argument("--tag", default="", help="added to the results file's name")
    parser.add_argument("--depth", type=int, choices=[18, 34, 50, 101], default=50, help="ResNet depth of both")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpu-size", type=int, default=512, help="image side for the GPU images/s")
    parser.add_argument("--proposal-size", type=int, default=512, help="image side for the RPN proposals' time")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: the GPU rows are skipped")
        return 0
    device = torch.device(args.device)
    cuda = args.device == "cuda"
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    repeats = args.repeats if args.repeats is not None else (10 if cuda else 3)
    overrides = tuple(args.ours_opts)
    detectors = build_detectors(args.depth, args.size, device, overrides)
    counts = count_rows(args.batches, args.size, device, amp=args.amp, detectors=detectors)
    print(count_table(counts), flush=True)
    ours_syncs = [r["sync_calls"]["model"] for r in counts if r["model"] == "ours"]
    print(f"sync-forcing calls inside our forward and backward, per batch: {ours_syncs}", flush=True)
    print(f"where: {[r['sync_sites_in_model'] for r in counts if r['model'] == 'ours']}", flush=True)
    print("not counted above where no aten operator reads it: the output size of the RPN's NMS, one call per image",
          flush=True)
    size = args.gpu_size if args.device == "cuda" else args.time_size
    batches = [max(args.batches)] if args.device == "cuda" else args.batches
    timings = timing_rows(batches, size, device, warmup, repeats, amp=args.amp, detectors=detectors)
    print(timing_table(timings, args.device), flush=True)
    proposals = proposal_rows(args.batches, args.proposal_size, device, repeats, detectors)
    print(f"our RPN's training proposals alone, random candidates at {args.proposal_size} px: " + ", ".join(f"batch {r['batch']}: {r['propose_s']} s ({r['per_image_s']} s per image)" for r in proposals),
          flush=True)
    busy = gpu_busy_rows(max(args.batches), size, device, warmup, detectors, args.amp) if cuda else []
    for row in busy:
        print(f"{row['model']}: profiled step {row['profiled_step_s']} s, GPU kernels {row['kernel_s']} s; "
              f"most kernel time: {[(op['name'], op['calls'], op['kernel_s']) for op in row['top_kernel_ops']]}",
              flush=True)
    os.makedirs(args.out, exist_ok=True)
    name = "_".join(["step_ops"] + (["cuda"] if cuda else []) + ([args.amp] if args.amp != "off" else [])
                    + ([args.tag] if args.tag else [])) + ".json"
    machine = torch.cuda.get_device_name(device) if cuda else f"{os.cpu_count()} CPUs"
    with open(os.path.join(args.out, name), "w", encoding="utf-8") as handle:
        json.dump({"counts": counts, "timings": timings, "proposals": proposals, "gpu_busy": busy, "device": args.device, "machine": machine,
                   "depth": args.depth, "amp": args.amp, "ours_overrides": list(overrides),
                   "warmup": warmup, "repeats": repeats, "torch": torch.__version__}, handle, indent=2)
    print(f"results: {os.path.join(args.out, name)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
