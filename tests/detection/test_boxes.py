"""detection/boxes.py: the box geometry that data and models share."""

import numpy as np
import torch

from detection.boxes import flip_boxes


def test_flip_boxes_round_trip():
    boxes = torch.tensor([[2.0, 3.0, 7.0, 9.0]])
    assert torch.equal(flip_boxes(boxes, 20), torch.tensor([[13.0, 3.0, 18.0, 9.0]]))
    assert torch.equal(flip_boxes(flip_boxes(boxes, 20), 20), boxes)


def test_flip_boxes_takes_numpy_arrays_and_keeps_their_dtype():
    """The localization crops' boxes are float32 arrays, empty ones too; the input is left as it was."""
    array = np.array([[2.0, 3.0, 7.0, 9.0]], np.float32)
    flipped = flip_boxes(array, 20)
    assert flipped.dtype == np.float32 and flipped.tolist() == [[13.0, 3.0, 18.0, 9.0]] and array[0, 0] == 2.0
    assert flip_boxes(np.zeros((0, 4), np.float32), 20).shape == (0, 4)
