"""Detections for image and video files: predictions.json plus annotated copies of the images and videos."""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings

import cv2
import numpy as np
from tqdm import tqdm

from resnet_engine.errors import UserError

from .data.image_io import IMAGE_SUFFIXES, BadImageError, exif_orientation
from .predictor import Predictor
from .visualize import draw_detections, write_rgb

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")
# Annotated videos are written as MPEG-4 part 2, which OpenCV's own builds encode without FFmpeg extras.
VIDEO_FOURCC = "mp4v"
PREDICTIONS_NAME = "predictions.json"
VIS_NAME = "vis"
# An earlier run's predictions.json and vis/ wait under these names until the new run has made something.
EARLIER_SUFFIX = ".earlier"


class UnreadableVideoError(BadImageError):
    """A video file OpenCV cannot open or decode a frame of: skipped as an unreadable image is."""


def is_video(path: str) -> bool:
    return path.lower().endswith(VIDEO_SUFFIXES)


def list_inputs(inputs: list[str], written: str | None = None) -> list[str]:
    """Files named directly, plus the images and videos inside named folders and their subfolders
    (sorted; other files there are left alone); a file named twice is listed once. A folder's files
    under ``written`` are left out: the annotated copies of an earlier run are not inputs."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(os.path.join(folder, name) for folder, _, names in os.walk(item) for name in names
                           if name.lower().endswith(IMAGE_SUFFIXES + VIDEO_SUFFIXES))
            paths.extend(path for path in found if not (written and is_within(path, written)))
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"input not found: {item} (give image or video files, or folders of them)")
    if not paths:
        raise UserError(f"no images or videos ({', '.join(IMAGE_SUFFIXES + VIDEO_SUFFIXES)}) in {', '.join(inputs)}")
    unique = {os.path.realpath(path): path for path in reversed(paths)}
    return [path for path in paths if unique[os.path.realpath(path)] is path]


def is_within(path: str, folder: str) -> bool:
    folder = os.path.realpath(folder)
    return os.path.commonpath([os.path.realpath(path), folder]) == folder


def relative_names(paths: list[str]) -> dict[str, str]:
    """Each file's path below the deepest folder holding them all, so that a/x.jpg and b/x.jpg keep
    apart when their annotated copies are written into one folder."""
    root = os.path.commonpath([os.path.dirname(os.path.abspath(path)) for path in paths])
    return {path: os.path.relpath(os.path.abspath(path), root) for path in paths}


def predictions_for_file(path: str, detections: dict, frame: int | None = None,
                         size: tuple[int, int] | None = None, orientation: int | None = None) -> list[dict]:
    """COCO-style records (bbox as x, y, w, h) keyed by the file (and a video's frame, from 0) instead
    of an image id; tools/eval_det.py --det matches the file names to a COCO json's images. ``size``,
    (width, height) of the pixels the boxes are in, and ``orientation``, the EXIF orientation those
    pixels were turned by (1: the stored pixels), let the scoring check them against the json's."""
    where = {"file_name": path} if frame is None else {"file_name": path, "frame": frame}
    if size is not None:
        where.update(width=int(size[0]), height=int(size[1]))
    if orientation is not None:
        where.update(exif_orientation=int(orientation))
    records = []
    for (x1, y1, x2, y2), score, category, name in zip(detections["boxes"], detections["scores"],
                                                        detections["category_ids"], detections["class_names"]):
        records.append({**where, "category_id": int(category), "category_name": name,
                        "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2),
                                 round(float(y2 - y1), 2)],
                        "score": round(float(score), 5)})
    return records


class PredictionsWriter:
    """A JSON list written one image at a time: what was predicted is on disk however the run ends.

    Each image's records are flushed as they come; the closing bracket is written on any exit from
    the ``with`` block (an error, Ctrl-C, SIGTERM under ``resnet_engine.cli.sigterm_as_interrupt``). Only a
    process killed outright leaves the list unclosed, every record before the cut still complete.
    """

    def __init__(self, path: str):
        self.path = path
        self.count = 0
        self.inputs = 0  # images and video frames written, with or without detections

    def __enter__(self) -> PredictionsWriter:
        self.handle = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - closed in __exit__
        self.handle.write("[")
        return self

    def write(self, records: list[dict]) -> None:
        """The records of one image or video frame."""
        for record in records:
            self.handle.write(("\n" if self.count == 0 else ",\n") + json.dumps(record))
            self.count += 1
        self.inputs += 1
        self.handle.flush()

    def __exit__(self, *exc_info) -> None:
        self.handle.write("\n]\n")
        self.handle.close()


