# Set-up and everyday commands. `make demo` and `make test` create (or reuse) the virtualenv.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test packaging floors sanitize bench bench-gpu lint install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15

# The packaging check alone (`make test` runs it too): a wheel built from the tree and installed into a
# fresh virtualenv, its console scripts run from an empty folder (tests/test_packaging.py).
packaging: $(STAMP)
	$(PY) -m pytest -m packaging -q

# Every dependency at its floor, the oldest release pyproject.toml allows (tests/floor_requirements.py
# lists them), in a virtualenv of its own, and a fast part of the suite run on the tree with it.
# Downloads about 3 GB (PyTorch 2.4 and its CUDA libraries) on first use. Every floor is on PyPI.
# Known at the floors: torch.compile keeps a training Winograd module in one graph from PyTorch 2.5 (its
# test is skipped before); before 2.6 (torch.compiler.is_exporting) an exported WinogradConv2d records
# the resnet_ops operator rather than the plain convolution, and ONNX files come from the
# TorchScript-based fallback.
FLOORS_VENV ?= .venv-floors
FLOORS_TESTS ?= tests/backbones tests/resnet_ops tests/resnet_engine/test_config.py tests/detection/data \
	tests/detection/evaluation tests/detection/test_export.py tests/detection/test_builders.py \
	tests/resnet_engine/test_logger.py
floors:
	@test -x $(FLOORS_VENV)/bin/python || $(PYTHON) -m venv $(FLOORS_VENV)
	$(FLOORS_VENV)/bin/python tests/floor_requirements.py > $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install -r $(FLOORS_VENV)/floors.txt
	$(FLOORS_VENV)/bin/python -m pip install --no-deps -e .
	$(FLOORS_VENV)/bin/python -m pip list --format=freeze > $(FLOORS_VENV)/installed.txt
	PYTHONPATH=$(CURDIR) $(FLOORS_VENV)/bin/python -m pytest -n 2 -q -p no:cacheprovider $(FLOORS_TESTS)

# The C kernels built with AddressSanitizer and UndefinedBehaviorSanitizer (gcc), and the operator
# tests run against that build: any report stops the run with its stack. The ASan runtime must come
# first in the process, and libstdc++ with it for the C++ libraries that PyTorch loads.
SANITIZER_PRELOAD = $(shell gcc -print-file-name=libasan.so) $(shell gcc -print-file-name=libstdc++.so)
SANITIZER_TESTS ?= tests/resnet_ops/test_winograd_ops.py tests/resnet_ops/test_winograd.py

sanitize: $(STAMP)
	LD_PRELOAD="$(SANITIZER_PRELOAD)" ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
		RESNET_DETECTION_NATIVE_BUILD=sanitize CC=gcc $(PY) -m pytest -q --capture=sys $(SANITIZER_TESTS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# On a machine with a CUDA GPU: the CUDA tests and the GPU training-step figures (benchmarks/gpu_checks.sh).
bench-gpu: $(STAMP)
	PYTHON=$(PY) bash benchmarks/gpu_checks.sh

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf output .pytest_cache .ruff_cache
