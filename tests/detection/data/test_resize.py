"""The one test-time resize (detection.data.transforms.resize_shortest_edge) that the loader, the
test-time augmentations and the exported detector share: its sizes by hand, its pixels against
OpenCV's, and its trace against its eager result at other sizes."""

import warnings

import cv2
import numpy as np
import pytest
import torch

from detection.data.transforms import EvalTransform, resize_shortest_edge, shortest_edge_size


@pytest.mark.parametrize(("height", "width", "short", "max_size", "expected"), [
    (400, 300, 320, 640, (427, 320)),      # 400 * 320 / 300 = 426.67
    (100, 1000, 320, 640, (64, 640)),      # the longer side capped: scale 0.64
    (400, 401, 600, 10_000, (600, 602)),   # 401 * 1.5 = 601.5, half to even: 602
    (400, 403, 600, 10_000, (600, 604)),   # 403 * 1.5 = 604.5, half to even: 604
    (320, 448, 320, 640, (320, 448)),      # already at the test scale
    (500, 800, 600, 1000 * 600 / 800, (469, 750)),  # a test-time scale's cap: 750 / 800 = 0.9375
])
def test_sizes_by_hand(height, width, short, max_size, expected):
    assert shortest_edge_size(height, width, short, max_size) == expected
    # Sizes as tensors (what a trace records) give the same sizes, computed in the graph.
    traced_form = shortest_edge_size(torch.tensor(height), torch.tensor(width), short, max_size)
    assert tuple(int(side) for side in traced_form) == expected


def test_tensor_sizes_equal_python_sizes_everywhere():
    """Sizes from 1 to 700 against a few sides and scales (some products land on halves): the
    tensor form, in float64, rounds as Python does."""
    for short, max_size in [(600, 1000), (320, 640), (800, 1333), (500, 1000 * 500 / 600)]:
        for width in (1, 7, 300, 401, 403, 999):
            for height in range(1, 701):
                expected = shortest_edge_size(height, width, short, max_size)
                new_height, new_width = shortest_edge_size(torch.tensor(height), torch.tensor(width), short, max_size)
                assert (int(new_height), int(new_width)) == expected, (height, width, short, max_size)


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_uint8_images_are_opencv_bilinear():
    """The loader's numpy image and a uint8 CHW tensor get OpenCV's pixels exactly, at a scale where
    bilinear and area interpolation differ."""
    image = noise(100, 130)
    expected = cv2.resize(image, (78, 60), interpolation=cv2.INTER_LINEAR)  # 60 / 100
    np.testing.assert_array_equal(resize_shortest_edge(image, 60, 1000), expected)
    np.testing.assert_array_equal(EvalTransform(60, 1000)(image), expected)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    resized = resize_shortest_edge(tensor, 60, 1000)
    assert resized.dtype == torch.uint8
    np.testing.assert_array_equal(resized.permute(1, 2, 0).numpy(), expected)


def test_float_tensors_are_the_same_interpolation_in_float():
    """A float CHW tensor goes through F.interpolate: OpenCV's bilinear on float32 pixels, shrinking
    and enlarging, to the rounding of OpenCV's float32 weights (1e-5 of the 0-255 range), far
    closer than area interpolation, the other common downscaling."""
    image = noise(90, 70).astype(np.float32)
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    for short, size in [(40, (51, 40)), (150, (193, 150))]:  # 90 * 40 / 70 = 51.4; 90 * 150 / 70 = 192.9
        expected = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
        resized = resize_shortest_edge(tensor, short, 1000)
        assert resized.dtype == torch.float32 and tuple(resized.shape) == (3, *size)
        np.testing.assert_allclose(resized.permute(1, 2, 0).numpy(), expected, atol=3e-3, rtol=0)
    area = cv2.resize(image, (40, 51), interpolation=cv2.INTER_AREA)
    assert np.abs(resize_shortest_edge(tensor, 40, 1000).permute(1, 2, 0).numpy() - area).max() > 10


def test_an_image_at_its_size_is_returned_as_it_is():
    image = noise(320, 448)
    assert resize_shortest_edge(image, 320, 640) is image
    tensor = torch.from_numpy(image).permute(2, 0, 1)
    assert resize_shortest_edge(tensor, 320, 640) is tensor
    floats = tensor.float()
    assert resize_shortest_edge(floats, 320, 640) is floats


def test_traced_resize_follows_the_input_size():
    """Traced at one size, the resize gives the eager pixels at others (including a half-to-even
    rounding and an image already at its size, which the graph resizes to the same pixels)."""
    def resize(image):
        return resize_shortest_edge(image.float(), 600, 10_000)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(resize, torch.zeros(3, 300, 400, dtype=torch.uint8))
    for height, width in [(400, 403), (600, 800), (250, 190)]:
        image = torch.from_numpy(noise(height, width, seed=height)).permute(2, 0, 1)
        expected = resize(image)
        actual = traced(image)
        assert actual.shape == expected.shape
        torch.testing.assert_close(actual, expected, atol=0, rtol=0)
