"""The annotation cache: where it lives, what its key sees, and that a group of processes builds it once."""

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from resnet_engine import distributed, file_cache
from resnet_engine.file_cache import cache_folder, cached, tree_fingerprint


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def squares(log_path: str, count: int = 5) -> dict:
    """The value to cache; each build leaves a line in ``log_path``, so builds can be counted."""
    with open(log_path, "a", encoding="utf-8") as log:
        log.write(f"{os.getpid()}\n")
    return {str(i): [i, i * i] for i in range(count)}


def cache_squares(source: str, log_path: str, key: str = "v1") -> dict:
    return cached("squares", source, fingerprint=lambda: key, build=lambda: squares(log_path),
                  encode=lambda value: value, decode=lambda payload: {k: list(v) for k, v in payload.items()})


def rank_worker(rank: int, port: int, folder: str) -> None:
    """One rank: the value from a cache folder both ranks share, then twice from a folder of its own
    (as two machines with local disks); the values and the builds of each step are written down."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_distributed(torch.device("cpu"), timeout_minutes=2)
    values = {}
    for step, cache in (("shared", "cache"), ("own_first", f"cache{rank}"), ("own_again", f"cache{rank}")):
        os.environ["RESNET_DETECTION_ANNOTATION_CACHE"] = os.path.join(folder, cache)
        values[step] = cache_squares(folder, os.path.join(folder, f"builds_{step}.txt"))
    distributed.leave_process_group()
    with open(os.path.join(folder, f"rank{rank}.json"), "w", encoding="utf-8") as handle:
        json.dump(values, handle)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """(each rank's values, the number of builds of each step)."""
    folder = tmp_path_factory.mktemp("ranks")
    mp.spawn(rank_worker, args=(free_port(), str(folder)), nprocs=2, join=True)
    values = [json.loads((folder / f"rank{rank}.json").read_text()) for rank in range(2)]
    builds = {step: len((folder / f"builds_{step}.txt").read_text().split())
              if (folder / f"builds_{step}.txt").exists() else 0 for step in values[0]}
    return values, builds


def test_two_processes_build_the_cache_once_and_read_the_same_value(two_ranks):
    values, builds = two_ranks
    expected = {str(i): [i, i * i] for i in range(5)}
    assert [v[step] for v in values for step in v] == [expected] * 6
    assert builds["shared"] == 1


def test_a_process_without_the_main_ones_cache_builds_its_own_once(two_ranks):
    _, builds = two_ranks
    assert builds["own_first"] == 2  # the main process and the one whose folder it could not see
    assert builds["own_again"] == 0


def test_a_new_fingerprint_rebuilds_and_the_same_one_reads(tmp_path):
    log = str(tmp_path / "builds.txt")
    assert cache_squares(str(tmp_path), log) == cache_squares(str(tmp_path), log) == squares(os.devnull)
    cache_squares(str(tmp_path), log, key="v2")
    assert len(open(log).read().split()) == 2
    assert not [name for name in os.listdir(cache_folder()) if name.startswith(".tmp-")]  # no leftovers


def test_a_folder_that_cannot_be_written_warns_and_still_gives_the_value(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    monkeypatch.setenv("RESNET_DETECTION_ANNOTATION_CACHE", str(blocker / "cache"))
    with pytest.warns(UserWarning) as caught:
        assert cache_squares(str(tmp_path), str(tmp_path / "builds.txt")) == squares(os.devnull)
    assert [str(w.message).split(" (")[0] for w in caught] == [f"cannot write the annotation cache in {blocker}/cache"]
    assert "set RESNET_DETECTION_ANNOTATION_CACHE to a writable folder" in str(caught[0].message)


@pytest.mark.parametrize("setting, expected", [("off", None), ("0", None), ("/data/cache", "/data/cache")])
def test_the_cache_folder_setting(monkeypatch, setting, expected):
    monkeypatch.setenv("RESNET_DETECTION_ANNOTATION_CACHE", setting)
    assert cache_folder() == expected


def test_by_default_the_cache_is_a_folder_of_the_toolkits_cache(monkeypatch):
    monkeypatch.delenv("RESNET_DETECTION_ANNOTATION_CACHE")
    monkeypatch.delenv("RESNET_DETECTION_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", "/somewhere")
    assert cache_folder() == "/somewhere/resnet-detection/annotations"
    monkeypatch.setenv("RESNET_DETECTION_CACHE", "/shared/cache")
    assert cache_folder() == "/shared/cache/annotations"


def test_the_tree_fingerprint_sees_names_sizes_and_times_of_the_chosen_files_only(tmp_path):
    (tmp_path / "n01").mkdir()
    xml = tmp_path / "n01" / "a.XML"
    xml.write_text("<a/>")
    original = tree_fingerprint(str(tmp_path), ".xml")
    (tmp_path / "n01" / "notes.txt").write_text("ignored")
    assert tree_fingerprint(str(tmp_path), ".xml") == original
    assert tree_fingerprint(str(tmp_path), ".xml", "other synsets") != original
    stat = os.stat(xml)
    os.utime(xml, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    touched = tree_fingerprint(str(tmp_path), ".xml")
    assert touched != original
    os.rename(xml, tmp_path / "n01" / "b.xml")
    assert tree_fingerprint(str(tmp_path), ".xml") not in (original, touched)


def test_the_format_version_is_part_of_the_check(tmp_path, monkeypatch):
    log = str(tmp_path / "builds.txt")
    cache_squares(str(tmp_path), log)
    monkeypatch.setattr(file_cache, "FORMAT_VERSION", file_cache.FORMAT_VERSION + 1)
    cache_squares(str(tmp_path), log)
    assert len(open(log).read().split()) == 2
