# promptbench — common tasks. `make demo` and `make test` install what they need.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: install install-cpu lock lock-check test test-full demo lint format clean bench readme wheel-smoke
# torch/torchvision pins of constraints.txt, and PyTorch's CPU-only wheel index (no ~6 GB of CUDA wheels)
TORCH_PINS := $(shell grep -E '^torch(vision)?==' constraints.txt)
CPU_INDEX  ?= https://download.pytorch.org/whl/cpu

$(STAMP): pyproject.toml setup.py constraints.txt
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

# a laptop without a GPU: the CPU builds of the pinned torch/torchvision first, then the usual install (pip keeps
# them: 2.14.1+cpu satisfies torch==2.14.1). docs/install.md, "CPU-only laptops".
install-cpu:
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q $(TORCH_PINS) --index-url $(CPU_INDEX)
	$(MAKE) install

# requirements-lock.txt from the environment the suite passed in (scripts/write_lock.py); lock-check compares
lock: $(STAMP)
	$(BIN)/python scripts/write_lock.py

lock-check: $(STAMP)
	$(BIN)/python scripts/write_lock.py --check

test: $(STAMP)
	$(BIN)/pytest -q

test-full: $(STAMP)
	$(BIN)/pytest -q -m ""

demo: $(STAMP)
	$(BIN)/promptbench demo

lint: $(STAMP)
	$(BIN)/ruff check promptbench tests scripts
	$(BIN)/lint-imports

format: $(STAMP)
	$(BIN)/ruff format promptbench tests scripts
	$(BIN)/ruff check --fix promptbench tests scripts

bench: $(STAMP)
	$(BIN)/python scripts/benchmark_methods.py

# README.md's measured tables and numbers (<!-- pb:NAME --> blocks) from outputs/ (run after `make demo` / `make bench`)
readme: $(STAMP)
	$(BIN)/python scripts/readme_tables.py

# the wheel in a fresh environment, used from outside the checkout (CI runs this after `make test`)
wheel-smoke:
	bash .ci/wheel_smoke.sh

clean:
	rm -rf outputs/* multirun .pytest_cache
