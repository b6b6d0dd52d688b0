"""Drawing detections on images (annotated outputs of tools/infer.py and make demo)."""

from __future__ import annotations

import colorsys

import cv2
import numpy as np


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable RGB colour per class (golden-ratio hue steps)."""
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes, labels, scores=None, names: list[str] | None = None,
                    thickness: int | None = None) -> np.ndarray:
    """A copy of the RGB ``image`` with xyxy ``boxes`` drawn and captioned "name score".

    ``labels`` are 1-based class indices; ``names[label - 1]`` captions them when given.
    """
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    thickness = thickness or max(1, round(min(height, width) / 300))
    font_scale = max(0.35, min(height, width) / 900)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels).reshape(-1)
    for index, (box, label) in enumerate(zip(boxes, labels)):
        colour = class_colour(int(label))
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, thickness, cv2.LINE_AA)
        caption = names[int(label) - 1] if names and 0 < int(label) <= len(names) else str(int(label))
        if scores is not None:
            caption += f" {float(scores[index]):.2f}"
        (text_w, text_h), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 1)
        top = y1 - text_h - baseline if y1 - text_h - baseline >= 0 else y1
        cv2.rectangle(canvas, (x1, top), (x1 + text_w, top + text_h + baseline), colour, -1)
        cv2.putText(canvas, caption, (x1, top + text_h), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return canvas


def write_rgb(path: str, image: np.ndarray) -> None:
    """Write an RGB array with OpenCV (which expects BGR)."""
    if not cv2.imwrite(path, cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write image {path}")
