"""tools/ablate_det.py's rows (detection/ablation.py): each row is the baseline plus exactly its
improvements whatever the config turns on, the rows that need a model trained with global context are
not produced without one, the paper's Table 9 figures stand beside the measured ones, and weights trained
with or without context are told apart."""

import json
import os

import pytest
import torch

import detection.ablation as ablation
from detection.config import load_detection_config
from detection.modeling.build import build_model
from resnet_engine.errors import UserError
from tests.conftest import ROOT

PAPER_CFG = os.path.join(ROOT, "configs", "coco_r101_paper.yaml")


def switches(cfg) -> dict:
    return {"context": cfg.model.roi_head.global_context, "refinement": cfg.test.box_refinement,
            "voting": cfg.test.box_voting, "scales": None if cfg.test.scales is None else list(cfg.test.scales),
            "flip": cfg.test.flip}


# Each row's switches, written out from the paper's Table 9 (rows cumulative).
PYRAMID = [200, 400, 600, 800, 1000]
EXPECTED = {
    "baseline": {"context": False, "refinement": False, "voting": False, "scales": None, "flip": False},
    "+box refinement": {"context": False, "refinement": True, "voting": True, "scales": None, "flip": False},
    "+context": {"context": True, "refinement": True, "voting": True, "scales": None, "flip": False},
    "+multi-scale": {"context": True, "refinement": True, "voting": True, "scales": PYRAMID, "flip": False},
}


@pytest.mark.parametrize("path", [PAPER_CFG, os.path.join(ROOT, "configs", "coco_r101.yaml")], ids=os.path.basename)
def test_each_row_turns_on_exactly_its_improvements_from_the_baseline(path):
    """With coco_r101_paper.yaml, which turns everything on (and flips too, here), the baseline row is
    still the baseline."""
    given = ["test.flip=true"]
    cfg = load_detection_config(path, given)
    rows = ablation.ablation_rows(cfg, "base.pth", "ctx.pth", None)
    assert [name for name, _, _ in rows] == list(EXPECTED)
    assert [weights for _, weights, _ in rows] == ["base.pth", "base.pth", "ctx.pth", "ctx.pth"]
    for name, _, overrides in rows:
        assert switches(load_detection_config(path, given + overrides)) == EXPECTED[name], name


def fake_evaluation(calls):
    """evaluate_weights standing in for a model: AP numbers that encode the row's switches."""
    def evaluate(cfg, weights, out_dir):
        calls.append((weights, switches(cfg)))
        code = 10 * cfg.model.roi_head.global_context + 2 * cfg.test.box_refinement + (cfg.test.scales is not None)
        return {"bbox": {"AP50": 40.0 + code, "AP": 20.0 + code}, "seconds_per_image": 0.5}
    return evaluate


def test_without_context_weights_the_context_rows_are_not_produced(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(ablation, "evaluate_weights", fake_evaluation(calls))
    monkeypatch.setattr(ablation, "trained_with_global_context", lambda weights: False)
    results = ablation.run_ablation(PAPER_CFG, [], "base.pth", None, str(tmp_path))
    assert calls == [("base.pth", EXPECTED["baseline"]), ("base.pth", EXPECTED["+box refinement"])]
    assert [(r["row"], r["AP50"], r["AP"]) for r in results] == [
        ("baseline", 40.0, 20.0), ("+box refinement", 42.0, 22.0), ("+context", None, None),
        ("+multi-scale", None, None)]
    table = (tmp_path / "ablation.md").read_text().splitlines()
    assert table[2] == "| baseline | 40.0 | 20.0 | 0.500 | 48.4 / 27.2 | - |"
    assert table[3] == "| +box refinement | 42.0 | 22.0 | 0.500 | 49.9 / 29.9 | - |"
    assert table[4] == f"| +context | {ablation.NEEDS_CONTEXT_WEIGHTS} | | | 51.1 / 30.0 | 53.3 / 32.2 |"
    assert table[5] == f"| +multi-scale | {ablation.NEEDS_CONTEXT_WEIGHTS} | | | 53.8 / 32.5 | 55.7 / 34.9 |"
    assert "== +context: not produced: needs --context-weights" in capsys.readouterr().out
    assert json.loads((tmp_path / "ablation.json").read_text())[3]["note"] == ablation.NEEDS_CONTEXT_WEIGHTS


def test_with_context_weights_every_row_is_measured(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(ablation, "evaluate_weights", fake_evaluation(calls))
    monkeypatch.setattr(ablation, "trained_with_global_context", lambda weights: weights == "ctx.pth")
    results = ablation.run_ablation(PAPER_CFG, [], "base.pth", "ctx.pth", str(tmp_path))
    assert calls == [(w, EXPECTED[n]) for n, w in zip(EXPECTED, ("base.pth", "base.pth", "ctx.pth", "ctx.pth"))]
    assert [r["AP50"] for r in results] == [40.0, 42.0, 52.0, 53.0]


def test_a_split_scored_by_the_server_gives_its_results_files(monkeypatch, tmp_path):
    monkeypatch.setattr(ablation, "evaluate_weights",
                        lambda cfg, weights, out_dir: {"results_file": f"{out_dir}/detections.json", "num_images": 2})
    monkeypatch.setattr(ablation, "trained_with_global_context", lambda weights: False)
    results = ablation.run_ablation(PAPER_CFG, [], "base.pth", None, str(tmp_path))
    assert results[1]["note"] == f"scored by the COCO evaluation server: upload {tmp_path}/box_refinement/detections.json"
    assert "| baseline | scored by the COCO evaluation server: upload" in (tmp_path / "ablation.md").read_text()


def save_tiny_detector(path, base, context: bool):
    cfg = load_detection_config(os.path.join(ROOT, "configs", base), [
        "model.backbone.depth=18", "model.backbone.base_width=8", "model.backbone.weights=null",
        "model.fpn.out_channels=16", "model.roi_head.fc_dim=32", f"model.roi_head.global_context={context}"])
    torch.save({"model": build_model(cfg, num_classes=2).state_dict(), "meta": {"num_classes": 2}}, path)
    return str(path)


@pytest.mark.parametrize("base", ["base_det.yaml", "shapes.yaml"])  # C4 (res5 head) and FPN (fc head)
def test_weights_with_and_without_context_are_told_apart(base, tmp_path):
    plain = save_tiny_detector(tmp_path / "plain.pth", base, False)
    context = save_tiny_detector(tmp_path / "context.pth", base, True)
    assert ablation.trained_with_global_context(plain) is False
    assert ablation.trained_with_global_context(context) is True
    ablation.check_ablation_weights(plain, context)
    with pytest.raises(UserError, match=r"--weights .*context.pth was trained with global context: give the model "
                                        r"trained without it as --weights"):
        ablation.check_ablation_weights(context, None)
    with pytest.raises(UserError, match=r"--context-weights .*plain.pth was trained without global context"):
        ablation.check_ablation_weights(plain, plain)


def test_an_evaluation_without_coco_box_ap_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(ablation, "evaluate_weights", lambda cfg, weights, out_dir: {"voc": {"mAP": 70.0}})
    monkeypatch.setattr(ablation, "trained_with_global_context", lambda weights: False)
    with pytest.raises(UserError, match="Table 9 is scored with COCO box AP, which this config's evaluation does not"):
        ablation.run_ablation(PAPER_CFG, [], "base.pth", None, str(tmp_path))
