"""Loading trained classifiers: the weights of a checkpoint, a state dict file or a torchvision:/timm: name
into a classifier, and a checkpoint of tools/train_cls.py with the config and data facts it was trained
with (classes, CIFAR's pixel mean)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from backbones.weights import ARCHITECTURE_KEYS as BACKBONE_ARCHITECTURE_KEYS
from backbones.weights import apply_state_dict, read_state_dict, resolve_weights
from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.config import config_from_text
from resnet_engine.errors import UserError

from .classifier import CifarClassifier, Classifier, build_classifier
from .config import ClassificationConfig, fill_in_dataset_defaults, is_cifar


def read_classifier_state(spec: str, depth: int) -> dict[str, torch.Tensor]:
    """The tensors of a training checkpoint, a state dict file, or a torchvision:/timm: weights name."""
    if os.path.isfile(spec) and spec.lower().endswith((".pth", ".pt")):
        try:
            return load_checkpoint(spec)["model"]
        except UserError as error:
            if "no 'model' entry" not in str(error):
                raise
    return read_state_dict(resolve_weights(spec, depth))


def load_classifier_weights(model: Classifier | CifarClassifier, spec: str) -> None:
    """Load a whole classifier (ResNet and fc) from ``spec`` (see :func:`read_classifier_state`)."""
    apply_classifier_state(model, read_classifier_state(spec, model.backbone.depth), spec)


def apply_classifier_state(model: Classifier | CifarClassifier, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a classifier's tensors, all of them: an fc for another number of classes is an error, and so is
    a tensor the network lacks (projection shortcuts loaded into an option-A net would leave the
    identity shortcuts of another network scored under this one's name)."""
    head = next((v for k, v in state.items() if k.endswith("fc.weight")), None)
    if head is None or head.shape[0] != model.num_classes:
        found = "no fc" if head is None else f"an fc for {head.shape[0]} classes"
        raise UserError(f"{source} holds {found}, the test set has {model.num_classes} classes: give the weights "
                        f"of a classifier trained on these classes")
    apply_state_dict(model.backbone, state, source=source, strict=True)


# The settings of model.backbone that make two networks differ (not only their training).
ARCHITECTURE_KEYS = ("depth", *BACKBONE_ARCHITECTURE_KEYS)


def check_checkpoint_fits(path: str, cfg, data_meta: dict) -> None:
    """A checkpoint of tools/train_cls.py is tested as the network and on the classes it was trained as:
    the config's model.backbone must build its network (a plain net and a ResNet share every tensor name,
    so loading alone cannot tell them apart), and the data must list its classes in its order (the fc's
    rows are in that order). Other weight files (state dicts, torchvision:/timm: names) carry neither."""
    if not (os.path.isfile(path) and path.lower().endswith((".pth", ".pt"))):
        warn_if_not_the_published_class_order(path, data_meta)
        return
    try:
        state = load_checkpoint(path, mmap=True)  # its config and meta: the weights are read once, later
    except UserError as error:
        if "no 'model' entry" in str(error):  # a bare state dict
            warn_if_not_the_published_class_order(path, data_meta)
            return
        raise
    meta = state.get("meta") or {}
    if meta.get("task") != "classification" or not state.get("config"):
        warn_if_not_the_published_class_order(path, data_meta)
        return
    saved = config_from_text(ClassificationConfig, state["config"])
    fill_in_dataset_defaults(saved)
    differing = [f"model.backbone.{key}={getattr(saved.model.backbone, key)} there, "
                 f"{getattr(cfg.model.backbone, key)} here" for key in ARCHITECTURE_KEYS
                 if getattr(saved.model.backbone, key) != getattr(cfg.model.backbone, key)]
    if not is_cifar(saved):  # the ImageNet classifier's input arithmetic is part of the network
        differing += [f"input.{key}={getattr(saved.input, key)} there, {getattr(cfg.input, key)} here"
                      for key in ("format", "pixel_mean", "pixel_std")
                      if list_or_value(getattr(saved.input, key)) != list_or_value(getattr(cfg.input, key))]
    if differing:
        raise UserError(f"{path} was trained as another network ({'; '.join(differing)}): test it with the config "
                        f"it was trained with (the config.yaml of its output folder)")
    if is_cifar(saved) and is_cifar(cfg):
        check_val_held_out(path, saved.data, cfg.data)
    for key, what in (("dataset", "dataset"), ("wnids", "classes"), ("class_names", "classes")):
        if key in meta and key in data_meta and list_or_value(meta[key]) != list_or_value(data_meta[key]):
            difference = describe_difference(meta[key], data_meta[key])
            raise UserError(f"{path} was trained on other {what} than this data lists ({difference}): its fc's rows "
                            f"would be scored as other classes; test it with the data (data.dataset, data.root) it "
                            f"was trained on")


