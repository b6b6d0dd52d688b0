"""The embedded recipe against torchvision's Faster R-CNN trained from scratch for the same wall time.

    python benchmarks/bench_tv_scratch.py                      # shapes: ours, then torchvision
    python benchmarks/bench_tv_scratch.py --data TRAIN_JSON TRAIN_DIR VAL_JSON VAL_DIR
    python benchmarks/bench_tv_scratch.py --seconds 120        # a shorter budget for both

First configs/shapes.yaml trains (with only the data keys overridden when --data is given) and its
training time T is read from the trainer's log (evaluation excluded); then torchvision's
FasterRCNN on a ResNet-18 FPN, built from scratch with BatchNorm (torchvision's FrozenBatchNorm2d
default suits only pre-trained weights) and the same light heads, anchors, sizes, batch,
optimizer and schedule shape, trains for T seconds on the same machine. Both are scored by
pycocotools on the val set. Results go to benchmarks/results/tv_scratch.json (shapes) or
tv_scratch_<dataset>.json, <dataset> being the folder that holds the training json's folder.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


class CocoImages(torch.utils.data.Dataset):
    """Images as 0-1 float tensors and xyxy boxes with contiguous labels, torchvision's input format."""

    def __init__(self, ann_file: str, img_dir: str, flip: bool):
        from detection.data.image_io import read_image

        with open(ann_file, encoding="utf-8") as handle:
            self.dataset = json.load(handle)
        self.read_image = read_image
        self.img_dir = img_dir
        self.flip = flip
        self.category_ids = sorted(c["id"] for c in self.dataset["categories"])
        label_of = {cid: i + 1 for i, cid in enumerate(self.category_ids)}
        self.images = self.dataset["images"]
        self.targets = {img["id"]: ([], []) for img in self.images}
        for ann in self.dataset["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd", 0) or w <= 1 or h <= 1:
                continue
            self.targets[ann["image_id"]][0].append([x, y, x + w, y + h])
            self.targets[ann["image_id"]][1].append(label_of[ann["category_id"]])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        info = self.images[index]
        image = torch.from_numpy(self.read_image(os.path.join(self.img_dir, info["file_name"]))).permute(2, 0, 1)
        image = image.float() / 255
        boxes, labels = self.targets[info["id"]]
        boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
        if self.flip and torch.rand(1).item() < 0.5:
            image = image.flip(-1)
            boxes = torch.stack([image.shape[-1] - boxes[:, 2], boxes[:, 1], image.shape[-1] - boxes[:, 0],
                                 boxes[:, 3]], dim=1)
        return image, {"boxes": boxes, "labels": torch.tensor(labels, dtype=torch.int64)}, info["id"]


def torchvision_model(cfg, num_classes: int):
    import torchvision
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator

    backbone = resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5,
                                   norm_layer=torch.nn.BatchNorm2d)
    anchors = AnchorGenerator(tuple(tuple(s) for s in cfg.model.anchors.sizes),
                              (tuple(cfg.model.anchors.aspect_ratios),) * len(cfg.model.anchors.sizes))
    rpn, head = cfg.model.rpn, cfg.model.roi_head
    model = torchvision.models.detection.FasterRCNN(
        backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors,
        min_size=tuple(cfg.input.min_size_train), max_size=cfg.input.max_size_train,
        rpn_pre_nms_top_n_train=rpn.pre_nms_topk_train, rpn_post_nms_top_n_train=rpn.post_nms_topk_train,
        rpn_pre_nms_top_n_test=rpn.pre_nms_topk_test, rpn_post_nms_top_n_test=rpn.post_nms_topk_test,
        box_batch_size_per_image=head.batch_size_per_image, box_nms_thresh=cfg.test.nms_thresh,
        box_detections_per_img=cfg.test.detections_per_img, box_score_thresh=cfg.test.score_thresh)
    model.roi_heads.box_head = TwoMLPHead(256 * 7 * 7, head.fc_dim)
    model.roi_heads.box_predictor = FastRCNNPredictor(head.fc_dim, num_classes + 1)
    return model


def train_torchvision(cfg, train_set, seconds: float, seed: int) -> tuple[torch.nn.Module, int]:
    """Train for ``seconds`` of wall time with the recipe's optimizer and schedule shape."""
    torch.manual_seed(seed)
    model = torchvision_model(cfg, len(train_set.category_ids)).train()
    solver = cfg.solver
    optimizer = torch.optim.AdamW(model.parameters(), lr=solver.base_lr, weight_decay=solver.weight_decay)
    loader = torch.utils.data.DataLoader(train_set, batch_size=solver.ims_per_batch, shuffle=True, drop_last=True,
                                         num_workers=cfg.data.num_workers, collate_fn=lambda b: list(zip(*b)))
    # The recipe's steps as fractions of its length, applied to the fraction of the time budget spent.
    step_fractions = [s / solver.max_iter for s in solver.steps]
    start, iteration = time.perf_counter(), 0
    while True:
        for images, targets, _ in loader:
            spent = (time.perf_counter() - start) / seconds
            if spent >= 1:
                return model, iteration
            warmup = min(1.0, (iteration + 1) / max(solver.warmup_iters, 1))
            decay = solver.gamma ** sum(spent >= f for f in step_fractions)
            for group in optimizer.param_groups:
                group["lr"] = solver.base_lr * warmup * decay
            losses = model(list(images), list(targets))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
            iteration += 1


