"""Checkpoint files: which are good to continue from, which are set aside, and what an unreadable one says."""

import math
import os
import pickle

import pytest
import torch

from resnet_engine.checkpoint import Checkpointer, CheckpointError, GoodCheckpoints, load_checkpoint
from resnet_engine.trainer import TrainingError
from tests.resnet_engine.toy_training import ToyModel, make_trainer, toy_batches

FINITE = {"w": torch.ones(2)}


def test_a_checkpoint_is_good_once_its_own_weights_gave_a_finite_loss():
    good = GoodCheckpoints()
    good.loss_seen(2.0)
    good.saved("a.pth", FINITE)
    assert good.last_good is None and good.not_good() == ["a.pth"]  # its loss is not known yet
    good.loss_seen(1.5)
    assert good.last_good == "a.pth" and good.not_good() == []
    good.saved("b.pth", FINITE)  # the weights that then produce a non-finite loss
    assert good.last_good == "a.pth" and good.not_good() == ["b.pth"]


def test_exploding_loss_or_non_finite_weights_are_not_good():
    good = GoodCheckpoints()
    good.loss_seen(2.5)
    good.typical_loss_seen(2.0)
    good.saved("a.pth", FINITE)
    good.loss_seen(3.0)
    good.saved("b.pth", FINITE)
    good.loss_seen(2.0 * GoodCheckpoints.DIVERGENCE_FACTOR * 1.01)  # finite, but diverged
    good.saved("c.pth", {"w": torch.tensor([1.0, math.inf])})
    assert good.last_good == "a.pth" and good.not_good() == ["b.pth", "c.pth"]


@pytest.fixture
def diverged_run(tmp_path):
    with pytest.raises(TrainingError) as error:
        make_trainer(ToyModel(), tmp_path, base_lr=1.0, momentum=0.9, max_iter=200, checkpoint_period=1,
                     keep_last=50).train()
    return tmp_path, str(error.value)


def test_a_diverged_run_sets_the_states_that_led_to_nan_aside(diverged_run):
    """With a huge learning rate the weights explode (finite for a while) before the loss turns NaN.
    The checkpoints whose weights led there are set aside; the one named trains on at a lower LR."""
    out, message = diverged_run
    good = message.split("the last good checkpoint is ")[1].split(" ")[0]
    aside = sorted(name for name in os.listdir(out) if name.endswith(".diverged"))
    assert aside and f"({len(aside)} later one(s) set aside as *.diverged" in message, message
    state = load_checkpoint(good)
    weights = torch.cat([v.flatten() for v in state["model"].values()])
    assert weights.abs().max() < 1e3, "the named checkpoint holds exploded weights"
    for name in aside:  # each set-aside state is one whose weights exploded or give a non-finite loss
        held = torch.load(out / name, weights_only=True)["model"]
        assert torch.cat([v.flatten() for v in held.values()]).abs().max() > 1e3 or not all(
            torch.isfinite(v).all() for v in held.values())
    assert (out / "last_checkpoint").read_text() == os.path.basename(good)
    assert "then continue from it with --resume" in message

    trainer = make_trainer(ToyModel(), out, base_lr=0.01, max_iter=state["iteration"] + 20)
    assert trainer.resume() and trainer.start_iter == state["iteration"]
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # the lowered LR applies
    trainer.train()
    final = load_checkpoint(str(out / "model_final.pth"))["model"]
    assert all(torch.isfinite(v).all() for v in final.values())


def test_rotation_never_deletes_the_last_good_checkpoint(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), keep_last=2)
    checkpointer.save_periodic(1, {"model": {}})
    checkpointer.protected = str(tmp_path / "model_0000001.pth")
    for iteration in (2, 3, 4):
        checkpointer.save_periodic(iteration, {"model": {}})
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth", "model_0000003.pth",
                                            "model_0000004.pth"]


def test_rotation_orders_by_iteration_not_by_name(tmp_path):
    checkpointer = Checkpointer(str(tmp_path), keep_last=1)
    checkpointer.save_periodic(9_999_999, {"model": {}})
    checkpointer.save_periodic(10_000_000, {"model": {}})  # eight digits: sorts first by name
    assert [p for p in os.listdir(tmp_path) if p.startswith("model_")] == ["model_10000000.pth"]


class RunsCode:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_a_pickle_that_holds_code_is_refused_as_unsafe(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": RunsCode()}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(str(path))
    assert str(error.value).startswith(f"{path} was refused as unsafe: it holds pickled objects other than "
                                       f"tensors (e.g. builtins.print), which could run code when loaded")
    with open(tmp_path / "plain.pkl", "wb") as handle:
        pickle.dump({"model": RunsCode()}, handle)
    with pytest.raises(CheckpointError, match="refused as unsafe"):
        load_checkpoint(str(tmp_path / "plain.pkl"))
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"is damaged or truncated \(RuntimeError\)"):
        load_checkpoint(str(path))


