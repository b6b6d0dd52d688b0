"""localization/rcnn_proposals.py: the training proposals' cache (one decision for all processes, a
damaged file computed again) and the views the RPN proposes on."""

import os
from types import SimpleNamespace

import pytest
import torch

from localization import rcnn_proposals
from resnet_engine import distributed as dist_utils
from resnet_engine.config import ConfigError


def config(tmp_path, **test):
    rpn_weights = tmp_path / "rpn.pth"
    rpn_weights.write_bytes(b"weights")
    test = {"mode": "1crop", "resize": 64, "dense_scales": [64], "dense_flip": False, **test}
    return SimpleNamespace(output_dir=str(tmp_path / "run"), rcnn=SimpleNamespace(rpn_weights=str(rpn_weights),
                                                                                   proposals_per_class=5),
                           test=SimpleNamespace(**test), data=SimpleNamespace(root=str(tmp_path)))


RPN_CFG = SimpleNamespace(input=SimpleNamespace(crop=48))
RECORDS = ["a", "b"]
FRESH = {"a": torch.ones(2, 4), "b": torch.zeros(1, 4)}


@pytest.fixture
def computed(monkeypatch):
    """The proposal pass, recorded instead of run."""
    calls = []

    def compute(rpn, views, records, cfg):
        calls.append(records)
        return {key: value.clone() for key, value in FRESH.items()}
    monkeypatch.setattr(rcnn_proposals, "training_proposals", compute)
    return calls


def test_proposals_are_cached_and_a_damaged_cache_is_computed_again(tmp_path, computed):
    cfg = config(tmp_path)
    assert rcnn_proposals.cached_training_proposals(cfg, None, RPN_CFG, RECORDS).keys() == FRESH.keys()
    path = os.path.join(cfg.output_dir, "rcnn_train_proposals.pth")
    again = rcnn_proposals.cached_training_proposals(cfg, None, RPN_CFG, RECORDS)
    assert len(computed) == 1 and torch.equal(again["a"], FRESH["a"])
    with open(path, "r+b") as handle:  # cut short, as by a full disk
        handle.truncate(40)
    with pytest.warns(UserWarning, match=r"rcnn_train_proposals.pth cannot be read \(\w+\); the training proposals "
                                         r"are computed again"):
        rcnn_proposals.cached_training_proposals(cfg, None, RPN_CFG, RECORDS)
    assert len(computed) == 2
    rcnn_proposals.cached_training_proposals(cfg, None, RPN_CFG, RECORDS + ["c"])  # other data: computed again
    assert len(computed) == 3


def test_the_cache_is_used_only_when_every_process_can_read_it(tmp_path, computed, monkeypatch):
    """With an output_dir local to each node, another node has no copy: every process computes the
    proposals again (a collective pass), none returns alone."""
    cfg = config(tmp_path)
    rcnn_proposals.cached_training_proposals(cfg, None, RPN_CFG, RECORDS)
    monkeypatch.setattr(dist_utils, "all_gather_objects", lambda found: [found, False])
    rcnn_proposals.cached_training_proposals(cfg, None, RPN_CFG, RECORDS)
    assert len(computed) == 2


def test_the_1crop_views_must_fit_the_rpns_crop(tmp_path):
    with pytest.raises(ConfigError, match=r"test.resize=40 is smaller than the crop of the RPN of rcnn.rpn_weights "
                                          r"\(48, its input.crop\)"):
        rcnn_proposals.proposal_views(config(tmp_path, resize=40), RPN_CFG)
    assert rcnn_proposals.proposal_views(config(tmp_path, resize=48), RPN_CFG).crop_size == 48
