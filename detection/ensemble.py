"""Loading several trained detectors as one ensemble (detection/modeling/ensemble.py): each network
built from the training config its file keeps, all of the same classes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from resnet_engine.errors import UserError

from .data.coco import CategoryMap
from .modeling.ensemble import DetectorEnsemble
from .weights import NETWORK_INPUT_KEYS, load_fast_detector, saved_config_text, short_list


class EnsembleError(UserError):
    """Detectors that cannot run as one ensemble."""


def load_detectors(cfg, weights: str | Sequence[str], device: torch.device):
    """(model, category map) of one detector file, as load_fast_detector gives it, or of several as
    their :class:`DetectorEnsemble`."""
    if isinstance(weights, str):
        return load_fast_detector(cfg, weights, device)
    if len(weights) == 1:
        return load_fast_detector(cfg, weights[0], device)
    return load_ensemble(cfg, weights, device)


def load_ensemble(cfg, weights: Sequence[str], device: torch.device) -> tuple[DetectorEnsemble, CategoryMap]:
    """The detectors of ``weights`` as one :class:`DetectorEnsemble` and their shared category map.

    Each network is built from its own training config when its file keeps one (the ``model`` keys
    and the input normalization of :data:`NETWORK_INPUT_KEYS`), else from ``cfg``; ``cfg`` gives the
    test scale, the data and the ``test`` keys of the whole ensemble.
    """
    models, category_map, first = [], None, None
    for path in weights:
        model, network_map = load_fast_detector(network_config(cfg, path), path, device)
        if category_map is None:
            category_map, first = network_map, path
        else:
            check_same_classes(category_map, first, network_map, path)
        models.append(model)
    return DetectorEnsemble(models), category_map


def network_config(cfg, path: str):
    """``cfg`` with the model keys and input normalization of the training config kept in ``path``
    (a training checkpoint or model_final.pth); ``cfg`` itself when the file keeps none."""
    text = saved_config_text(path)
    if not text:
        return cfg
    try:
        saved = OmegaConf.create(text)
        own = {"model": saved.model, "input": {key: saved.input[key] for key in NETWORK_INPUT_KEYS if key in saved.input}}
        return OmegaConf.merge(cfg, own)
    except OmegaConfBaseException as error:
        raise EnsembleError(f"{path}: the training config it keeps does not fit this version's model keys "
                            f"({str(error).splitlines()[0]}): evaluate it with a single --weights and its own --cfg") from None


def check_same_classes(expected: CategoryMap, expected_source: str, other: CategoryMap, source: str) -> None:
    """One line when two networks of an ensemble were trained on different classes."""
    if list(other.names) == list(expected.names) and list(other.category_ids) == list(expected.category_ids):
        return
    raise EnsembleError(f"{source} detects the {len(other.names)} classes {short_list(list(other.names))} and "
                        f"{expected_source} the {len(expected.names)} classes {short_list(list(expected.names))}: "
                        f"an ensemble averages the scores of the same classes; give weights trained on one class list")
