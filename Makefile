# Two commands on a fresh machine: `make run` (whole pipeline on the built-in
# data) and `make test`. Both create .venv and install the project first.
VENV ?= .venv
PYTHON ?= python3
# CPU build of torch, installed before the project so that its torch range is
# already satisfied (a bare `torch` requirement would pull a multi-GB CUDA build).
# On a GPU machine: make run TORCH_SPEC='torch==2.13.0 --index-url <your CUDA wheel index>'
TORCH_SPEC ?= torch==2.13.0
BIN = $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast lint params clean ablation

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

run: setup
	$(BIN)/sparsect make-data --if-empty --out data
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

# The prior ablation at 60 views (inputs from the pipeline; README gives its duration).
ablation: setup
	$(BIN)/dvc repro masks simulate@60
	$(BIN)/sparsect params experiment=ablation --out artifacts/ablation/params.yaml
	$(BIN)/sparsect ablation --params artifacts/ablation/params.yaml --views 60 \
		--prepared artifacts/prepared --sim artifacts/sim/60 --masks artifacts/masks \
		--work artifacts/ablation/60 --out reports/ablation.json

# Recompose params.yaml after editing conf/ (a test checks they agree).
params: setup
	$(BIN)/sparsect params

clean:
	rm -rf artifacts reports/views mlflow.db mlruns
