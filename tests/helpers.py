"""Helpers shared by the tests."""

import torch


def randomize_bn_statistics(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as a trained model has."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) * 0.5 + 0.5)
                module.bias.copy_(torch.rand(n, generator=generator) * 0.2 - 0.1)
    return model


def make_fixed_size_shapes(root, split: str, num_images: int, size=(160, 192), seed: int = 0) -> str:
    """A COCO-format shapes split whose images all have one size (height, width): batches then need no
    padding, so one process with a batch of N computes exactly what N processes with one image each do."""
    import json
    import os

    import cv2
    import numpy as np

    from detection.data.shapes import CLASSES, render_image

    height, width = size
    os.makedirs(os.path.join(root, split), exist_ok=True)
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        image, objects = render_image(np.random.default_rng([seed, index]))
        sy, sx = height / image.shape[0], width / image.shape[1]
        image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        name = f"{index:04d}.png"
        cv2.imwrite(os.path.join(root, split, name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": index + 1, "file_name": name, "height": height, "width": width})
        for obj in objects:
            x, y, w, h = obj["bbox"]
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "category_id": obj["category"] + 1,
                                "bbox": [x * sx, y * sy, w * sx, h * sy], "area": w * sx * h * sy, "iscrowd": 0})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    with open(path, "w", encoding="utf-8") as handle:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, handle)
    return path


def data_overrides(root) -> list[str]:
    """Config overrides pointing a detection config at a dataset made by the helpers above."""
    return [f"data.train.ann_file={root}/annotations/instances_train.json", f"data.train.img_dir={root}/train",
            f"data.test.ann_file={root}/annotations/instances_val.json", f"data.test.img_dir={root}/val",
            "data.synthetic=''"]


def coco_as_yolo(ann_file: str, img_dir: str, root, split: str, names: list[str]) -> None:
    """The images of a COCO json copied to ROOT/images/SPLIT and its boxes written as YOLO lines into
    ROOT/labels/SPLIT: the class index of the category's name in ``names``, then the box's centre and size
    divided by the image's width and height (six decimals, as label tools write them)."""
    import json
    import os
    import shutil

    with open(ann_file, encoding="utf-8") as handle:
        data = json.load(handle)
    index_of = {c["id"]: names.index(c["name"]) for c in data["categories"]}
    for folder in ("images", "labels"):
        os.makedirs(os.path.join(root, folder, split), exist_ok=True)
    for image in data["images"]:
        shutil.copyfile(os.path.join(img_dir, image["file_name"]), os.path.join(root, "images", split, image["file_name"]))
        width, height = image["width"], image["height"]
        lines = [f"{index_of[ann['category_id']]} {(x + w / 2) / width:.6f} {(y + h / 2) / height:.6f} "
                 f"{w / width:.6f} {h / height:.6f}"
                 for ann in data["annotations"] if ann["image_id"] == image["id"] for x, y, w, h in [ann["bbox"]]]
        if lines:
            stem = os.path.splitext(image["file_name"])[0]
            with open(os.path.join(root, "labels", split, f"{stem}.txt"), "w", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")


# A very small version of configs/shapes.yaml: seconds per iteration on one thread.
TINY_DETECTOR = [
    "model.backbone.base_width=16", "model.fpn.out_channels=32", "model.roi_head.fc_dim=64",
    "model.roi_head.batch_size_per_image=32", "model.rpn.batch_size_per_image=64",
    "input.min_size_train=[160]", "input.max_size_train=240", "input.min_size_test=160", "input.max_size_test=240",
    "solver.optimizer=sgd", "solver.base_lr=0.02", "solver.weight_decay=0.0001",
    "solver.ims_per_batch=2", "solver.max_iter=4", "solver.steps=[3]", "solver.warmup_iters=2",
    "solver.checkpoint_period=2", "solver.log_period=2", "data.num_workers=0", "seed=3",
    "device=cpu",  # the exactness tests are about the CPU; tests/detection/test_cuda.py sets device=cuda
]


def subprocess_env(**extra: str) -> dict:
    """The environment for a child Python process: the repository first on its path, the rest kept."""
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def load_benchmark_script(name: str):
    """A script of benchmarks/ (not a package) imported as a module, e.g. "bench_det"."""
    import importlib.util
    import os

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location(name, os.path.join(root, "benchmarks", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
