"""The layer responses (paper Fig. 7): the std of each 3x3 layer's output of trained CIFAR nets on the test set.

    python tools/layer_responses.py --weights output/degradation/plain-20/model_final.pth \
        --weights output/degradation/ResNet-20/model_final.pth --out output/responses
    python tools/layer_responses.py --weights W --out OUT data.root=/data/cifar   # the nets' test images elsewhere

Each --weights is a checkpoint of tools/train_cls.py or tools/degradation.py (a CIFAR classifier; its config
and pixel mean come with it). Writes OUT/responses.json ({"nets": [{"net", "std": one value per 3x3 layer, in
layer order, and the images the std is over: "split", "dataset", "data_root", "synthetic", "num_images"}]}) and
OUT/responses.png (in layer order, and sorted by magnitude).
"""

from __future__ import annotations

from resnet_engine.cli import OverridesParser, check_output_folder, run_cli


def main() -> int:
    parser = OverridesParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", action="append", required=True,
                        help="a CIFAR classifier checkpoint (model_final.pth); repeat for more nets")
    parser.add_argument("--out", default="output/responses", help="the output folder (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="data.* (e.g. data.root=DIR), device, test.ims_per_batch")
    args = parser.parse_args()
    check_output_folder(args.out, "--out")

    from classification.layer_responses import (
        check_measurement_overrides,
        measure_checkpoint,
        write_responses,
    )

    check_measurement_overrides(args.overrides)
    nets = [measure_checkpoint(path, args.overrides) for path in args.weights]
    json_path, figure_path = write_responses(nets, args.out)
    for net in nets:
        print(f"{net.net}: {len(net.std)} layers, std from {min(net.std):.3f} to {max(net.std):.3f}, "
              f"mean {sum(net.std) / len(net.std):.3f}, over {net.images.describe()}")
    print(f"wrote {json_path}, {figure_path}")
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
