# jaxcf: every target creates or reuses .venv and installs what it needs, so on a fresh
# machine with Python 3.11 each one is a single command.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install -q --disable-pip-version-check
# constraints.txt: the versions the README's numbers came from (pyproject keeps ranges).
PIN := -c constraints.txt
PYTEST_WORKERS ?= 2

.PHONY: demo demo-model test test-ref test-multiprocess bench bench-gpu bench-compare lint format clean

$(BIN)/python:
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "jaxcf needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip

# One stamp per extras set; reinstalled when pyproject.toml or constraints.txt change.
$(VENV)/.stamp-base: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) $(PIN) -e .
	touch $@
$(VENV)/.stamp-test: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) $(PIN) -e ".[test]"
	touch $@
$(VENV)/.stamp-ref: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) $(PIN) -e ".[test,ref]"
	$(PIP) $(PIN) --no-deps open-clip-torch
	touch $@
$(VENV)/.stamp-gpu: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) $(PIN) -e ".[gpu]"
	touch $@

# make demo: the quickstart with the shipped demo model (jaxcf/assets/quickstart), no
# training; make demo TRAIN=1 trains configs/quickstart.py from scratch instead (resumes
# runs/quickstart if it holds a checkpoint of its own). No shipped model: it trains.
TRAIN ?=
demo: $(VENV)/.stamp-base
	$(BIN)/python -m jaxcf.demo $(if $(filter 1 yes true,$(TRAIN)),--train)

# The shipped demo model: configs/quickstart.py trained from scratch with its seeds for
# DEMO_MODEL_STEPS steps in runs/demo-model (refused if that holds a checkpoint), then its
# EMA weights exported to jaxcf/assets/quickstart (model.safetensors + manifest.json with
# the config, step, seeds, wall time, command, sha256 and git commit). Prints the wall time.
DEMO_MODEL_STEPS ?= 16000
demo-model: $(VENV)/.stamp-base
	$(BIN)/python -m jaxcf.demo_model --steps $(DEMO_MODEL_STEPS) --workdir runs/demo-model \
		--command "make demo-model DEMO_MODEL_STEPS=$(DEMO_MODEL_STEPS)"

# The two-process test runs after the rest, alone: on CPU, Gloo gives a process 30 s to meet
# its partner in a collective, which sharing the cores with other test workers could exceed.
# --durations lists the slowest tests, to keep the suite inside its time budget.
test: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -m "not ref and not multiprocess" -n $(PYTEST_WORKERS) -q --durations=25
	$(BIN)/python -m pytest -m multiprocess -q

test-ref: $(VENV)/.stamp-ref
	$(BIN)/python -m pytest -m ref -n $(PYTEST_WORKERS) -q

# Two local JAX processes (4 fake CPU devices each) against one process (also in make test).
test-multiprocess: $(VENV)/.stamp-test
	$(BIN)/python -m pytest -m multiprocess -q

# On a machine with an NVIDIA GPU the CUDA plugin is installed first.
bench: $(VENV)/.stamp-base
	@if command -v nvidia-smi >/dev/null 2>&1; then $(MAKE) --no-print-directory $(VENV)/.stamp-gpu; fi
	$(BIN)/python benchmarks/samplers.py
	$(BIN)/python benchmarks/denoisers.py

# The GPU suite on a machine with an NVIDIA GPU (< 8 min): installs .[gpu], checks nvidia-smi,
# then denoiser MFU, WDM sampling, counterfactuals per slice, train steps/s, 3-D memory.
bench-gpu: $(BIN)/python
	bash benchmarks/gpu_suite.sh

# jaxcf and PyTorch side by side on this machine, interleaved (torch, diffusers from the ref
# extras); e.g. make bench-compare BENCH_ARGS="--reps 5 --only dit_s2,train_step".
BENCH_ARGS ?=
bench-compare: $(VENV)/.stamp-ref
	$(BIN)/python benchmarks/vs_torch.py $(BENCH_ARGS)

lint: $(VENV)/.stamp-test
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: $(VENV)/.stamp-test
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .cache .pytest_cache .ruff_cache runs
