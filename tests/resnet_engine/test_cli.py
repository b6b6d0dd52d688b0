"""The options every training command line shares."""

from resnet_engine.cli import training_parser


def test_a_trainer_takes_resume_overwrite_and_overrides_anywhere():
    parser = training_parser("train", "configs/x.yaml")
    args = parser.parse_args(["a.b=1", "--resume", "c=[2]"])
    assert (args.cfg, args.resume, args.overwrite, args.overrides) == ("configs/x.yaml", True, False, ["a.b=1", "c=[2]"])
    args = parser.parse_args(["--cfg", "y.yaml", "--overwrite"])
    assert (args.cfg, args.resume, args.overwrite, args.overrides) == ("y.yaml", False, True, [])


def test_resume_and_overwrite_together_are_refused(capsys):
    import pytest
    parser = training_parser("train", "configs/x.yaml")
    parser.prog = "train_det.py"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--resume", "--overwrite"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: --resume continues the run in output_dir and --overwrite deletes it: "
                                       "give one of them (python train_det.py --help lists the options)\n")


def test_tool_mistakes_are_one_line_and_numbers_are_checked(capsys):
    import pytest

    from resnet_engine.cli import ToolParser, non_negative_int, positive_int, unit_fraction
    parser = ToolParser(prog="tool.py")
    parser.add_argument("--count", type=positive_int, default=1)
    parser.add_argument("--seed", type=non_negative_int, default=0)
    parser.add_argument("--thresh", type=unit_fraction, default=0.5)
    assert vars(parser.parse_args(["--count", "3", "--seed", "0", "--thresh", "1"])) == {
        "count": 3, "seed": 0, "thresh": 1.0}
    for argv, message in ((["--count", "0"], "argument --count: 0 is not a positive number: give 1 or more"),
                          (["--count", "2.5"], "argument --count: '2.5' is not a whole number"),
                          (["--seed", "-1"], "argument --seed: -1 is negative: give 0 or more"),
                          (["--thresh", "1.5"], "argument --thresh: 1.5 is outside 0..1: scores are probabilities"),
                          (["--nope"], "unrecognized arguments: --nope")):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args(argv)
        assert exit_.value.code == 2
        assert capsys.readouterr().err == f"error: {message} (python tool.py --help lists the options)\n"


def test_overrides_after_an_option_of_several_values_are_overrides():
    """``--depths 20 56 data.root=X``: argparse gave the override to --depths ("invalid int value")."""
    from resnet_engine.cli import config_parser, positive_int
    parser = config_parser("tool", "configs/x.yaml")
    parser.add_argument("--depths", type=positive_int, nargs="+")
    parser.add_argument("--out")
    args = parser.parse_args(["--depths", "20", "56", "data.root=/d", "--out", "o", "a.b=1"])
    assert (args.depths, args.out, args.overrides) == ([20, 56], "o", ["data.root=/d", "a.b=1"])
    # The value of an option of one value stays its value, even when it reads as an override.
    args = parser.parse_args(["--out", "x=y", "c=2"])
    assert (args.out, args.overrides) == ("x=y", ["c=2"])


def test_abbreviated_options_are_refused(capsys):
    """``--ov`` was read as ``--overwrite``, which deletes the run in output_dir."""
    import pytest
    parser = training_parser("train", "configs/x.yaml")
    parser.prog = "train_det.py"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["--ov"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == ("error: unrecognized arguments: --ov (python train_det.py --help lists the "
                                       "options)\n")


def run_two_processes(mode: str, tmp_path) -> list:
    import os
    import subprocess
    import sys

    from tests.resnet_engine.test_distributed import free_port
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           "WORLD_SIZE": "2"}
    processes = [subprocess.Popen([sys.executable, "-m", "tests.resnet_engine.process_group_exit", mode, str(tmp_path)],
                                  cwd=root, env={**env, "RANK": str(rank)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    try:
        return [(process.communicate(timeout=120)[1], process.returncode) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()


def test_a_distributed_process_that_succeeds_leaves_its_group_in_step_and_ends_without_the_shutdown(tmp_path):
    """gloo could abort a successful process at the interpreter's shutdown (exit code -6, a failed
    worker for torchrun): after leaving the group with the others it ends at once, with exit code 0."""
    for rank, (stderr, code) in enumerate(run_two_processes("ok", tmp_path)):
        assert (code, stderr) == (0, "")
        assert not (tmp_path / f"exited{rank}").exists()


def test_a_distributed_process_that_fails_ends_with_its_message_and_code_without_the_group_teardown(tmp_path):
    """Tearing the group down after a failure can abort the process in gloo ("terminate called without
    an active exception"), replacing its exit code: it ends at once instead, its message printed."""
    for rank, (stderr, code) in enumerate(run_two_processes("user", tmp_path)):
        assert (code, stderr.strip()) == (2, f"error: rank {rank}: model.depth=51 is not a ResNet depth")
        assert not (tmp_path / f"exited{rank}").exists()
    for rank, (stderr, code) in enumerate(run_two_processes("bug", tmp_path)):
        assert code == 1, stderr
        assert stderr.strip().endswith(f"ValueError: rank {rank}: an unexpected failure"), stderr
        assert "Traceback (most recent call last)" in stderr and "process_group_exit.py" in stderr
