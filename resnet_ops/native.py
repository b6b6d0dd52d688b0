"""Small C kernels (resnet_ops/csrc/), compiled on first use with the machine's C compiler and loaded
with ctypes: no build step at install time and nothing to download.

Each library is compiled once per source, compiler, flags and CPU (``-O3 -march=native -fopenmp``)
into a cache folder: ``$RESNET_DETECTION_CACHE`` or ``~/.cache/resnet-detection``; concurrent
processes (torchrun) each write to a temporary file and rename it into place. Without a working
compiler, or with ``RESNET_DETECTION_NATIVE=0``, :func:`load_library` returns None and the callers
run their PyTorch versions (same results, slower), after one warning that says why.

``RESNET_DETECTION_NATIVE_BUILD`` chooses a build for testing the kernels: ``checked`` (``-O2
-D_FORTIFY_SOURCE=2`` with every warning an error) or ``sanitize`` (AddressSanitizer and
UndefinedBehaviorSanitizer, stopping at the first report; the Python process must have the ASan
runtime preloaded: ``make sanitize`` does it). These builds never fall back to PyTorch: a test
run against them fails when they cannot be built or loaded.

The libraries link the OpenMP runtime by its usual name (libgomp.so.1), which is the one PyTorch
has already loaded on Linux: the kernels share PyTorch's threads rather than start their own.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
import threading

import torch  # noqa: F401  (loaded first, so that the kernels link PyTorch's OpenMP runtime)

SOURCES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
COMMON_FLAGS = ["-fopenmp", "-shared", "-fPIC", "-std=c99"]
BUILDS = {
    "release": ["-O3", "-march=native"],
    "checked": ["-O2", "-D_FORTIFY_SOURCE=2", "-Wall", "-Wextra", "-Werror"],
    "sanitize": ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
                 "-fno-sanitize-recover=all"],
}
DISABLE_VARIABLE = "RESNET_DETECTION_NATIVE"
BUILD_VARIABLE = "RESNET_DETECTION_NATIVE_BUILD"

logger = logging.getLogger(__name__)
LOCK = threading.Lock()
LOADED: dict[str, ctypes.CDLL | None] = {}


def load_library(name: str) -> ctypes.CDLL | None:
    """The compiled ``csrc/<name>.c``, or None where native kernels are off or cannot be built."""
    with LOCK:
        if name not in LOADED:
            LOADED[name] = build_and_load(name)
        return LOADED[name]


def native_enabled() -> bool:
    return os.environ.get(DISABLE_VARIABLE, "1").strip().lower() not in ("0", "false", "off", "no")


def build_and_load(name: str) -> ctypes.CDLL | None:
    if not native_enabled():
        return None
    build = build_kind()
    if build == "sanitize" and not asan_runtime_loaded():
        raise BuildError("the sanitize build needs the ASan runtime loaded before Python starts (loading it later "
                         "ends the process): run `make sanitize`, or set LD_PRELOAD to the output of "
                         "`gcc -print-file-name=libasan.so`")
    source = os.path.join(SOURCES, f"{name}.c")
    compiler = c_compiler()
    try:
        path = os.path.join(cache_folder(), f"{name}-{build}-{build_key(source, compiler)}.so")
        if not os.path.exists(path):
            compile_library(source, compiler, path)
        return ctypes.CDLL(path)
    except (OSError, subprocess.SubprocessError, BuildError) as error:
        if build != "release":  # a test build that silently fell back would test nothing
            raise BuildError(f"the {build} build of {name} failed: {error}") from error
        logger.warning("%s runs in PyTorch ops (slower): %s. Install a C compiler with OpenMP (gcc), "
                       "or set %s=0 to silence this.", name, error, DISABLE_VARIABLE)
        return None


class BuildError(RuntimeError):
    """A kernel build that failed or cannot be made; command lines print it as one line (the engine
    reads ``user_error``): a test build without its compiler or runtime, or an unknown build name."""

    user_error = True


def build_kind() -> str:
    """The build that $RESNET_DETECTION_NATIVE_BUILD asks for: release (the default), checked or sanitize."""
    build = os.environ.get(BUILD_VARIABLE, "").strip().lower() or "release"
    if build not in BUILDS:
        raise BuildError(f"{BUILD_VARIABLE}={build!r} is not a build: use one of {', '.join(BUILDS)}")
    return build


def asan_runtime_loaded() -> bool:
    """Whether AddressSanitizer's runtime is in this process (Linux; elsewhere assumed)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as handle:
            return "libasan" in handle.read()
    except OSError:
        return True


def build_flags() -> list[str]:
    return BUILDS[build_kind()] + COMMON_FLAGS


def c_compiler() -> list[str]:
    """The C compiler command: $CC, else the one Python was built with, else ``cc``."""
    command = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    return shlex.split(command)[:1]  # without the build machine's extra flags


def cache_folder() -> str:
    folder = os.environ.get("RESNET_DETECTION_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "resnet-detection")
    folder = os.path.join(folder, "kernels")
    try:
        os.makedirs(folder, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder
    except OSError:
        pass
    folder = os.path.join(tempfile.gettempdir(), f"resnet-detection-kernels-{os.getuid() if hasattr(os, 'getuid') else 0}")
    os.makedirs(folder, exist_ok=True)
    return folder


def build_key(source: str, compiler: list[str]) -> str:
    """A digest of what the binary depends on: the source, the flags, the compiler and this CPU
    (-march=native code from one machine may not run on another that shares the cache folder)."""
    digest = hashlib.sha256()
    with open(source, "rb") as handle:
        digest.update(handle.read())
    digest.update(" ".join(compiler + build_flags()).encode())
    digest.update(compiler_version(compiler).encode())
    digest.update(cpu_description().encode())
    return digest.hexdigest()[:16]


def compiler_version(compiler: list[str]) -> str:
    """The compiler's resolved path, size and time stamp: a new or updated compiler rebuilds (cheaper
    than running it in every process)."""
    path = shutil.which(compiler[0])
    if path is None:
        raise BuildError(f"no C compiler ({compiler[0]} not found)")
    stat = os.stat(os.path.realpath(path))
    return f"{os.path.realpath(path)} {stat.st_size} {stat.st_mtime_ns}"


def cpu_description() -> str:
    """The CPU's model and instruction-set flags (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return f"{platform.machine()} {platform.processor()}"


def compile_library(source: str, compiler: list[str], path: str) -> None:
    handle, partial = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(path))
    os.close(handle)
    try:
        result = subprocess.run(compiler + build_flags() + ["-o", partial, source, "-lm"], capture_output=True,
                                text=True, timeout=300)
        if result.returncode != 0:
            lines = result.stderr.strip().splitlines()
            first_error = next((line for line in lines if "error:" in line), lines[0] if lines else "no output")
            raise BuildError(f"compiling {source} with {compiler[0]} failed: {first_error.replace(source, '').strip(': ')}")
        os.replace(partial, path)  # atomic: another process sees the whole file or none
    finally:
        if os.path.exists(partial):
            os.remove(partial)
