"""The degradation experiment (paper Fig. 6, Table 6): train plain and residual CIFAR nets of several depths.

    python tools/degradation.py                                    # depths 20 and 56 on the embedded set
    python tools/degradation.py --depths 20 32 44 56 --iters 64000 --out output/fig6 \
        --cfg configs/base_cifar.yaml data.root=/data/cifar data.train_split=train
    python tools/degradation.py --depths 20 56 --out output/degradation --resume   # continue, reuse finished nets

Every net trains with the config's recipe and seed, its schedule scaled to --iters (the lr steps, the
evaluation and checkpoint periods at the same fractions of the run), into OUT/<net>/. Writes
OUT/degradation.json (per net: params, training error over the last 50 iterations, test error),
OUT/degradation.png (the error curves, plain and residual side by side) and OUT/degradation.md (the table).
"""

from __future__ import annotations

from resnet_engine.cli import check_output_folder, run_cli, training_parser

DEFAULT_CFG = "configs/cifar_degradation.yaml"


def main() -> int:
    parser = training_parser(__doc__.splitlines()[0], DEFAULT_CFG, folder="each net's folder of --out")
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 56],
                        help="depths 6n+2 (default: 20 56); each trains as a plain and a residual net")
    parser.add_argument("--iters", type=int, help="iterations per net, a multiple of 10 of at least 50 (default: the "
                                                  "config's solver.max_iter)")
    parser.add_argument("--out", default="output/degradation", help="the output folder (default: %(default)s)")
    args = parser.parse_args()
    check_output_folder(args.out, "--out")

    from classification.degradation import run_degradation

    report = run_degradation(args.cfg, args.overrides, args.depths, args.iters, args.out, resume=args.resume,
                             overwrite=args.overwrite)
    with open(report.table_path, encoding="utf-8") as handle:
        print(handle.read())
    print(f"wrote {report.json_path}, {report.figure_path}, {report.table_path}")
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