@torch.inference_mode()
def evaluate_torchvision(model, cfg, val_set) -> dict:
    from detection.evaluation.coco_eval import evaluate_detections

    model.eval()
    model.transform.min_size = (cfg.input.min_size_test,)
    model.transform.max_size = cfg.input.max_size_test
    results = []
    for index in range(len(val_set)):
        image, _, image_id = val_set[index]
        output = model([image])[0]
        for box, score, label in zip(output["boxes"].tolist(), output["scores"].tolist(), output["labels"].tolist()):
            x1, y1, x2, y2 = box
            results.append({"image_id": image_id, "category_id": val_set.category_ids[label - 1],
                            "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return evaluate_detections(val_set.dataset, results)["bbox"]


def main() -> None:
    from detection.config import load_detection_config
    from detection.training import train_detector

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs=4, metavar=("TRAIN_JSON", "TRAIN_DIR", "VAL_JSON", "VAL_DIR"))
    parser.add_argument("--seconds", type=float, default=0, help="training budget of both (default: the "
                        "recipe's full schedule for ours, and its measured training time for torchvision)")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    overrides = ["output_dir=output/bench_tv_scratch", "test.eval_period=0"]
    if args.data:
        overrides += [f"data.train.ann_file={args.data[0]}", f"data.train.img_dir={args.data[1]}",
                      f"data.test.ann_file={args.data[2]}", f"data.test.img_dir={args.data[3]}", "data.synthetic=''"]
    cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"), overrides)
    if args.seconds:
        # Our recipe gets the same budget: its iterations scaled to fit, from a short timing run.
        cfg = load_detection_config(os.path.join(ROOT, "configs", "shapes.yaml"),
                                    overrides + budget_overrides(cfg, args.seconds))
    ours = train_detector(cfg)["bbox"]
    seconds = train_seconds(cfg.output_dir)
    train_set = CocoImages(cfg.data.train.ann_file, cfg.data.train.img_dir, flip=cfg.input.random_flip > 0)
    val_set = CocoImages(cfg.data.test.ann_file, cfg.data.test.img_dir, flip=False)
    model, iterations = train_torchvision(cfg, train_set, seconds, cfg.seed)
    theirs = evaluate_torchvision(model, cfg, val_set)
    rows = [{"model": "this toolkit (configs/shapes.yaml)", "train_seconds": round(seconds, 1),
             "iterations": cfg.solver.max_iter, **{k: round(ours[k], 1) for k in ("AP", "AP50", "AP75")}},
            {"model": "torchvision FasterRCNN, ResNet-18 FPN, from scratch", "train_seconds": round(seconds, 1),
             "iterations": iterations, **{k: round(theirs[k], 1) for k in ("AP", "AP50", "AP75")}}]
    os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
    with open(os.path.join(ROOT, "benchmarks", "results", result_name(args.data)), "w", encoding="utf-8") as handle:
        json.dump({"data": args.data or "shapes", "rows": rows}, handle, indent=2)
    print("| model | training s | iterations | AP | AP50 | AP75 |\n|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['model']} | {row['train_seconds']} | {row['iterations']} | {row['AP']} | {row['AP50']} | "
              f"{row['AP75']} |")


def result_name(data: list[str] | None) -> str:
    """tv_scratch.json for shapes; tv_scratch_glyphs.json for datasets/glyphs/annotations/instances_train.json."""
    if not data:
        return "tv_scratch.json"
    dataset = os.path.basename(os.path.dirname(os.path.dirname(os.path.abspath(data[0]))))
    return f"tv_scratch_{dataset or 'data'}.json"


def budget_overrides(cfg, seconds: float) -> list[str]:
    """Iterations of our recipe that fit in ``seconds`` (timed over 20 iterations), steps and warm-up scaled."""
    from detection.training import train_detector

    probe = copy.deepcopy(cfg)
    probe.output_dir, probe.solver.max_iter, probe.solver.checkpoint_period = cfg.output_dir + "_timing", 20, 0
    probe.test.max_images = 1
    train_detector(probe)
    per_iter = train_seconds(probe.output_dir) / 20
    iters = max(int(seconds / per_iter), 1)
    scale = iters / cfg.solver.max_iter
    steps = ",".join(str(max(int(s * scale), 1)) for s in cfg.solver.steps)
    return [f"solver.max_iter={iters}", f"solver.steps=[{steps}]",
            f"solver.warmup_iters={max(int(cfg.solver.warmup_iters * scale), 1)}"]


def train_seconds(output_dir: str) -> float:
    """The trainer's own training time (evaluation and checkpoints excluded), from its log."""
    from resnet_engine.plot_logs import read_metrics

    train, evals = read_metrics(output_dir)
    return float([r for r in train + evals if "train_time" in r][-1]["train_time"])


if __name__ == "__main__":
    main()
