"""Generate the synthetic shapes dataset (COCO format) used by the embedded default config.

    python tools/make_shapes.py [--root datasets/shapes] [--train 1500] [--val 300] [--seed 0] [--overwrite]
"""

from __future__ import annotations

import os
import shutil

from resnet_engine.cli import ToolParser, check_output_folder, non_negative_int, positive_int, run_cli
from resnet_engine.errors import UserError


def main() -> int:
    from detection.data.shapes import DEFAULT_ROOT, SPLITS, generate_split

    parser = ToolParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=DEFAULT_ROOT, help=f"folder of the dataset (default: {DEFAULT_ROOT})")
    parser.add_argument("--train", type=positive_int, default=SPLITS["train"], help="number of training images")
    parser.add_argument("--val", type=positive_int, default=SPLITS["val"], help="number of validation images")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the splits already in --root (their images and annotation files)")
    args = parser.parse_args()
    check_output_folder(args.root, "--root")
    splits = (("train", args.train), ("val", args.val))
    existing = [path for split, _ in splits for path in split_paths(args.root, split) if os.path.exists(path)]
    if existing and not args.overwrite:
        raise UserError(f"--root {args.root} already holds {existing[0]}: give another --root, or --overwrite to "
                        f"replace its splits")
    for split, count in splits:
        for path in split_paths(args.root, split):  # no image of an earlier, larger split left beside the new json
            if os.path.isdir(path):
                shutil.rmtree(path)
        path = generate_split(args.root, split, count, args.seed)
        print(f"{split}: {count} images, annotations in {path}")
    return 0


def split_paths(root: str, split: str) -> list[str]:
    """What a split of the shapes dataset is on disk: its annotation file and its image folder."""
    return [os.path.join(root, "annotations", f"instances_{split}.json"), os.path.join(root, split)]


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
