"""CIFAR training speed: images/s of ResNet-20, -56 and -110 as the toolkit builds them, against the same nets
written plainly in PyTorch, side by side in one process.

    python benchmarks/bench_cifar.py                        # ResNet-20, -56, -110 on the CPU (2 threads)
    python benchmarks/bench_cifar.py --device cuda --channels-last
    python benchmarks/bench_cifar.py --depths 20 --warmup 1 --steps 1 --repeats 1 --out /tmp/cifar.json   # runs?

Ours: classification.classifier.build_classifier on configs/base_cifar.yaml with model.backbone.depth set, the
network tools/train_cls.py trains (option A shortcuts, 16-32-64 filters). The reference: the same network as a
PyTorch user writes it, torchvision's BasicBlock (nn.Conv2d, nn.BatchNorm2d, nn.ReLU) with an option A
shortcut that subsamples by a stride-2 slice and pads the extra channels with zeros. Before any timing the
reference gets our weights, and both must compute the same function in float64 (training-mode logits and
gradients, then test-mode logits); the differences are printed.

A training step: forward, cross-entropy, backward and an SGD step (lr 0.1, momentum 0.9, weight decay 1e-4)
on a batch of 128 random 32x32 images (mean-subtracted floats, as the CIFAR loader yields). After --warmup
steps of each, every repeat times --steps steps of the reference and as many of ours, in alternating order;
images/s are medians over the repeats, and the ratio (ours / reference) is the median of the per-repeat
ratios, so that the machine's drift between repeats cancels (bench_det.py's pairing). Results:
benchmarks/results/cifar_<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from bench_det import merged_rows, paired_ratio  # noqa: E402

from classification.classifier import build_classifier  # noqa: E402
from classification.config import load_classification_config  # noqa: E402

WIDTHS = (16, 32, 64)


# --------------------------------------------------------------------------------------------- the nets


class ZeroPadShortcut(nn.Module):
    """Option A: identity, subsampled by a stride-2 slice, the extra channels zeros."""

    def __init__(self, extra_channels: int):
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, self.extra_channels))


class ReferenceCifarResNet(nn.Module):
    """The paper's 6n+2 CIFAR ResNet from torchvision's BasicBlock, with our parameter names (conv1, bn1,
    layer1..layer3, fc), so that our state dict loads into it as it is."""

    def __init__(self, depth: int, num_classes: int = 10):
        super().__init__()
        units = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, WIDTHS[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        channels = WIDTHS[0]
        for stage, width in enumerate(WIDTHS):
            blocks = []
            for unit in range(units):
                stride = 2 if stage > 0 and unit == 0 else 1
                shortcut = ZeroPadShortcut(width - channels) if stride == 2 else None
                blocks.append(torchvision.models.resnet.BasicBlock(channels, width, stride, shortcut))
                channels = width
            setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def our_cifar_classifier(depth: int) -> nn.Module:
    """The classifier tools/train_cls.py builds from configs/base_cifar.yaml at ``depth``."""
    cfg = load_classification_config(os.path.join(ROOT, "configs", "base_cifar.yaml"), [f"model.backbone.depth={depth}"])
    return build_classifier(cfg, 10)


def function_differences(ours: nn.Module, reference: nn.Module, seed: int = 0) -> dict[str, float]:
    """Largest differences between our classifier and the reference given its weights, in float64: the
    logits and every parameter's gradient of one training-mode step, then the test-mode logits (with the
    running statistics that step left). Works on copies."""
    ours, reference = copy.deepcopy(ours).double().cpu(), copy.deepcopy(reference).double().cpu()
    reference.load_state_dict(ours.backbone.state_dict())
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(8, 3, 32, 32, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 10, (8,), generator=generator)
    ours.train(), reference.train()
    our_logits, reference_logits = ours.logits(images), reference(images)
    F.cross_entropy(our_logits, labels).backward()
    F.cross_entropy(reference_logits, labels).backward()
    gradients = max((a.grad - b.grad).abs().max().item()
                    for a, b in zip(ours.backbone.parameters(), reference.parameters(), strict=True))
    ours.eval(), reference.eval()
    with torch.no_grad():
        test = (ours.logits(images) - reference(images)).abs().max().item()
    return {"train_logits": (our_logits - reference_logits).abs().max().item(), "gradients": gradients,
            "test_logits": test}


# --------------------------------------------------------------------------------------------- timing


def training_step(model: nn.Module, optimizer: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor,
                  ours: bool) -> None:
    """One SGD step; ours as the trainer runs it (the classifier's own loss from a loader batch)."""
    if ours:
        loss = sum(model({"images": images, "labels": labels}).losses.values())
    else:
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed_steps(step, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def bench_depth(depth: int, device: torch.device, batch: int, warmup: int, steps: int, repeats: int,
                channels_last: bool) -> dict:
    torch.manual_seed(depth)
    ours = our_cifar_classifier(depth)
    reference = ReferenceCifarResNet(depth)
    differences = function_differences(ours, reference)
    print(f"ResNet-{depth}: same function as the reference, largest differences in float64: "
          + ", ".join(f"{name} {value:.1e}" for name, value in differences.items()), flush=True)
    if max(differences.values()) > 1e-9:
        raise SystemExit(f"ResNet-{depth}: the reference does not compute our function: {differences}")
    reference.load_state_dict(ours.backbone.state_dict())
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    ours.train().to(device, memory_format=memory_format)
    reference.train().to(device, memory_format=memory_format)
    images = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
    labels = torch.randint(0, 10, (batch,), device=device)
    optimizers = {name: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
                  for name, model in (("ours", ours), ("reference", reference))}

    def step_ours():
        training_step(ours, optimizers["ours"], images, labels, ours=True)

    def step_reference():
        training_step(reference, optimizers["reference"], images, labels, ours=False)

    timed_steps(step_reference, warmup, device), timed_steps(step_ours, warmup, device)
    reference_times, our_times = [], []
    for repeat in range(repeats):
        # Alternating which net goes first, so that neither always follows the other's memory traffic.
        if repeat % 2:
            our_times.append(timed_steps(step_ours, steps, device))
        reference_times.append(timed_steps(step_reference, steps, device))
        if not repeat % 2:
            our_times.append(timed_steps(step_ours, steps, device))
    images_per_repeat = batch * steps
    reference_rate = images_per_repeat / statistics.median(reference_times)
    our_rate = images_per_repeat / statistics.median(our_times)
    layout = ", channels_last" if channels_last else ""
    return {"setting": f"ResNet-{depth} training, batch {batch}, {device.type}, fp32{layout}",
            "reference_img_s": round(reference_rate, 1), "ours_img_s": round(our_rate, 1),
            "ratio": round(paired_ratio(reference_times, our_times), 3),
            "ratio_of_medians": round(our_rate / reference_rate, 3),
            "run_ratios": [round(r / o, 3) for r, o in zip(reference_times, our_times)],
            "max_difference_float64": max(differences.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56, 110], choices=[20, 32, 44, 56, 110])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each net first")
    parser.add_argument("--steps", type=int, default=3, help="training steps per timed repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--channels-last", action="store_true", help="both nets and the images in channels_last")
    parser.add_argument("--out", help="results file (default: benchmarks/results/cifar_<device>.json)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(min(2, os.cpu_count() or 1))
    rows = [bench_depth(depth, device, args.batch, args.warmup, args.steps, args.repeats, args.channels_last)
            for depth in args.depths]
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    path = args.out or os.path.join(ROOT, "benchmarks", "results", f"cifar_{args.device}.json")
    result = {"rows": merged_rows(path, rows), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": machine, "device": args.device,
              "protocol": {"batch": args.batch, "warmup": args.warmup, "steps": args.steps, "repeats": args.repeats}}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(result, handle, indent=2)
    print("| setting | plain PyTorch | this toolkit | ratio |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['setting']} | {row['reference_img_s']} img/s | {row['ours_img_s']} img/s | {row['ratio']}x |")


if __name__ == "__main__":
    main()
