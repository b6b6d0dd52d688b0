"""A run's output folder: one run at a time, an earlier run never overwritten by accident, the
leftovers of a killed write cleaned up."""

import errno
import fcntl
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from resnet_engine.checkpoint import load_checkpoint
from resnet_engine.run_dir import RunDirectory, RunDirectoryError, claim_run_directory, release_run_directory
from resnet_engine.setup import setup_run
from tests.conftest import ROOT
from tests.resnet_engine.toy_training import ToyModel, make_trainer


def run_config(output_dir):
    return OmegaConf.create({"output_dir": str(output_dir), "device": "cpu", "seed": 1})


def test_a_fresh_run_over_an_earlier_run_is_refused_before_any_work(tmp_path):
    """The case that lost runs: an earlier run with higher iteration numbers in the folder. The
    fresh run stops before writing anything (config.yaml included), the earlier run intact."""
    make_trainer(ToyModel(), tmp_path, max_iter=16, checkpoint_period=5).train()
    (tmp_path / "config.yaml").write_text("the earlier run's config\n")
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(RunDirectoryError) as error:
        setup_run(run_config(tmp_path))
    assert str(error.value) == (
        f"output_dir {tmp_path} holds the checkpoints of an earlier run (model_final.pth and 3 more): continue "
        f"it with --resume, give this run another output_dir, or pass --overwrite to delete them and start afresh")
    assert sorted(os.listdir(tmp_path)) == before
    assert (tmp_path / "config.yaml").read_text() == "the earlier run's config\n"
    release_run_directory(str(tmp_path))
    # A Trainer built without setup_run (a library caller) is stopped the same way.
    with pytest.raises(RunDirectoryError, match="holds the checkpoints of an earlier run"):
        make_trainer(ToyModel(), tmp_path, max_iter=4).train()


def test_overwrite_starts_afresh_and_resume_then_finds_the_new_run(tmp_path):
    make_trainer(ToyModel(), tmp_path, max_iter=16, checkpoint_period=5).train()
    setup_run(run_config(tmp_path), overwrite=True)
    assert not [name for name in os.listdir(tmp_path) if name.startswith("model_")]
    make_trainer(ToyModel(), tmp_path, max_iter=8, checkpoint_period=2, keep_last=2).train()
    names = sorted(name for name in os.listdir(tmp_path) if name.endswith(".pth"))
    assert names == ["model_0000004.pth", "model_0000006.pth", "model_final.pth"]  # its own, rotated
    trainer = make_trainer(ToyModel(), tmp_path, max_iter=8)
    assert trainer.resume() and trainer.start_iter == 8
    assert load_checkpoint(str(tmp_path / "model_final.pth"))["iteration"] == 8


def test_resume_in_a_used_folder_is_not_refused(tmp_path):
    """setup_run leaves a resumed run's config.yaml to the Trainer, which replaces it once the
    checkpoint fits the new config."""
    make_trainer(ToyModel(), tmp_path, max_iter=4).train()
    (tmp_path / "config.yaml").write_text("the run's config\n")
    setup_run(run_config(tmp_path), resume=True)
    assert (tmp_path / "config.yaml").read_text() == "the run's config\n"
    release_run_directory(str(tmp_path))


HOLD_THE_FOLDER = """
import sys, time
from resnet_engine.run_dir import claim_run_directory
claim_run_directory(sys.argv[1])
print("holding", flush=True)
time.sleep(60)
"""


def test_a_second_run_on_a_locked_folder_stops_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_FOLDER, str(tmp_path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(RunDirectoryError) as error:
            claim_run_directory(str(tmp_path))
        message = str(error.value)
        assert message.startswith(f"output_dir {tmp_path} is in use by another run (pid {holder.pid} on ")
        assert message.endswith("): wait for it to end, or give this run another output_dir")
    finally:
        holder.kill()
        holder.wait()
    claim = claim_run_directory(str(tmp_path))  # the system released the dead holder's lock
    assert claim.held
    release_run_directory(str(tmp_path))


def test_one_process_claims_a_folder_once(tmp_path):
    first = claim_run_directory(str(tmp_path))
    assert claim_run_directory(str(tmp_path)) is first  # setup_run, then the Trainer: the same claim
    with pytest.raises(RunDirectoryError, match="is in use by another run"):
        RunDirectory(str(tmp_path)).lock()  # any other claim on the folder, even in this process
    release_run_directory(str(tmp_path))
    assert not first.held


def test_leftovers_of_a_killed_checkpoint_write_are_removed(tmp_path):
    leftovers = ["model_0000005.pth.tmp.4242", "model_final.pth.tmp.17", "last_checkpoint.tmp", "metrics.json.tmp",
                 "config.yaml.tmp"]
    for name in leftovers:
        (tmp_path / name).write_bytes(b"half a file")
    (tmp_path / "notes.tmp").write_text("not ours")
    claim_run_directory(str(tmp_path))
    release_run_directory(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == [".lock", "notes.tmp"]


def test_an_output_dir_that_is_a_file_is_one_line(tmp_path):
    path = tmp_path / "out"
    path.write_text("a file")
    with pytest.raises(RunDirectoryError) as error:
        claim_run_directory(str(path))
    assert str(error.value) == f"output_dir {path} is a file, not a folder: choose another output_dir"
    with pytest.raises(RunDirectoryError, match=r"cannot create output_dir .*out/run \(Not a directory\)"):
        claim_run_directory(str(path / "run"))
    with pytest.raises(RunDirectoryError) as error:  # output_dir='' said "cannot create output_dir  (No such ...)"
        claim_run_directory("")
    assert str(error.value) == "output_dir is empty: set output_dir=FOLDER, the folder of the run's files"



def test_a_file_system_without_locks_runs_on_with_a_warning(tmp_path, monkeypatch, caplog):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING"):
        claim = claim_run_directory(str(tmp_path))
    assert claim.held
    assert "(No locks available): a second run on this folder would not be stopped" in caplog.text
    release_run_directory(str(tmp_path))
