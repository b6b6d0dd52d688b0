"""The optional dependency groups (pip extras) of the toolkit, and the one-line error for a package
that a command needs and that is not installed.

``import backbones`` needs torch and torchvision only (and safetensors, also a base dependency, to
read .safetensors weights). The rest comes in groups that follow how the toolkit is used
(pyproject.toml lists the same groups with their version floors):

* ``detection``: the data pipelines, configs, training and evaluation of the detectors, classifiers
  and localizers, and timm backbones;
* ``export``: writing and checking ONNX files;
* ``fast-eval``: the faster COCO scoring backend (``test.eval_backend=faster_coco_eval``);
* ``vis``: the plots (``--plots``, ``tools/plot_logs.py``, the degradation and layer-response figures);
* ``trackers``: the experiment trackers besides TensorBoard (``logging.wandb``, ``logging.mlflow``);
* ``all``: every group.
"""

from __future__ import annotations

import importlib.util

from .errors import UserError

DISTRIBUTION = "resnet-detection"

# Imported module -> (the package that installs it, the extra that brings it).
OPTIONAL_MODULES = {
    "cv2": ("opencv-python-headless", "detection"),
    "albumentations": ("albumentations", "detection"),
    "pycocotools": ("pycocotools", "detection"),
    "omegaconf": ("omegaconf", "detection"),
    "yaml": ("pyyaml", "detection"),
    "tqdm": ("tqdm", "detection"),
    "tensorboard": ("tensorboard", "detection"),
    "timm": ("timm", "detection"),
    "huggingface_hub": ("huggingface_hub", "detection"),  # timm's own dependency (timm: weights names)
    "onnx": ("onnx", "export"),
    "onnxruntime": ("onnxruntime", "export"),
    "onnxscript": ("onnxscript", "export"),
    "faster_coco_eval": ("faster-coco-eval", "fast-eval"),
    "matplotlib": ("matplotlib", "vis"),
    "wandb": ("wandb", "trackers"),
    "mlflow": ("mlflow-skinny", "trackers"),  # the client alone; the full mlflow package serves as well
}


class MissingPackageError(UserError):
    pass


def install_hint(module: str) -> str:
    """``pip install 'resnet-detection[EXTRA]'`` for the extra that brings ``module``."""
    _, extra = OPTIONAL_MODULES[module.split(".")[0]]
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def installed(module: str) -> bool:
    """Whether ``module`` can be imported (a module blocked in ``sys.modules`` counts as missing)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def missing_package_error(error: ImportError) -> MissingPackageError | None:
    """The one-line error for ``error``, the failed import of an optional package; None when the
    module is not one of them (a broken installation, a bug: those keep their traceback)."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    if not isinstance(error, ModuleNotFoundError) or name not in OPTIONAL_MODULES:
        return None
    return package_needed(name, "this command")


def package_needed(module: str, purpose: str) -> MissingPackageError:
    """The one-line error for ``purpose`` (a command, a config setting) when the optional ``module`` that
    it needs is not installed."""
    package, _ = OPTIONAL_MODULES[module.split(".")[0]]
    return MissingPackageError(f"{purpose} needs {package}, which is not installed: {install_hint(module)}")
