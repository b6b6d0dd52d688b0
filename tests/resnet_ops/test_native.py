"""The C kernels' build: compiled once into the cache folder, reused, and a clear fallback when it fails."""

import logging
import os
import shutil

import pytest

from resnet_ops import native

needs_compiler = pytest.mark.skipif(shutil.which(native.c_compiler()[0]) is None, reason="no C compiler")


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """An empty cache folder and no library loaded yet in this process."""
    monkeypatch.setenv("RESNET_DETECTION_CACHE", str(tmp_path))
    monkeypatch.delenv(native.DISABLE_VARIABLE, raising=False)
    monkeypatch.setattr(native, "LOADED", {})
    return tmp_path


@needs_compiler
def test_builds_once_into_the_cache_folder_and_reuses_it(fresh, monkeypatch):
    library = native.load_library("winograd_transforms")
    assert library is not None and hasattr(library, "winograd_input_transform")
    built = os.listdir(fresh / "kernels")
    assert len(built) == 1 and built[0].startswith("winograd_transforms-") and built[0].endswith(".so")
    stamp = os.stat(fresh / "kernels" / built[0]).st_mtime_ns
    monkeypatch.setattr(native, "LOADED", {})  # as a new process would
    calls = []
    monkeypatch.setattr(native, "compile_library", lambda *args: calls.append(args))
    assert native.load_library("winograd_transforms") is not None
    assert calls == [] and os.stat(fresh / "kernels" / built[0]).st_mtime_ns == stamp


@needs_compiler
def test_another_cpu_gets_its_own_build(monkeypatch):
    source = os.path.join(native.SOURCES, "winograd_transforms.c")
    compiler = native.c_compiler()
    here = native.build_key(source, compiler)
    monkeypatch.setattr(native, "cpu_description", lambda: "model name : another CPU\nflags : sse2\n")
    assert native.build_key(source, compiler) != here


def test_missing_compiler_falls_back_with_one_clear_warning(fresh, monkeypatch, caplog):
    monkeypatch.setenv("CC", str(fresh / "no-such-cc"))
    with caplog.at_level(logging.WARNING, logger="resnet_ops.native"):
        assert native.load_library("winograd_transforms") is None
        assert native.load_library("winograd_transforms") is None  # remembered: no second try
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1
    assert "winograd_transforms runs in PyTorch ops" in messages[0] and "no-such-cc" in messages[0]
    assert "RESNET_DETECTION_NATIVE=0" in messages[0] and "\n" not in messages[0]


@needs_compiler
def test_compile_error_names_the_source_and_leaves_no_partial_file(fresh, monkeypatch, caplog):
    sources = fresh / "csrc"
    sources.mkdir()
    (sources / "broken.c").write_text("int broken(void) { return undefined_name; }\n")
    monkeypatch.setattr(native, "SOURCES", str(sources))
    with caplog.at_level(logging.WARNING, logger="resnet_ops.native"):
        assert native.load_library("broken") is None
    message = caplog.records[0].getMessage()
    assert "broken.c" in message and "undefined_name" in message
    assert os.listdir(fresh / "kernels") == []


def test_switched_off_by_the_environment(fresh, monkeypatch, caplog):
    monkeypatch.setenv(native.DISABLE_VARIABLE, "0")
    with caplog.at_level(logging.WARNING, logger="resnet_ops.native"):
        assert native.load_library("winograd_transforms") is None
    assert caplog.records == []
