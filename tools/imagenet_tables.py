"""The paper's ImageNet tables (2: plain vs ResNet, 3: shortcut options and depth, 4: multi-scale testing) for trained classifiers.

    python tools/imagenet_tables.py --table 2 --weights plain-18=output/ilsvrc_cls_plain18/model_final.pth \\
        --weights ResNet-18=output/ilsvrc_cls_r18/model_final.pth data.root=/data/ilsvrc
    python tools/imagenet_tables.py --table 3 --weights "ResNet-34 B=output/ilsvrc_cls_r34b/model_final.pth"
    python tools/imagenet_tables.py --table 4 --weights ResNet-50=torchvision:IMAGENET1K_V1 data.root=/data/ilsvrc
    python tools/imagenet_tables.py --table 3          # the paper's figures alone, every row "not run"

Each --weights NET=W tests W as the row NET (plain-18, plain-34, ResNet-18, ResNet-34 A/B/C, ResNet-50/101/152;
case, spaces and hyphens do not matter) on the val images with the table's protocol: 10 crops for Tables 2
and 3; for Table 4, the whole image at shorter sides 224, 256, 384, 480 and 640 and their mirror images.
W is a checkpoint of tools/train_cls.py (tested with its own config) or a state dict file or torchvision:/
timm: name (tested with the row's configs/ilsvrc_cls_*.yaml). key=value overrides apply to every row after
the protocol (data.root=DIR; test.max_images=N for a quick look, noted in the table). Prints the table and
writes OUT/table<N>.md and OUT/table<N>.json (OUT: --out, default output/imagenet_table<N>), and each
row's config and errors under OUT/<row>/.
"""

from __future__ import annotations

from resnet_engine.cli import OverridesParser, run_cli


def main() -> int:
    parser = OverridesParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", type=int, required=True, choices=(2, 3, 4), help="the paper's table")
    parser.add_argument("--weights", action="append", default=[], metavar="NET=W",
                        help="weights W to test as the row NET, such as ResNet-50=output/ilsvrc_cls_r50/model_final.pth "
                             "(repeat for more rows)")
    parser.add_argument("--out", help="folder for the table and each row's results (default: output/imagenet_table<N>)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides for every row, after the table's protocol, e.g. data.root=/data/ilsvrc")
    args = parser.parse_args()

    from classification.imagenet_tables import measure_table, parse_weights_options, table_markdown
    from resnet_engine.cli import check_output_folder
    from resnet_engine.distributed import is_main_process

    out = args.out or f"output/imagenet_table{args.table}"
    check_output_folder(out, "--out")
    weights = parse_weights_options(args.table, args.weights)
    table = measure_table(args.table, weights, args.overrides, out)
    if is_main_process():
        print(table_markdown(table))
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
