"""Loading ImageNet weights saved by torchvision, timm or Detectron (Caffe2) into a ResNet.

A weights spec is one of:

* a local file: ``.pth`` / ``.pt`` / ``.bin`` (a state dict, possibly wrapped in
  ``{"state_dict": ...}`` or ``{"model": ...}``) or ``.safetensors``;
* ``torchvision:IMAGENET1K_V2``: torchvision's release for the model's depth, read from the torch
  hub cache (``$TORCH_HOME/hub/checkpoints``) or downloaded when a network exists;
* ``timm:resnet50.a1_in1k``: a timm release, read from the Hugging Face cache or downloaded.

Files are read with ``torch.load(weights_only=True)`` or safetensors, so a file never runs code.
Detectron ``.pkl`` files need unpickling and are only read with ``trust_pickle=True``.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from http.client import HTTPException

import torch
from torch import nn

from .errors import WeightsError

TENSOR_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt")
WRAPPER_KEYS = ("state_dict", "model", "module")


def load_weights(model: nn.Module, spec: str, trust_pickle: bool = False) -> dict[str, list[str]]:
    """Load ``spec`` into ``model`` and return the keys that were not used, by reason."""
    check_stride_convention(model, str(spec))
    path = resolve_weights(spec, getattr(model, "depth", None))
    state, saved_backbone = read_weights_file(path, trust_pickle=trust_pickle)
    check_saved_architecture(model, saved_backbone, path)
    return apply_state_dict(model, state, source=path)


def check_stride_convention(model: nn.Module, spec: str) -> None:
    """Bottleneck weights of a known source computed with their stride in a known place: loaded into the
    other placement they fit every tensor and compute something else."""
    in_1x1 = getattr(model, "stride_in_1x1", None)
    if in_1x1 is None:  # basic units, or a model that does not say
        return
    if in_1x1 and spec.startswith(("torchvision:", "timm:")):
        raise WeightsError(f"{spec}: torchvision's and timm's ResNets stride in the 3x3 convolution of a bottleneck, "
                           f"and this one in the first 1x1: set stride_in_1x1=false (model.backbone.stride_in_1x1) "
                           f"for these weights")
    if not in_1x1 and spec.lower().endswith(".pkl"):
        warnings.warn(f"{spec}: the MSRA ResNets of Detectron's .pkl files stride in the first 1x1 convolution of a "
                      f"bottleneck, and this one in the 3x3: set stride_in_1x1=true (model.backbone.stride_in_1x1) "
                      f"unless the file was converted from a torchvision model", stacklevel=3)


# The settings of a saved model.backbone that tell networks of the same tensors apart.
ARCHITECTURE_KEYS = ("plain", "preact", "shortcut", "base_width", "stride_in_1x1")
NORM_KINDS = {"frozen_bn": "bn", "bn": "bn", "syncbn": "bn", "gn": "gn"}


def check_saved_architecture(model: nn.Module, saved_backbone: dict | None, path: str) -> None:
    """A checkpoint of this toolkit's trainers keeps the config of the network it trained: a plain net and
    a ResNet of option A, or two stride placements, share every tensor, so the loading alone cannot tell
    them apart; the config can."""
    if not saved_backbone:
        return
    differing = []
    for key in ARCHITECTURE_KEYS:
        saved, built = saved_backbone.get(key), getattr(model, key, None)
        # Not recorded, left to the family's default when saved (""; a width of 0), or meaningless for this
        # network (the stride placement of basic units). False is a setting, not an absence.
        if saved is None or saved == "" or (key == "base_width" and saved == 0) or built is None:
            continue
        if saved != built:
            differing.append(f"{key}={saved} there, {built} here")
    saved_norm, built_norm = saved_backbone.get("norm"), getattr(model, "norm", None)
    # frozen_bn, bn and syncbn hold the same tensors and mean the same map; gn is another network.
    if saved_norm in NORM_KINDS and built_norm in NORM_KINDS and NORM_KINDS[saved_norm] != NORM_KINDS[built_norm]:
        differing.append(f"norm={saved_norm} there, {built_norm} here")
    if differing:
        raise WeightsError(f"{path} was trained as another network ({'; '.join(differing)}): build the network its "
                           f"config (model.backbone) describes")


def resolve_weights(spec: str, depth: int | None) -> str:
    """Turn a weights spec into the path of a local file."""
    spec = str(spec)
    if spec.startswith("torchvision:"):
        return _torchvision_file(spec.split(":", 1)[1], depth)
    if spec.startswith("timm:"):
        return _timm_file(spec.split(":", 1)[1])
    if not os.path.isfile(spec):
        scheme = re.match(r"([A-Za-z][\w.+-]+):", spec)  # two letters at least: C:\ is a Windows drive
        if scheme and not os.path.exists(spec):
            raise WeightsError(f"weights '{spec}': unknown name scheme '{scheme.group(1)}:' (torchvision:NAME or "
                               f"timm:NAME, e.g. torchvision:IMAGENET1K_V2; anything else is a file path)")
        raise WeightsError(f"weights file not found: {spec} (set model.backbone.weights to an existing file)")
    return spec


def _torchvision_file(tag: str, depth: int | None) -> str:
    import torchvision.models

    if depth is None:
        raise WeightsError("torchvision weights names need a ResNet depth")
    try:
        published = torchvision.models.get_model_weights(f"resnet{depth}")
    except ValueError:  # a depth torchvision builds no model of (ResNet-200)
        raise WeightsError(f"torchvision publishes no resnet{depth} weights: give a weights file") from None
    try:
        weights = published[tag]
    except KeyError:
        names = ", ".join(w.name for w in torchvision.models.get_model_weights(f"resnet{depth}"))
        raise WeightsError(f"torchvision has no weights '{tag}' for resnet{depth}: choose {names}") from None
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(weights.url))
    if not os.path.isfile(cached):
        download_torchvision_file(weights.url, cached, f"torchvision weights resnet{depth} {tag}")
    return cached


def download_torchvision_file(url: str, cached: str, what: str) -> None:
    """Download ``url`` to ``cached``, checking the hash prefix its name carries (``resnet50-11ad3fa6.pth``)."""
    match = torch.hub.HASH_REGEX.search(os.path.basename(url))
    try:
        # The hub writes a partial file beside ``cached`` first: its folder must exist on a fresh machine.
        os.makedirs(os.path.dirname(cached), exist_ok=True)
        torch.hub.download_url_to_file(url, cached, hash_prefix=match.group(1) if match else None, progress=False)
    except (OSError, HTTPException) as error:  # offline (URLError is an OSError), a cut connection, a full disk
        raise WeightsError(f"{what} are not cached at {cached} and could not be downloaded ({error}): copy the "
                           f"file there, or pass weights=/path/to/file.pth") from None
    except RuntimeError as error:  # the hash check
        raise WeightsError(f"{what}: the download from {url} is damaged ({error}): try again") from None


def _timm_file(name: str) -> str:
    try:  # timm only maps a release name to its Hugging Face repository, which is timm/NAME by default
        import timm
    except ImportError:
        timm = None
    try:
        config = timm.models.get_pretrained_cfg(name) if timm else None
    except Exception:  # noqa: BLE001 - a name timm does not know
        config = None
    hub_id = getattr(config, "hf_hub_id", None) or f"timm/{name}"
    # Without timm a file in the cache still loads; anything else needs timm to resolve or fetch it.
    fix = "pip install timm (not installed here), " if timm is None else ""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        raise WeightsError(f"weights='timm:{name}' need huggingface_hub: {fix or 'pip install huggingface_hub, '}"
                           f"or pass weights=/path/to/model.safetensors") from None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(hub_id, filename)
        if isinstance(cached, str) and os.path.isfile(cached):
            return cached
    try:
        return hf_hub_download(hub_id, "model.safetensors")
    except Exception:  # noqa: BLE001
        from huggingface_hub.constants import HF_HUB_CACHE

        expected = os.path.join(HF_HUB_CACHE, "models--" + hub_id.replace("/", "--"))
        raise WeightsError(
            f"timm weights {name} are not in the Hugging Face cache ({expected}) and cannot be downloaded: "
            f"{fix}or pass weights=/path/to/model.safetensors"
        ) from None


def read_state_dict(path: str, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a flat name -> tensor dict from any supported file."""
    return read_weights_file(path, trust_pickle)[0]


