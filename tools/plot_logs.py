"""Plot a run's curves (losses, learning rate, evaluation metrics) as PNG files.

    python tools/plot_logs.py output/shapes              # writes output/shapes/{loss,lr,eval}.png
    python tools/plot_logs.py output/shapes --out plots/
"""

from __future__ import annotations

from resnet_engine.cli import ToolParser, run_cli


def main() -> int:
    parser = ToolParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run's output_dir (or its metrics.jsonl)")
    parser.add_argument("--out", help="folder for the PNG files (default: the run's folder)")
    args = parser.parse_args()

    from resnet_engine.plot_logs import plot_run

    for path in plot_run(args.run, args.out):
        print(path)
    return 0


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