def earlier_run_outputs(out_dir: str) -> list[str]:
    """The outputs of an earlier run that ``out_dir`` holds: predictions.json, vis."""
    return [name for name in (PREDICTIONS_NAME, VIS_NAME) if os.path.exists(os.path.join(out_dir, name))]


class ReplacedOutputs:
    """This run's predictions.json and vis/ in place of an earlier run's, once this run has detected in an
    image or a video frame: while it runs the earlier files are set aside (NAME.earlier); on leaving the
    ``with`` block, also when the run stops, they are deleted if it has, and put back in place of its own
    if it has not (every file unreadable, or stopped before the first)."""

    def __init__(self, out_dir: str):
        self.predictions = os.path.join(out_dir, PREDICTIONS_NAME)
        self.vis = os.path.join(out_dir, VIS_NAME)
        self.writer = PredictionsWriter(self.predictions)

    def __enter__(self) -> ReplacedOutputs:
        for path in (self.predictions, self.vis):
            remove_outputs(path + EARLIER_SUFFIX)  # what a run killed outright had set aside
            if os.path.exists(path):
                os.replace(path, path + EARLIER_SUFFIX)
        self.writer.__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self.writer.__exit__(*exc_info)
        made_something = self.writer.inputs > 0
        for path in (self.predictions, self.vis):
            if made_something:
                remove_outputs(path + EARLIER_SUFFIX)
            else:
                remove_outputs(path)
                if os.path.exists(path + EARLIER_SUFFIX):
                    os.replace(path + EARLIER_SUFFIX, path)


def remove_outputs(*paths: str) -> None:
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)


def infer_files(cfg, weights: str, inputs: list[str], out_dir: str, vis_thresh: float | None = 0.5,
                device: str = "auto", max_images: int | None = None, progress: bool = True,
                upright: bool = True) -> list[dict]:
    """Run the detector on every image and every frame of every video; returns the predictions, written
    to OUT/predictions.json as they are made, with annotated copies under OUT/vis/ unless
    ``vis_thresh`` is None. Unreadable files and images too thin to detect in are skipped and counted.
    ``upright``: photos as a viewer shows them (EXIF orientation applied); False: their stored pixels,
    the frame COCO annotations (and tools/eval_det.py) use. ``max_images`` 0 or None: all. An earlier
    run's predictions.json and vis/ in OUT are replaced once this run has detected in a file
    (ReplacedOutputs); tools/infer.py asks for --overwrite first."""
    paths = list_inputs(inputs, os.path.join(out_dir, VIS_NAME))[:max_images or None]
    predictor = Predictor(cfg, weights, device)
    os.makedirs(out_dir, exist_ok=True)
    with ReplacedOutputs(out_dir) as outputs:
        predictions, skipped = detect_files(predictor, paths, outputs, vis_thresh, progress, upright)
    if len(skipped) == len(paths):
        # An empty predictions.json and exit code 0 would read as "nothing detected".
        raise BadImageError(f"none of the {len(paths)} input files could be read (e.g. {skipped[0]}): nothing was "
                            f"detected")
    logger.info("%d detections on %d files written to %s%s", len(predictions), len(paths) - len(skipped),
                outputs.predictions, f"; annotated copies in {outputs.vis}" if vis_thresh is not None else "")
    return predictions


