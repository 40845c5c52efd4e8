# The README's two commands. Each sets up what it needs (a .venv with the project installed).
VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
BENCH_STAMP := $(VENV)/.bench-installed-stamp

.PHONY: setup train test test-fast phantom bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

## make train: phantom data (generated if missing) -> 3D U-Net -> held-out fold vs threshold baseline
train: setup
	$(PY) train.py $(ARGS)

## make test: the whole test suite (incl. the slow end-to-end tests)
test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

phantom: setup
	$(PY) -m strokelab.data.phantom data/phantom

# The benchmarks also need the bench extra (MONAI, the reference of benchmarks/sliding_window_monai.py).
$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) benchmarks/predict_case.py
	$(PY) benchmarks/sliding_window.py
	$(PY) benchmarks/sliding_window_monai.py

clean:
	rm -rf logs data/cache