def test_a_file_that_is_no_checkpoint_is_named_for_what_it_is(tmp_path):
    """--cfg and --weights swapped, or an image given as weights: it was "damaged or truncated"."""
    config = tmp_path / "config.yaml"
    config.write_text("model:\n  backbone:\n    depth: 50\n")
    image = tmp_path / "photo.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0" + bytes(100))
    for path, kind in ((config, "a text file (a config or a log?)"), (image, "a JPEG image")):
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(str(path))
        assert str(error.value) == (f"{path} is {kind}, not a PyTorch checkpoint: give the .pth file that training "
                                    f"wrote (model_final.pth)")


def test_resume_falls_back_to_model_best_past_damaged_states(tmp_path):
    """model_final and the periodic checkpoints damaged, model_best intact: resume continues from
    model_best, sets the damaged files aside, and the run never rewrites model_best with a worse state."""
    scores = iter([1.0, 5.0, 2.0, 3.0, 0.5, 4.0])
    make_trainer(ToyModel(), tmp_path, evaluate=lambda m: {"m": {"score": next(scores)}}, checkpoint_period=2).train()
    best = load_checkpoint(str(tmp_path / "model_best.pth"))
    assert best["iteration"] == 2
    for name in ("model_final.pth", "model_0000002.pth", "model_0000004.pth"):
        (tmp_path / name).write_bytes(b"truncated")
    trainer = make_trainer(ToyModel(), tmp_path, evaluate=lambda m: {"m": {"score": 1.0}}, max_iter=6,
                           checkpoint_period=2)
    with pytest.warns(UserWarning, match="model_final.pth is damaged or truncated.*falling back to model_best.pth"):
        assert trainer.resume()
    assert trainer.start_iter == 2 and trainer.best_metric == 5.0
    assert sorted(p for p in os.listdir(tmp_path) if p.endswith(".damaged")) == [
        "model_0000002.pth.damaged", "model_0000004.pth.damaged", "model_final.pth.damaged"]
    trainer.train()
    assert torch.equal(load_checkpoint(str(tmp_path / "model_best.pth"))["model"]["linear.weight"],
                       best["model"]["linear.weight"])


def test_resume_stops_when_no_checkpoint_can_be_read(tmp_path):
    make_trainer(ToyModel(), tmp_path, checkpoint_period=2).train()
    for name in os.listdir(tmp_path):
        if name.endswith(".pth"):
            (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        make_trainer(ToyModel(), tmp_path).resume()
    assert str(error.value).startswith(f"none of the 3 checkpoints in {tmp_path} can be read (")
    assert str(error.value).endswith("): start afresh with --overwrite, or in another output_dir")


def test_tolerated_nan_steps_leave_the_checkpoint_before_them_good(tmp_path):
    """A skipped non-finite step changes no weight: the checkpoint saved before it is confirmed by the
    next finite loss, as its weights are still the ones that compute it."""
    trainer = make_trainer(ToyModel(), tmp_path, max_nonfinite=1, checkpoint_period=3,
                           make_loader=lambda start: toy_batches(start, nan_at=(3,)))
    trainer.train()
    assert trainer.good_checkpoints.last_good == str(tmp_path / "model_0000003.pth")


def test_random_streams_of_fewer_gpus_than_were_saved_are_restored(monkeypatch):
    """A checkpoint of a node with 4 GPUs resumed where 2 are visible: set_rng_state_all indexed the
    missing devices (IndexError); the devices still there continue their streams."""
    from resnet_engine.checkpoint import capture_rng_state, restore_rng_state
    state = capture_rng_state()
    state["cuda"] = [torch.full((8,), device, dtype=torch.uint8) for device in range(4)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda value, device: restored.append((device, int(value[0]))))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda values: pytest.fail("indexes every saved device"))
    restore_rng_state(state)
    assert restored == [(0, 0), (1, 1)]


def test_a_folder_and_exported_models_given_as_checkpoints_are_named_as_such(tmp_path):
    """Not "not found", "damaged" or "unsafe": what the file is, and what to give instead."""
    with pytest.raises(CheckpointError, match=r"is a folder: give the checkpoint file in it \(model_final.pth\)"):
        load_checkpoint(str(tmp_path))
    scripted = tmp_path / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 1)), str(scripted))
    with pytest.raises(CheckpointError, match=r"model.torchscript.pt is an exported TorchScript model, not weights: "
                                              r"give the checkpoint it was exported from"):
        load_checkpoint(str(scripted))
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")
    with pytest.raises(CheckpointError, match=r"model.onnx is an exported ONNX model, not weights"):
        load_checkpoint(str(onnx_file))