def detect_files(predictor: Predictor, paths: list[str], outputs: ReplacedOutputs, vis_thresh: float | None,
                 progress: bool, upright: bool) -> tuple[list[dict], list[str]]:
    """The predictions of ``paths``, written to ``outputs`` as they are made, and the files skipped."""
    names = relative_names(paths)
    vis_dir = outputs.vis if vis_thresh is not None else None
    predictions, skipped, current = [], [], None
    try:
        for path in tqdm(paths, desc="inference", unit="file", disable=not progress):
            current = path
            vis_path = os.path.join(vis_dir, names[path]) if vis_dir else None
            try:
                if is_video(path):
                    records = infer_video(predictor, path, vis_path, vis_thresh, outputs.writer, progress)
                else:
                    records = infer_image(predictor, path, vis_path, vis_thresh, outputs.writer, upright)
            except BadImageError as error:
                warnings.warn(f"skipping: {error}", stacklevel=2)
                skipped.append(path)
                continue
            predictions.extend(records)
    except BaseException:
        where = f"stopped at file {paths.index(current) + 1 if current else 0} of {len(paths)} ({current})"
        if outputs.writer.inputs:
            logger.warning("%s; the %d detections written before it are in %s", where, outputs.writer.count,
                           outputs.predictions)
        else:
            logger.warning("%s before any detection was made; %s is left as it was", where,
                           os.path.dirname(outputs.predictions))
        raise
    finally:
        if skipped:
            kind = "files" if any(is_video(path) for path in paths) else "images"
            warnings.warn(f"{len(skipped)} of {len(paths)} {kind} were skipped (unreadable, or too thin to "
                          f"detect in), e.g. {skipped[0]}", stacklevel=2)
    return predictions, skipped


def infer_image(predictor: Predictor, path: str, vis_path: str | None, vis_thresh: float | None,
                writer: PredictionsWriter, upright: bool = True) -> list[dict]:
    image, detections = predictor.predict_file(path, upright)
    records = predictions_for_file(path, detections, size=(image.shape[1], image.shape[0]),
                                   orientation=exif_orientation(path) if upright else 1)
    writer.write(records)
    if vis_path:
        os.makedirs(os.path.dirname(vis_path), exist_ok=True)
        write_rgb(vis_path, annotated(image, detections, vis_thresh, predictor.class_names))
    return records


def infer_video(predictor: Predictor, path: str, vis_path: str | None, vis_thresh: float | None,
                writer: PredictionsWriter, progress: bool = True) -> list[dict]:
    """Detections of each frame of the video ``path``, written as they come, and the annotated video
    at ``vis_path`` with an .mp4 suffix (same size and frame rate)."""
    # FFmpeg's own log lines (e.g. "moov atom not found") would stand beside the one-line warning below.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    capture = cv2.VideoCapture(path)
    records, video_out = [], None
    try:
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            raise UnreadableVideoError(f"cannot read video: {path} (a damaged file, or a format the OpenCV of this "
                                       f"machine cannot decode: convert it to MP4 or extract its frames as images)")
        total = max(0, int(capture.get(cv2.CAP_PROP_FRAME_COUNT))) or None  # unknown for some streams
        bar = tqdm(total=total, desc=os.path.basename(path), unit="frame", leave=False, disable=not progress)
        index = 0
        while ok:
            image = np.ascontiguousarray(frame[:, :, ::-1])  # OpenCV decodes BGR
            detections = predictor(image)
            frame_records = predictions_for_file(path, detections, frame=index)
            writer.write(frame_records)
            records.extend(frame_records)
            if vis_path:
                video_out = video_out or open_video_writer(vis_path, capture, image.shape)
                video_out.write(annotated(image, detections, vis_thresh, predictor.class_names)[:, :, ::-1])
            bar.update()
            index += 1
            ok, frame = capture.read()
        bar.close()
    finally:
        capture.release()
        if video_out is not None:
            video_out.release()
    return records


def open_video_writer(vis_path: str, capture: cv2.VideoCapture, shape: tuple) -> cv2.VideoWriter:
    """An MPEG-4 writer at ``vis_path`` (.mp4 appended unless it ends so) with the source's frame rate."""
    path = vis_path if vis_path.lower().endswith(".mp4") else vis_path + ".mp4"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fps = capture.get(cv2.CAP_PROP_FPS)
    height, width = shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps if fps > 0 else 25.0, (width, height))
    if not writer.isOpened():
        raise UserError(f"cannot write the annotated video {path}: the OpenCV of this machine has no "
                        f"{VIDEO_FOURCC} encoder (pass --no-vis to write predictions.json only)")
    return writer


def annotated(image: np.ndarray, detections: dict, vis_thresh: float, class_names: list[str]) -> np.ndarray:
    keep = detections["scores"] >= vis_thresh
    return draw_detections(image, detections["boxes"][keep], detections["labels"][keep],
                           detections["scores"][keep], class_names)
