"""The options every training command line shares."""

from resnet_engine.cli import training_parser


def test_a_trainer_takes_resume_overwrite_and_overrides_anywhere():
    parser = training_parser("train", "configs/x.yaml")
    args = parser.parse_args(["a.b=1", "--resume", "c=[2]"])
    assert (args.cfg, args.resume, args.overwrite, args.overrides) == ("configs/x.yaml", True, False, ["a.b=1", "c=[2]"])
    args = parser.parse_args(["--cfg", "y.yaml", "--overwrite"])
    assert (args.cfg, args.resume, args.overwrite, args.overrides) == ("y.yaml", False, True, [])