def test_a_folder_named_with_glob_characters_rotates_and_resumes(tmp_path):
    """An output_dir such as run[1] is a glob pattern of "run1": listed as a pattern, it held no
    checkpoint, so keep_last deleted nothing and --resume found nothing to continue."""
    folder = tmp_path / "run[1]"
    checkpointer = Checkpointer(str(folder), keep_last=2)
    for iteration in (1, 2, 3, 4):
        checkpointer.save_periodic(iteration, {"model": {}, "iteration": iteration})
    assert sorted(p for p in os.listdir(folder) if p.startswith("model_")) == ["model_0000003.pth",
                                                                                 "model_0000004.pth"]
    make_trainer(ToyModel(), folder / "toy*", checkpoint_period=2).train()
    trainer = make_trainer(ToyModel(), folder / "toy*", max_iter=8, checkpoint_period=2)
    assert trainer.resume() and trainer.start_iter > 0


def test_a_read_error_of_the_machine_stops_resume_without_falling_back_or_setting_the_file_aside(tmp_path,
                                                                                                 monkeypatch):
    """An I/O error of the disk or file system (or a full memory) says nothing about the file: resume
    from an older checkpoint would lose the newer one's iterations, and renaming it .damaged hides it."""
    from resnet_engine import checkpoint as checkpoint_module
    make_trainer(ToyModel(), tmp_path, checkpoint_period=2).train()
    before = sorted(os.listdir(tmp_path))
    real_load = torch.load

    def failing_load(path, *args, **kwargs):
        if str(path).endswith("model_final.pth"):
            raise OSError(5, "Input/output error")
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "load", failing_load)
    with pytest.raises(checkpoint_module.CheckpointReadError) as error:
        make_trainer(ToyModel(), tmp_path, max_iter=6).resume()
    assert str(error.value) == (f"could not read checkpoint {tmp_path / 'model_final.pth'} (OSError: [Errno 5] "
                                f"Input/output error); the file is kept as it is: run again once it can be read")
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"),
                                     RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                                                  "PytorchStreamWriter failed writing file data/0: file write failed")])
def test_a_checkpoint_that_cannot_be_written_stops_with_one_line_and_leaves_no_partial_file(tmp_path, monkeypatch,
                                                                                            failure):
    """A full disk at iteration 4: the run stops naming the file and the fix, the partial file is
    removed (it held the space the next try needs), and iteration 2's checkpoint is intact."""
    from resnet_engine import checkpoint as checkpoint_module
    real_save = torch.save

    def save_until_the_disk_fills(obj, handle, *args, **kwargs):
        if obj.get("iteration") == 4:
            handle.write(b"partial")
            raise failure
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_fills)
    with pytest.raises(checkpoint_module.CheckpointWriteError) as error:
        make_trainer(ToyModel(), tmp_path, max_iter=6, checkpoint_period=2).train()
    reason = "No space left on device" if isinstance(failure, OSError) else "[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0"
    assert str(error.value) == (f"could not write checkpoint {tmp_path / 'model_0000004.pth'} ({reason}): free "
                                f"space on that disk (or lower solver.keep_last), then continue with --resume from "
                                f"the last checkpoint")
    assert not [name for name in os.listdir(tmp_path) if ".tmp" in name]
    assert load_checkpoint(str(tmp_path / "model_0000002.pth"))["iteration"] == 2


def test_a_runtime_error_of_the_saved_object_is_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    from resnet_engine import checkpoint as checkpoint_module

    def failing_save(obj, handle, *args, **kwargs):
        raise RuntimeError("cannot pickle this tensor subclass")

    monkeypatch.setattr(checkpoint_module.torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="cannot pickle"):
        checkpoint_module.atomic_save({"model": {}}, str(tmp_path / "model_final.pth"))
    assert os.listdir(tmp_path) == []


def test_resuming_over_a_file_of_weights_alone_says_so(tmp_path):
    """A converted or released model_final.pth copied into output_dir: PyTorch's KeyError 'optimizer'."""
    torch.save({"model": ToyModel().state_dict(), "meta": {}}, tmp_path / "model_final.pth")
    with pytest.raises(CheckpointError) as error:
        make_trainer(ToyModel(), tmp_path).resume()
    assert str(error.value) == (f"{tmp_path / 'model_final.pth'} holds weights, not a training state (no optimizer, "
                                f"scheduler, iteration, rng): it cannot be resumed; move it out of {tmp_path}, and "
                                f"start a run from these weights in another output_dir")
