"""tools/convert_weights.py's --out: never the input, an existing file only with --overwrite, and one line
for a path that cannot be written."""

import pytest
import torch

from resnet_engine.errors import UserError
from tests.tools.test_cli import load_tool


def torchvision_state_dict() -> dict:
    """The names the converter reads of a torchvision FasterRCNN on a ResNet-18, with 3 classes."""
    state = {"backbone.body.conv1.weight": torch.zeros(1), "roi_heads.box_predictor.cls_score.weight": torch.zeros(4, 1)}
    state.update({f"backbone.body.layer{layer}.{unit}.conv1.weight": torch.zeros(1)
                  for layer in (1, 2, 3, 4) for unit in (0, 1)})
    return state


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "tv18.pth"
    torch.save(torchvision_state_dict(), path)
    return path


def convert(monkeypatch, source, out, *extra) -> int:
    monkeypatch.setattr("sys.argv", ["convert_weights.py", "--from", "torchvision", "--in", str(source),
                                     "--out", str(out), *extra])
    return load_tool("convert_weights").main()


def test_a_missing_folder_of_out_is_made(source, tmp_path, monkeypatch):
    out = tmp_path / "converted" / "r18" / "tv18.pth"
    assert convert(monkeypatch, source, out) == 0
    converted = torch.load(out, weights_only=True)
    assert converted["meta"]["depth"] == 18 and converted["meta"]["num_classes"] == 3


@pytest.mark.parametrize("extra", [[], ["--overwrite"]])
def test_the_input_is_never_the_output(source, monkeypatch, extra):
    before = source.read_bytes()
    with pytest.raises(UserError) as refused:
        convert(monkeypatch, source, source, *extra)
    assert str(refused.value) == (f"--out {source} is the --in file: the conversion would replace its input; "
                                  f"give another --out")
    assert source.read_bytes() == before


def test_an_existing_out_is_replaced_only_with_overwrite(source, tmp_path, monkeypatch):
    existing = tmp_path / "model_final.pth"
    existing.write_bytes(b"trained")
    with pytest.raises(UserError) as refused:
        convert(monkeypatch, source, existing)
    assert str(refused.value) == f"--out {existing} exists: give another --out, or pass --overwrite to replace it"
    assert existing.read_bytes() == b"trained"
    assert convert(monkeypatch, source, existing, "--overwrite") == 0
    assert torch.load(existing, weights_only=True)["meta"]["source"] == "torchvision"


def test_an_out_that_is_a_folder_or_under_a_file_is_one_line(source, tmp_path, monkeypatch):
    with pytest.raises(UserError) as refused:
        convert(monkeypatch, source, tmp_path)
    assert str(refused.value) == f"--out {tmp_path} is a folder: give the file to write, such as {tmp_path / 'converted.pth'}"
    with pytest.raises(UserError) as refused:
        convert(monkeypatch, source, source / "x.pth")
    assert str(refused.value) == f"--out {source / 'x.pth'}: {source} is a file, so no folder can be made there"
