"""tools/export.py's verdict on the check of an exported detector: the file must give PyTorch's
detections and no others, and a check image without detections is no check."""

import pytest

from resnet_engine.errors import UserError
from tests.conftest import ROOT
from tests.tools.test_cli import load_tool


def report(expected: int, actual: int, matched: int, score_diff: float = 1e-5) -> dict:
    return {"image_size": [1, 3, 200, 300], "output_shapes": {}, "expected": expected, "actual": actual,
            "matched": matched, "box_diff": 1e-4, "score_diff": score_diff}


@pytest.mark.parametrize("expected, actual, matched, score_diff, verdict", [
    (20, 20, 20, 1e-5, "checked"),
    (20, 20, 19, 1e-5, "checked"),  # a near tie traded places at the detections_per_img cut
    (20, 14, 14, 1e-5, "warning: the file differs"),  # detections missing from the file
    (7, 100, 7, 1e-5, "warning: the file differs"),  # the file detects much more (no NMS, no threshold)
    (20, 20, 20, 5e-2, "warning: the file differs"),  # other scores
    (0, 0, 0, 0.0, "warning: not checked"),
])
def test_the_check_passes_only_a_file_that_gives_pytorchs_detections(expected, actual, matched, score_diff, verdict):
    assert load_tool("export").describe_check(report(expected, actual, matched, score_diff)).startswith(verdict)


def test_an_output_that_is_the_weights_file_is_refused(tmp_path, monkeypatch):
    weights = tmp_path / "model_final.pth"
    weights.write_bytes(b"trained")
    monkeypatch.setattr("sys.argv", ["export.py", "--weights", str(weights), "--format", "onnx", "--out", str(weights)])
    with pytest.raises(UserError, match=r"--out .*model_final.pth is the --weights file: the export would replace"):
        load_tool("export").main()
    assert weights.read_bytes() == b"trained"


def test_an_existing_output_is_replaced_only_with_overwrite(tmp_path, monkeypatch):
    """A run's model_best.pth given as --out stays; with --overwrite the export goes on (here to the
    missing weights file, which stops it)."""
    from detection.export import ExportError

    best = tmp_path / "model_best.pth"
    best.write_bytes(b"trained")
    argv = ["export.py", "--weights", str(tmp_path / "model_final.pth"), "--format", "torchscript", "--out", str(best)]
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(UserError) as refused:
        load_tool("export").main()
    assert str(refused.value) == f"--out {best} exists: give another --out, or pass --overwrite to replace it"
    assert best.read_bytes() == b"trained"
    monkeypatch.setattr("sys.argv", [*argv, "--overwrite"])
    with pytest.raises(ExportError, match="weights file not found"):
        load_tool("export").main()
