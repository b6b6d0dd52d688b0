"""The forms that the detector's forward takes while traced (detection/modeling/traceable.py and
the anchor grid): against torchvision's ops and hand-computed orders, eagerly, traced at one size
and run at others, and through onnxruntime."""

import warnings

import numpy as np
import onnxruntime
import pytest
import torch
from torchvision.ops import batched_nms as torchvision_batched_nms
from torchvision.ops import clip_boxes_to_image

from detection.modeling.anchors import AnchorGenerator
from detection.modeling.traceable import batched_nms, clip_boxes, graph_nms, top_count


def trace(function, *example):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on constants
        return torch.jit.trace(function, example, check_trace=False)


def grid_boxes(count: int, seed: int = 0) -> torch.Tensor:
    """``count`` 10 x 10 boxes, each overlapping only the next one (IoU 0.33 when shifted by 5)."""
    generator = torch.Generator().manual_seed(seed)
    starts = torch.arange(count, dtype=torch.float32) * 5 + torch.rand(count, generator=generator) * 0.1
    return torch.stack([starts, torch.zeros(count), starts + 10, torch.full((count,), 10.0)], dim=1)


def tied_scores(count: int, seed: int = 0) -> torch.Tensor:
    """Scores drawn from 7 values: many exact ties."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 7, (count,), generator=generator).float() / 7


def index_order_reference(scores: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``kept`` ordered by score, ties by index: numpy's stable sort, an independent reference."""
    kept = np.sort(kept.numpy())
    return torch.from_numpy(kept[np.argsort(-scores.numpy()[kept], kind="stable")])


def test_top_count_follows_the_traced_size():
    assert top_count(5, 3) == 3 and top_count(5, 9) == 5

    def best(values):
        return values.topk(top_count(5, values.shape[0])).values

    traced = trace(best, torch.rand(9))
    for count in (2, 5, 12):
        values = torch.rand(count)
        torch.testing.assert_close(traced(values), values.sort(descending=True).values[:5])


def test_clip_boxes_follows_the_traced_size():
    boxes = torch.tensor([[-5.0, -1.0, 50.0, 20.0], [3.0, 4.0, 5.0, 6.0]])
    traced = trace(lambda b, image: clip_boxes(b, (image.shape[-2], image.shape[-1])), boxes, torch.zeros(30, 40))
    for height, width in [(30, 40), (10, 4), (100, 100)]:
        expected = clip_boxes_to_image(boxes, (height, width))
        torch.testing.assert_close(traced(boxes, torch.zeros(height, width)), expected, atol=0, rtol=0)
        torch.testing.assert_close(clip_boxes(boxes, (height, width)), expected, atol=0, rtol=0)
    # (R, K, 4) per-class boxes, as the box head clips them
    per_class = boxes[:, None].expand(2, 3, 4)
    torch.testing.assert_close(traced(per_class, torch.zeros(10, 4)), clip_boxes_to_image(per_class, (10, 4)))


@pytest.mark.parametrize("count", [300, 1500])  # torchvision's two forms: offsets up to 1000 boxes, per group above
def test_nms_keeps_torchvision_boxes_with_ties_in_index_order(count):
    boxes, scores = grid_boxes(count), tied_scores(count)
    groups = torch.randint(0, 4, (count,), generator=torch.Generator().manual_seed(1))
    reference = torchvision_batched_nms(boxes, scores, groups, 0.3)
    assert torch.equal(batched_nms(boxes, scores, groups, 0.3), reference)  # eagerly: torchvision's own result
    with graph_nms():
        ordered = batched_nms(boxes, scores, groups, 0.3)
    assert set(ordered.tolist()) == set(reference.tolist())
    assert 0 < len(ordered) < count  # NMS removed some boxes and kept others
    assert torch.equal(ordered, index_order_reference(scores, ordered))


def test_traced_nms_follows_the_number_of_boxes():
    """Traced on 1500 boxes, run on fewer, more and none: torchvision's boxes, ties in index order."""
    traced = trace(lambda b, s, g: batched_nms(b, s, g, 0.3), grid_boxes(1500), tied_scores(1500),
                   torch.randint(0, 4, (1500,)))
    for count in (0, 1, 300, 2000):
        boxes, scores = grid_boxes(count, seed=count), tied_scores(count, seed=count)
        groups = torch.randint(0, 4, (count,), generator=torch.Generator().manual_seed(count))
        kept = traced(boxes, scores, groups)
        reference = torchvision_batched_nms(boxes, scores, groups, 0.3)
        assert set(kept.tolist()) == set(reference.tolist()), count
        assert torch.equal(kept, index_order_reference(scores, kept)), count


class NMS(torch.nn.Module):
    def forward(self, boxes, scores, groups):
        return batched_nms(boxes, scores, groups, 0.3)


def test_onnx_nms_keeps_the_eager_graph_order(tmp_path):
    """onnxruntime's NMS keeps torchvision's boxes with tied scores in index order too."""
    path = str(tmp_path / "nms.onnx")
    example = (grid_boxes(1500), tied_scores(1500), torch.randint(0, 4, (1500,)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(NMS(), example, path, dynamo=False, opset_version=17, input_names=["b", "s", "g"],
                          dynamic_axes={"b": {0: "n"}, "s": {0: "n"}, "g": {0: "n"}})
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    for count in (300, 2000):
        boxes, scores = grid_boxes(count, seed=count), tied_scores(count, seed=count)
        groups = torch.randint(0, 4, (count,), generator=torch.Generator().manual_seed(count))
        (kept,) = session.run(None, {"b": boxes.numpy(), "s": scores.numpy(), "g": groups.numpy()})
        with graph_nms():
            expected = batched_nms(boxes, scores, groups, 0.3)
        assert torch.equal(torch.from_numpy(kept), expected), count


def test_anchor_grid_follows_the_traced_size():
    """Anchors traced for one padded size equal the eager (cached) anchors of others, whose first
    anchors are the cell anchors shifted by hand."""
    generator = AnchorGenerator([[32], [64]], [0.5, 1.0, 2.0])

    def anchors(padded, p2, p3):
        return tuple(generator(padded.shape[-2:], [p2.shape[-2:], p3.shape[-2:]], p2.device))

    traced = trace(anchors, torch.zeros(64, 96), torch.zeros(16, 24), torch.zeros(8, 12))
    for height, width in [(64, 96), (32, 160)]:
        maps = torch.zeros(height // 4, width // 4), torch.zeros(height // 8, width // 8)
        expected = generator((height, width), [m.shape for m in maps], torch.device("cpu"))
        for traced_level, level in zip(traced(torch.zeros(height, width), *maps), expected):
            torch.testing.assert_close(traced_level, level, atol=0, rtol=0)
        # Level 1 (stride 8): the second position's three anchors are the first's moved 8 px right.
        torch.testing.assert_close(expected[1][3:6] - expected[1][0:3], torch.tensor([[8.0, 0, 8, 0]] * 3))
    torch.testing.assert_close(expected[0][1], torch.tensor([-16.0, -16.0, 16.0, 16.0]))  # ratio 1, size 32
