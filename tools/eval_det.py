"""COCO box AP of a model or of a detections file.

    python tools/eval_det.py --cfg CFG --weights W [key=value ...]     # run a model on the test set
    python tools/eval_det.py --cfg CFG --weights W1 --weights W2 --weights W3   # an ensemble of them
    python tools/eval_det.py --gt ANN.json --det DETS.json --out DIR   # score a results file
Both print the COCO table and write DIR/metrics.json (percent). Model mode also writes
DIR/detections.json and records the weights in metrics.json; its DIR is --out, else
eval_<weights file stem>/ (eval_ensemble/ for several --weights) in the config's output_dir, so that
the run's own metrics.json, the final evaluation of its training, stays as it is (as with
tools/train_det.py --eval-only --weights W). A detection of DETS.json names its image by image_id, or
by file_name (tools/infer.py's predictions.json): the image of ANN.json whose file_name is the longest
ending of that path, so that datasets/val/0001.png is the image "0001.png".

Several --weights run as one ensemble, as the paper's COCO entry: the union of the networks' proposals,
each network's head scoring it, scores and boxes averaged, one NMS (detection/ensemble.py). Each network
is built from the training config its file keeps (else from CFG); CFG gives the test set, the test
scale and the test keys. A test set without annotations (test-dev) gets the server's results file.
"""

from __future__ import annotations

from resnet_engine.cli import OverridesParser, check_output_folder, run_cli


def main() -> int:
    parser = OverridesParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cfg", help="config of the model (model mode)")
    parser.add_argument("--weights", action="append",
                        help="detector weights (model mode); repeat it for an ensemble of several detectors")
    parser.add_argument("--gt", help="COCO annotation json (scoring mode)")
    parser.add_argument("--det", help="COCO results json, or infer.py's predictions.json (scoring mode)")
    parser.add_argument("--out", help="output folder (default: model mode output_dir/eval_<weights file stem>, "
                                      "scoring mode .)")
    parser.add_argument("--backend", default=None, choices=["auto", "pycocotools", "faster_coco_eval"],
                        help="COCO scoring library (default: test.eval_backend, auto: faster_coco_eval when installed)")
    parser.add_argument("--plots", metavar="DIR", help="write per-category precision-recall curves here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()

    if args.gt or args.det:
        if not (args.gt and args.det):
            parser.error("scoring mode needs both --gt and --det")
        if args.cfg or args.weights or args.overrides:
            given = [name for name, value in (("--cfg", args.cfg), ("--weights", args.weights),
                                              ("key=value", args.overrides)) if value]
            parser.error(f"scoring mode (--gt and --det) scores a results file and runs no model: drop "
                         f"{', '.join(given)}, or drop --gt and --det to run the model")
        from detection.evaluation.evaluator import score_files

        check_output_folders(args.out or ".", args.plots)
        score_files(args.gt, args.det, args.out or ".", args.backend or "auto", args.plots)
        return 0
    if not (args.cfg and args.weights):
        parser.error("give --cfg and --weights (model mode) or --gt and --det (scoring mode)")
    from detection.config import load_detection_config
    from detection.evaluation.evaluator import evaluate_weights
    from resnet_engine.run_dir import evaluation_dir

    overrides = list(args.overrides) + ([f"test.eval_backend={args.backend}"] if args.backend else [])
    cfg = load_detection_config(args.cfg, overrides)
    weights = args.weights[0] if len(args.weights) == 1 else args.weights
    out_dir = args.out or evaluation_dir(cfg.output_dir, weights)
    check_output_folders(out_dir, args.plots)
    evaluate_weights(cfg, weights, out_dir, args.plots)
    return 0


def check_output_folders(out_dir: str, plots_dir: str | None) -> None:
    """Before any work: the results are written at the end, after the whole evaluation."""
    check_output_folder(out_dir, "--out")
    if plots_dir:
        check_output_folder(plots_dir, "--plots")


def cli() -> None:
    """The console script: main() with one-line errors."""
    run_cli(main)


if __name__ == "__main__":
    cli()