def read_weights_file(path: str, trust_pickle: bool = False) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(the flat name -> tensor dict of any supported file, the model.backbone section of the config a
    checkpoint of this toolkit's trainers keeps, or None)."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}" + (" (it is a folder)" if os.path.isdir(path) else ""))
    lower = path.lower()
    if lower.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            return load_file(path), None
        except Exception as error:  # noqa: BLE001
            raise WeightsError(f"cannot read {path}: {error}") from None
    if lower.endswith(".pkl"):
        return read_detectron_pickle(path, trust_pickle), None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        reason = refusal_reason(error)
        if reason is not None:
            raise WeightsError(
                f"{path} was refused as unsafe ({reason}): it holds pickled objects other than tensors, which "
                f"could run code when loaded. If it comes from a source you trust, load it once with "
                f"torch.load(weights_only=False) and save the state dict alone (torch.save(model.state_dict(), ...))"
            ) from None
        raise WeightsError(f"cannot read {path}: not a PyTorch checkpoint, or a damaged one "
                           f"({str(error).splitlines()[0][:200]})") from None
    except Exception:  # noqa: BLE001 - truncated or not a checkpoint at all
        raise WeightsError(f"cannot read {path}: the file is truncated or damaged") from None
    return unwrap_state_dict(obj, path), saved_backbone_config(obj)


def saved_backbone_config(obj) -> dict | None:
    """The model.backbone section of the YAML config text a trainer's checkpoint keeps under "config"."""
    text = obj.get("config") if isinstance(obj, Mapping) else None
    if not isinstance(text, str) or not text:
        return None
    try:  # the backbones need torch and torchvision only: without PyYAML there is no config to read
        import yaml
    except ImportError:
        return None
    try:
        tree = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    backbone = tree.get("model", {}).get("backbone") if isinstance(tree, dict) and isinstance(tree.get("model"), dict) \
        else None
    return backbone if isinstance(backbone, dict) else None


def refusal_reason(error: pickle.UnpicklingError) -> str | None:
    """Why ``torch.load(weights_only=True)`` refused a checkpoint that names a Python function or class
    (e.g. "Unsupported global: GLOBAL os.system was not an allowed global by default"); None for
    files it could not read for another reason."""
    message = str(error)
    if "GLOBAL" not in message:  # other refusals (an unknown pickle opcode, ...) mean "not a checkpoint"
        return None
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", message)
    return match.group(1).strip() if match else "objects other than tensors"


def unwrap_state_dict(obj, source: str = "weights") -> dict[str, torch.Tensor]:
    """Find the tensor dict inside common checkpoint wrappers."""
    while isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        inner = next((obj[k] for k in WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not _is_tensor_dict(obj):
        raise WeightsError(f"{source} does not contain a state dict of tensors")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _is_tensor_dict(obj: Mapping) -> bool:
    return len(obj) > 0 and sum(isinstance(v, torch.Tensor) for v in obj.values()) >= len(obj) / 2


def strip_prefixes(state: dict[str, torch.Tensor], model_keys: set[str]) -> dict[str, torch.Tensor]:
    """Drop the wrapper prefix that hides a match (DDP's ``module.``, Lightning's ``model.``,
    torch.compile's ``_orig_mod.``, a detector's ``backbone.body.``): of the prefixes that end just
    before a name of the model, the one most of the file's tensors carry."""
    if any(k in model_keys for k in state):
        return state
    prefixes: Counter[str] = Counter()
    for key in state:
        dots = [i for i, char in enumerate(key) if char == "."]
        prefix = next((key[:i + 1] for i in dots if key[i + 1:] in model_keys), None)
        if prefix is not None:
            prefixes[prefix] += 1
    if not prefixes:
        return state
    prefix = prefixes.most_common(1)[0][0]
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def apply_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str,
                     strict: bool = False) -> dict[str, list[str]]:
    """Copy ``state`` into ``model``, failing readably when the file does not fit the architecture.
    Entries the model lacks are warned of (a backbone takes the ResNet part of a larger file), or, with
    ``strict`` (a whole classifier scored as one network), an error."""
    own = model.state_dict()
    state = strip_prefixes(dict(state), set(own))
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    has_head = getattr(model, "fc", None) is not None

    dropped_head = []
    if not has_head:
        dropped_head = [k for k in state if k.startswith("fc.")]
    elif "fc.weight" in state and state["fc.weight"].shape != own["fc.weight"].shape:
        warnings.warn(
            f"{source}: classifier not loaded ({state['fc.weight'].shape[0]} classes in the file, "
            f"{own['fc.weight'].shape[0]} in the model); it keeps its random initialisation",
            stacklevel=2,
        )
        dropped_head = [k for k in state if k.startswith("fc.")]
    for key in dropped_head:
        state.pop(key)

    mismatched = [
        f"{k}: file {list(v.shape)} vs model {list(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    expected = {k for k in own if not k.endswith("num_batches_tracked")}
    if dropped_head:
        expected -= {k for k in expected if k.startswith("fc.")}
    missing = sorted(expected - set(state), key=_natural_key)
    unexpected = sorted(set(state) - set(own), key=_natural_key)
    if mismatched or missing:
        details = mismatched[:3] + [f"{k}: missing from the file" for k in missing[: max(0, 3 - len(mismatched))]]
        total = len(mismatched) + len(missing)
        more = f" (and {total - len(details)} more)" if total > len(details) else ""
        arch = getattr(model, "depth", None)
        arch_text = f" resnet{arch}" if arch else " the model"
        raise WeightsError(f"{source} does not fit{arch_text}: " + "; ".join(details) + more
                           + names_hint(state, expected))
    # Without strict, extras are fine (a detector's other parts) unless they sit in this network's own
    # modules: then the file holds another configuration of it and the loaded net computes something else.
    other_network = unexpected if strict else other_network_keys(model, unexpected)
    if other_network:
        raise other_network_error(model, other_network, source)
    if unexpected:
        warnings.warn(
            f"{source}: {len(unexpected)} entries not used by the model, e.g. {', '.join(unexpected[:3])}",
            stacklevel=2,
        )
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return {"unexpected": unexpected, "dropped_head": dropped_head}


def names_hint(state: dict[str, torch.Tensor], expected: set[str]) -> str:
    """When the file holds almost none of the model's names, what its names look like: a file of another
    network, or of this one under a prefix that is no known wrapper's, reads the same otherwise."""
    unknown = set(state) - expected
    if len(expected & set(state)) >= len(expected) / 2 or not unknown:
        return ""
    missing = expected - set(state)
    return (f"; most of the model's tensors are not in the file under their names ({len(unknown)} of the "
            f"file's are named otherwise, e.g. '{min(unknown, key=_natural_key)}', where the model has e.g. "
            f"'{min(missing, key=_natural_key)}'): a file of another network, or one whose names need renaming")


# Tensors of this family's own modules: the stem, a unit's convs, norms and projection, the pre-activation
# nets' last norm. Group 1 is the stage of a unit.
FAMILY_KEY = re.compile(r"(?:conv1|bn1|post_norm|layer(\d+)\.\d+\.(?:conv\d|bn\d|downsample\.\d+))\.")


def other_network_keys(model: nn.Module, unexpected: list[str]) -> list[str]:
    """The entries ``model`` lacks that a ResNet of other settings would use: projections where this one has
    option A or none, BN statistics where it has GN, units it does not have. A stage detached from the
    model (a C4 head's res5) is not one of its modules, and its tensors are no sign of another network."""
    keys = []
    for key in unexpected:
        match = FAMILY_KEY.match(key)
        if match and (match.group(1) is None or hasattr(model, f"layer{match.group(1)}")):
            keys.append(key)
    return keys


def other_network_error(model: nn.Module, keys: list[str], source: str) -> WeightsError:
    """The one-line error for ``keys``, the tensors of ``model``'s family that it lacks, naming the setting
    they most likely come from."""
    modules = {name for name, _ in model.named_modules()}
    owners = {key.rsplit(".", 1)[0] for key in keys}
    # A projection in a unit that has none (option A, plain), or statistics of a norm it has (GN).
    if any(".downsample." in owner and owner not in modules and owner.split(".downsample.")[0] in modules
           for owner in owners):
        hint = "projection shortcuts, where this one has option A or none: shortcut='B' or 'C', plain=False"
    elif any(key.endswith(("running_mean", "running_var")) and key.rsplit(".", 1)[0] in modules for key in keys):
        hint = "BatchNorm statistics, where this one has GroupNorm: norm='bn' or 'frozen_bn'"
    else:
        hint = "units or norms this one lacks: another depth, or preact"
    arch = getattr(model, "depth", None)
    return WeightsError(f"{source} holds {len(keys)} tensors that{f' resnet{arch}' if arch else ' the model'} of "
                        f"these settings lacks, e.g. {', '.join(keys[:3])}: they are the weights of another network "
                        f"({hint}); build the network they were trained as (model.backbone in a config)")


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


# -- Detectron / MSRA Caffe2 pickles -----------------------------------------------------------------
def read_detectron_pickle(path: str, trust_pickle: bool) -> dict[str, torch.Tensor]:
    """Read an ``R-50.pkl``-style Caffe2 blob file and rename it to this package's names.

    These models were trained with the stride on the first 1x1 conv and BGR 0-255 inputs minus the
    pixel mean, so they must be used with ``stride_in_1x1=True`` and that normalization.
    """
    if not trust_pickle:
        raise WeightsError(
            f"{path} is a pickle, which can run code when loaded: pass trust_pickle=True "
            f"(model.backbone.trust_pickle=true) only for files from a source you trust"
        )
    with open(path, "rb") as handle:
        data = pickle.load(handle, encoding="latin1")  # noqa: S301 - explicitly trusted by the user
    blobs = data.get("blobs", data) if isinstance(data, dict) else data
    state = {}
    for name, value in blobs.items():
        if name.endswith("_momentum"):
            continue
        new_name = caffe2_name_to_torch(name)
        if new_name is None:
            continue
        tensor = torch.as_tensor(value)
        state[new_name] = tensor
        if new_name.endswith(".weight") and ("bn" in new_name.split(".")[-2] or new_name.endswith("downsample.1.weight")):
            # Caffe2 "affine channel": y = s * x + b. Express it as a BN with zero mean and unit variance.
            base = new_name[: -len("weight")]
            eps = 1e-5
            state[base + "running_mean"] = torch.zeros_like(tensor)
            state[base + "running_var"] = torch.full_like(tensor, 1.0 - eps)
    return state


def caffe2_name_to_torch(name: str) -> str | None:
    if name in ("conv1_w",):
        return "conv1.weight"
    if name.startswith("res_conv1_bn_"):
        return "bn1." + {"s": "weight", "b": "bias"}[name[-1]]
    if name.startswith("fc1000_"):
        return "fc." + {"w": "weight", "b": "bias"}[name[-1]]
    match = re.fullmatch(r"res(\d)_(\d+)_branch(1|2[abc])(_bn)?_([wsb])", name)
    if not match:
        return None
    stage, unit, branch, is_bn, kind = match.groups()
    prefix = f"layer{int(stage) - 1}.{unit}."
    if branch == "1":
        module = "downsample.1" if is_bn else "downsample.0"
    else:
        index = "abc".index(branch[1]) + 1
        module = f"bn{index}" if is_bn else f"conv{index}"
    param = "weight" if kind in ("w", "s") else "bias"
    return prefix + module + "." + param
