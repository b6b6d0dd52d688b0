"""The paper's C4 detector (configs/coco_r101.yaml: ResNet-101, shorter side 600, 300 proposals):
seconds per image for each row of the paper's Table 9, and the achieved GFLOP/s against the
machine's measured peak, counted two ways: nominal (the FLOPs of direct convolutions, the model's
arithmetic) and executed (what ran: the Winograd convolutions of the fast path do fewer).

    python benchmarks/bench_c4.py [--depth 101] [--images 2] [--repeats 2] [--device cpu|cuda]

Random weights whose BatchNorm statistics are measured on a few images (train-mode forward,
momentum=None) and then folded, as a trained model would be after `optimize_for_inference`.
Rows are cumulative as in the paper: baseline; + box refinement and voting; + global context;
+ multi-scale testing (the paper's 200..1000 pyramid). Speed only: no accuracy is measured here.
Results go to benchmarks/results/c4_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

ROWS = [
    ("baseline", []),
    ("+box refinement", ["test.box_refinement=true", "test.box_voting=true"]),
    ("+context", ["test.box_refinement=true", "test.box_voting=true", "model.roi_head.global_context=true"]),
    ("+multi-scale", ["test.box_refinement=true", "test.box_voting=true", "model.roi_head.global_context=true",
                      "test.scales=[200,400,600,800,1000]"]),
]


def test_images(count: int) -> list[torch.Tensor]:
    from tests.detection.tv_reference import shapes_image

    return [torch.from_numpy(shapes_image(300 + i, 480, 640)).permute(2, 0, 1).contiguous() for i in range(count)]


def calibrated_model(depth: int, overrides: list[str], device: torch.device):
    """A C4 detector with measured BN statistics, folded for inference, wrapped for the row's options."""
    from detection.config import load_detection_config
    from detection.modeling.build import build_model, build_test_model
    from detection.modeling.speed import optimize_for_inference

    cfg = load_detection_config(os.path.join(ROOT, "configs", "coco_r101.yaml"), [
        f"model.backbone.depth={depth}", "model.backbone.weights=null", "model.backbone.norm=bn", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg, 80, backbone_weights=False)
    measure_batchnorm(model, test_images(2))
    model = optimize_for_inference(model.eval()).to(device)
    return build_test_model(model, cfg), cfg


@torch.no_grad()
def measure_batchnorm(model, images: list[torch.Tensor]) -> None:
    """Train-mode forward of the backbone and the res5 head with cumulative BN averages."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    batch, _ = model.preprocess(images)
    features = model.backbone(batch)
    res5 = getattr(model.roi_heads.box_head, "res5", None)
    if res5 is not None:  # the per-RoI head: statistics from crops of the res4 map
        res4 = next(iter(features.values()))
        res5(res4[:, :, :14, :14])
    model.eval()


def run_row(model, cfg, images: list[torch.Tensor], device: torch.device) -> None:
    from detection.data.transforms import EvalTransform
    from detection.modeling.build import test_needs_original_images

    resize = None if test_needs_original_images(cfg) else EvalTransform(cfg.input.min_size_test,
                                                                        cfg.input.max_size_test)
    for image in images:
        height, width = image.shape[-2:]
        if resize is not None:
            image = torch.from_numpy(resize(image.permute(1, 2, 0).numpy())).permute(2, 0, 1).contiguous()
        model([{"image": image.to(device), "height": height, "width": width}])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds_per_image(model, cfg, images, device, repeats: int) -> float:
    with torch.inference_mode():
        run_row(model, cfg, images[:1], device)  # warm-up
        times = []
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            run_row(model, cfg, images, device)
            synchronize(device)
            times.append((time.perf_counter() - start) / len(images))
    return statistics.median(times)


def measured_flops(function, nominal: bool) -> float:
    """FLOPs of ``function``: ``nominal``, those of direct convolutions (the model's arithmetic);
    else those executed (Winograd convolutions do about a quarter of a 3x3 convolution's)."""
    from resnet_ops.winograd import direct_convolutions

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        with direct_convolutions() if nominal else contextlib.nullcontext():
            function()
    return float(counter.get_total_flops())


def flop_rates(model, cfg, image: torch.Tensor, device: torch.device, repeats: int, s_img: float) -> dict:
    """GFLOP of one image through the backbone and the whole detector (nominal and executed), and
    the rates achieved."""
    backbone_input, _ = model.preprocess([image.to(device)])
    rates = {}
    for kind in ("nominal", "executed"):
        backbone_gflop = measured_flops(lambda: model.backbone(backbone_input), kind == "nominal") / 1e9
        detector_gflop = measured_flops(lambda: run_row(model, cfg, [image], device), kind == "nominal") / 1e9
        rates[f"gflop_backbone_{kind}"] = round(backbone_gflop, 1)
        rates[f"gflop_detector_{kind}"] = round(detector_gflop, 1)
    with torch.inference_mode():
        synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            model.backbone(backbone_input)
        synchronize(device)
        backbone_s = (time.perf_counter() - start) / repeats
    for kind in ("nominal", "executed"):
        rates[f"gflops_backbone_{kind}"] = round(rates[f"gflop_backbone_{kind}"] / backbone_s, 1)
        rates[f"gflops_detector_{kind}"] = round(rates[f"gflop_detector_{kind}"] / s_img, 1)
    return rates


def peak_gflops(device: torch.device) -> dict[str, float]:
    """This machine's rate on a big matmul and on a ResNet-shaped 3x3 convolution (channels_last)."""
    a = torch.randn(2048, 2048, device=device)
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(1, 256, 100, 136, device=device).to(memory_format=torch.channels_last)
    rates = {}
    for name, function, flops in (("matmul", lambda: a @ a, 2 * 2048**3),
                                  ("conv3x3", lambda: conv(x), 2 * 256 * 256 * 9 * 100 * 136)):
        with torch.inference_mode():
            function()
            synchronize(device)
            start = time.perf_counter()
            for _ in range(5):
                function()
            synchronize(device)
        rates[name] = flops * 5 / (time.perf_counter() - start) / 1e9
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    images = test_images(args.images)
    rows = []
    for name, overrides in ROWS:
        model, cfg = calibrated_model(args.depth, overrides, device)
        row = {"row": name, "s_img": round(seconds_per_image(model, cfg, images, device, args.repeats), 3)}
        if name == "baseline":
            row.update(flop_rates(model, cfg, images[0], device, args.repeats, row["s_img"]))
        rows.append(row)
        print(json.dumps(row), flush=True)
    peak = peak_gflops(device)
    result = {"depth": args.depth, "device": args.device, "threads": torch.get_num_threads(),
              "image": "480x640 resized to 600x800", "rows": rows, "peak_gflops": peak, "torch": torch.__version__}
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", f"c4_{args.device}.json"), "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"| row (C4 ResNet-{args.depth}, 600 px, 300 proposals) | s/img | extra vs previous row |\n|---|---|---|")
    for previous, row in zip([None, *rows], rows):
        extra = f"+{row['s_img'] - previous['s_img']:.3f} s" if previous else ""
        print(f"| {row['row']} | {row['s_img']} | {extra} |")
    base = rows[0]
    for kind in ("nominal", "executed"):
        print(f"{kind}: backbone {base[f'gflop_backbone_{kind}']:.1f} GFLOP at {base[f'gflops_backbone_{kind}']} "
              f"GFLOP/s, detector {base[f'gflop_detector_{kind}']:.1f} GFLOP at {base[f'gflops_detector_{kind}']} "
              "GFLOP/s")
    print(f"this machine's peak: matmul {peak['matmul']:.0f}, 3x3 conv {peak['conv3x3']:.0f} GFLOP/s "
          "(nominal: the direct convolutions' FLOPs; executed: what ran, Winograd convolutions included)")


if __name__ == "__main__":
    main()
