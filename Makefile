# Set-up and everyday commands. `make demo` and `make test` create (or reuse) the virtualenv.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test sanitize bench lint install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py

test: $(STAMP)
	$(PY) -m pytest -n 2 --durations=15

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

lint: $(STAMP)
	$(PY) -m ruff check .

clean:
	rm -rf output .pytest_cache .ruff_cache
