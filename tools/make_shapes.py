"""Generate the synthetic shapes dataset (COCO format) used by the embedded default config.

    python tools/make_shapes.py [--root datasets/shapes] [--train 1500] [--val 300] [--seed 0]
"""

from __future__ import annotations

from resnet_engine.cli import ToolParser, check_output_folder, non_negative_int, positive_int, run_cli


def main() -> int:
    from detection.data.shapes import DEFAULT_ROOT, SPLITS, generate_split

    parser = ToolParser(description="generate the synthetic shapes detection dataset")
    parser.add_argument("--root", default=DEFAULT_ROOT)
    parser.add_argument("--train", type=positive_int, default=SPLITS["train"], help="number of training images")
    parser.add_argument("--val", type=positive_int, default=SPLITS["val"], help="number of validation images")
    parser.add_argument("--seed", type=non_negative_int, default=0)
    args = parser.parse_args()
    check_output_folder(args.root, "--root")
    for split, count in (("train", args.train), ("val", args.val)):
        path = generate_split(args.root, split, count, args.seed)
        print(f"{split}: {count} images, annotations in {path}")
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