def check_val_held_out(path: str, trained, tested) -> None:
    """The CIFAR "val" section is the last data.val_images training images (0: a tenth): scored on
    weights that trained on some of them, it would read as a held-out error and not be one."""
    if tested.train_split != "train":
        return  # only the test set is scored
    if trained.train_split == "trainval":
        overlap = "all training images (data.train_split=trainval), the 'val' ones included"
    elif trained.val_images == tested.val_images or 0 < tested.val_images < trained.val_images:
        return  # the same held-out images, or some of them
    elif trained.val_images and tested.val_images:
        overlap = f"the training images but its last {trained.val_images} (data.val_images={trained.val_images})"
    else:  # one of them is the default tenth: whether the sets overlap depends on the files
        overlap = (f"the training images but its last data.val_images={trained.val_images} (0: a tenth), other "
                   f"held-out images than data.val_images={tested.val_images}")
    raise UserError(f"{path} was trained on {overlap}: its 'val' error would count images it trained on; test it "
                    f"with data.train_split={trained.train_split} data.val_images={trained.val_images}, as it was "
                    f"trained")


def warn_if_not_the_published_class_order(weights: str, data_meta: dict) -> None:
    """Weights that carry no class list (a state dict, torchvision:/timm: names) have their fc rows in the
    order of torchvision's and timm's ImageNet weights, the WNIDs sorted: a synset list in another order
    (the devkit's map_clsloc.txt numbering) would score every row as another class."""
    wnids = list(data_meta.get("wnids") or [])
    if wnids and wnids != sorted(wnids):
        warnings.warn(f"{weights} carries no class list, and the synset list orders its classes otherwise than "
                      f"by sorted WNID, the order of torchvision's and timm's ImageNet classifiers (e.g. class 0 is "
                      f"{wnids[0]} here): unless the weights were trained on this order, give LOC_synset_mapping.txt "
                      f"(sorted WNIDs) as the list", stacklevel=3)


def list_or_value(value):
    """A list of a sequence (a config's ListConfig, a tuple), for comparing; other values as they are."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def describe_difference(trained, here) -> str:
    """Where two class lists (or dataset names) first differ, in a few words."""
    if not isinstance(trained, (list, tuple)) or not isinstance(here, (list, tuple)):
        return f"{trained} there, {here} here"
    if len(trained) != len(here):
        return f"{len(trained)} classes there, {len(here)} here"
    index = next(i for i, (a, b) in enumerate(zip(trained, here)) if a != b)
    return f"class {index} is {trained[index]} there, {here[index]} here"


def read_checkpoint_meta(path: str) -> dict:
    """The ``meta`` a checkpoint of tools/train_cls.py keeps (empty for other files)."""
    if not (os.path.isfile(path) and path.lower().endswith((".pth", ".pt"))):
        return {}
    try:
        return load_checkpoint(path, mmap=True).get("meta") or {}
    except UserError as error:
        if "no 'model' entry" in str(error):  # a bare state dict
            return {}
        raise


@dataclass
class TrainedClassifier:
    """A classifier of tools/train_cls.py, its config and its checkpoint's meta (classes, CIFAR's pixel mean)."""

    model: Classifier | CifarClassifier
    cfg: object
    meta: dict


def load_trained_classifier(path: str, option: str = "--weights") -> TrainedClassifier:
    """The classifier of a checkpoint of tools/train_cls.py, rebuilt from the config saved in it;
    ``option`` names where the path was given, for the message when it is not such a checkpoint."""
    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    if not state.get("config") or meta.get("task") != "classification":
        raise UserError(f"{path} is not a classifier checkpoint of tools/train_cls.py: give {option} as "
                        f"output/<cls run>/model_final.pth")
    cfg = config_from_text(ClassificationConfig, state["config"])
    fill_in_dataset_defaults(cfg)
    head = next((v for k, v in state["model"].items() if k.endswith("fc.weight")), None)
    if head is None:
        raise UserError(f"{path} holds no fc: it is not the checkpoint of a whole classifier")
    model = build_classifier(cfg, head.shape[0], load_backbone_weights=False)
    apply_classifier_state(model, state["model"], path)
    return TrainedClassifier(model, cfg, meta)
