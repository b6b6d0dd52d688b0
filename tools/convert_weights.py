"""Convert detector weights from another library into this toolkit's format.

    python tools/convert_weights.py --from torchvision --in fasterrcnn_resnet50_fpn.pth --out tv_r50_fpn.pth
    python tools/eval_det.py --cfg configs/tv_fasterrcnn_r50_fpn.yaml --weights tv_r50_fpn.pth
"""

from __future__ import annotations

from resnet_engine.cli import ToolParser, check_derived_file, run_cli


def main() -> int:
    parser = ToolParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", required=True, choices=["torchvision"],
                        help="library the weights come from")
    parser.add_argument("--in", dest="input", required=True, help="input state dict (.pth or .safetensors)")
    parser.add_argument("--out", required=True, help="output file (a missing folder is made)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args()
    check_output(args.out, args.input, args.overwrite)
    from detection.convert import convert_file

    meta = convert_file(args.input, args.out)
    print(f"wrote {args.out}: ResNet-{meta['depth']} FPN, {meta['num_classes']} classes "
          f"(use configs/tv_fasterrcnn_r50_fpn.yaml with model.backbone.depth={meta['depth']})")
    return 0


def check_output(out: str, source: str, overwrite: bool) -> None:
    """Before the conversion: --out must be a file that can be written, and an existing one (the input, a
    trained checkpoint) is replaced only on request."""
    check_derived_file(out, "--out", "converted.pth", source, "--in", "the conversion would replace its input",
                       overwrite)


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
