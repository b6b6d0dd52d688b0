"""Run a trained detector on image and video files; write predictions.json and annotated copies.

    python tools/infer.py --weights output/shapes/model_final.pth --inputs datasets/shapes/val --out output/infer
    python tools/infer.py --cfg configs/coco_r101.yaml --weights W.pth --inputs a.jpg clips/ --vis-thresh 0.7

Folders are searched with their subfolders for images and videos. predictions.json grows as the
files are processed (a stopped run keeps what it made): COCO-style records keyed by file_name (and
frame, for videos), with the size and the EXIF orientation of the pixels detected in, which
`tools/eval_det.py --gt ANN.json --det predictions.json` scores by matching the file names to the
json's (a photo turned or mirrored upright is refused there: detect with --stored-pixels). Annotated
images and videos (MP4) go to OUT/vis/ under the inputs' paths relative to their common folder.
Files that cannot be read, and images too thin to detect in, are skipped and counted. An OUT that
holds an earlier run's predictions.json is refused unless --overwrite: that run's files, vis/ included,
are then replaced once the new run has detected in a file (a run that reads none leaves them as they
were).
"""

from __future__ import annotations

import os

from resnet_engine.cli import (
    check_output_folder,
    config_parser,
    run_cli,
    sigterm_as_interrupt,
    unit_fraction,
)
from resnet_engine.errors import UserError

DEFAULT_CFG = "configs/shapes.yaml"  # the shipped file unless the working folder has its own


def main() -> int:
    parser = config_parser(__doc__.splitlines()[0], default_cfg=DEFAULT_CFG)
    parser.add_argument("--weights", required=True, help="detector weights (model_final.pth, a checkpoint, converted)")
    parser.add_argument("--inputs", nargs="+", required=True, help="image or video files, or folders of them")
    parser.add_argument("--out", default="output/infer", help="folder for predictions.json and annotated images "
                        "(one that holds an earlier run's: see --overwrite)")
    parser.add_argument("--vis-thresh", type=unit_fraction, default=0.5, help="lowest score drawn on the images")
    parser.add_argument("--no-vis", action="store_true", help="only write predictions.json")
    parser.add_argument("--device", default="auto", help="auto (the GPU when there is one), cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the predictions.json and vis/ of an earlier run in --out")
    parser.add_argument("--stored-pixels", action="store_true",
                        help="detect in photos' stored pixels, not turned upright by their EXIF orientation: the "
                             "frame of COCO annotations, for scoring predictions.json with tools/eval_det.py --det")
    args = parser.parse_args()  # overrides after --inputs are overrides all the same (OverridesParser)
    check_output_folder(args.out, "--out")

    from detection.config import load_detection_config
    from detection.predict_files import infer_files

    if not args.overwrite:
        refuse_earlier_run(args.out)

    cfg = load_detection_config(args.cfg, args.overrides)
    with sigterm_as_interrupt():
        infer_files(cfg, args.weights, args.inputs, args.out, vis_thresh=None if args.no_vis else args.vis_thresh,
                    device=args.device, progress=not args.no_progress, upright=not args.stored_pixels)
    return 0


def refuse_earlier_run(out_dir: str) -> None:
    """A re-run into the same --out (output/infer by default) would replace the earlier predictions.json
    and mix its annotated images with the new ones: only on request."""
    from detection.predict_files import earlier_run_outputs

    earlier = [name + "/" if os.path.isdir(os.path.join(out_dir, name)) else name
               for name in earlier_run_outputs(out_dir)]
    if earlier:
        raise UserError(f"--out {out_dir} holds an earlier run's {' and '.join(earlier)}: give another --out, or "
                        f"pass --overwrite to replace that run")


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
