# Two commands on a fresh machine: `make run` (whole pipeline on the built-in
# data) and `make test`. Both create .venv and install the project first.
VENV ?= .venv
PYTHON ?= python3
# CPU build of torch, installed before the project so that its torch range is
# already satisfied (a bare `torch` requirement would pull a multi-GB CUDA build).
# On a GPU machine: make run TORCH_SPEC='torch==2.13.0 --extra-index-url <your CUDA wheel index>'
# (an extra index: torch's own dependencies still come at their locked versions from PyPI).
TORCH_SPEC ?= torch==2.13.0
# Exact versions of everything else (see its header); `make lock` rewrites it.
LOCK ?= requirements/lock-linux-x86_64.txt
# Extras resolved into the lock (comma-separated, as in pip: dev,slurm), and what
# the lock leaves out (torch and the CUDA libraries come with TORCH_SPEC; sparsect
# is this checkout).
LOCK_EXTRAS ?= dev
LOCK_EXCLUDE = ^(torch|triton|sparsect|nvidia[-_.][^=]*)==
BIN = $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast lint params clean ablation lock unrolled

setup: $(VENV)/.installed

# pip at its locked version, torch with its dependencies held to the lock, the
# lock, then this project alone (its dependencies are in the lock, extras too);
# `pip check` proves the result consistent.
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c $(LOCK) pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -r $(LOCK)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	$(BIN)/python -m pip check
	touch $@

# Re-resolves pyproject.toml's ranges (newest releases that fit) in a fresh virtual
# environment in a temp folder and writes its `pip list` minus LOCK_EXCLUDE to
# $(LOCK), keeping the header. Linux x86-64 only: the lock is for these machines.
lock:
	@set -e; \
	$(PYTHON) -c 'import platform, sys; sys.exit(sys.platform != "linux" or platform.machine() != "x86_64")' \
		|| { echo "make lock: run on linux x86-64 (the lock is for those machines)" >&2; exit 1; }; \
	tmp=$$(mktemp -d); trap 'rm -rf "$$tmp"' EXIT; \
	$(PYTHON) -m venv "$$tmp/venv"; \
	"$$tmp/venv/bin/python" -m pip install --quiet --upgrade pip setuptools; \
	"$$tmp/venv/bin/python" -m pip install --quiet $(TORCH_SPEC); \
	"$$tmp/venv/bin/python" -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extras = [x for x in sys.argv[1].split(",") if x]; print("\n".join(p["dependencies"] + [r for x in extras for r in p["optional-dependencies"][x]]))' \
		'$(LOCK_EXTRAS)' > "$$tmp/requirements.txt"; \
	"$$tmp/venv/bin/python" -m pip install --quiet -r "$$tmp/requirements.txt"; \
	"$$tmp/venv/bin/python" -m pip check; \
	mkdir -p $(dir $(LOCK)); \
	{ if [ -f $(LOCK) ]; then awk '!/^#/ {exit} {print}' $(LOCK); fi; \
	  "$$tmp/venv/bin/python" -m pip list --format=freeze | grep -v -i -E '$(LOCK_EXCLUDE)'; \
	} > "$$tmp/lock.txt"; \
	mv "$$tmp/lock.txt" $(LOCK); \
	echo "$(LOCK): $$(grep -c -v '^#' $(LOCK)) packages pinned; now: make setup && make test"

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
	rm -rf artifacts reports/views mlflow.db mlruns mlartifacts .sparsect-locks

# Learned Primal-Dual against the UNets at 60 views, equal epochs (conf/experiment/
# unrolled.yaml; README gives its time): train, evaluate, real scans, report, register,
# and lpd against sg_lpd over training seeds 0, 1 and 2.
UNROLLED = artifacts/unrolled
STAGE_INPUTS = --prepared artifacts/prepared --sim artifacts/sim/60
unrolled: setup
	$(BIN)/dvc repro masks baselines@60
	$(BIN)/sparsect params experiment=unrolled --out $(UNROLLED)/params.yaml
	$(BIN)/sparsect train --params $(UNROLLED)/params.yaml --views 60 $(STAGE_INPUTS) \
		--masks artifacts/masks --out $(UNROLLED)/models/60
	for seed in 1 2; do \
		$(BIN)/sparsect train --params $(UNROLLED)/params.yaml --views 60 $(STAGE_INPUTS) \
			--masks artifacts/masks --out $(UNROLLED)/seed$$seed/models/60 \
			--models lpd,sg_lpd seed=$$seed || exit 1; \
		$(BIN)/sparsect evaluate --params $(UNROLLED)/params.yaml --views 60 $(STAGE_INPUTS) \
			--masks artifacts/masks --models $(UNROLLED)/seed$$seed/models/60 \
			--out $(UNROLLED)/seed$$seed/evaluation || exit 1; \
	done
	$(BIN)/sparsect evaluate --params $(UNROLLED)/params.yaml --views 60 $(STAGE_INPUTS) \
		--masks artifacts/masks --models $(UNROLLED)/models/60 \
		--baselines artifacts/baselines/60 --out reports/unrolled/views/60
	$(BIN)/sparsect external --params $(UNROLLED)/params.yaml --views 60 --scans realct \
		--models $(UNROLLED)/models/60 --baselines artifacts/baselines/60 \
		--out reports/unrolled/external/60
	$(BIN)/sparsect report --params $(UNROLLED)/params.yaml --evaluations reports/unrolled/views \
		--external reports/unrolled/external --out reports/unrolled
	$(BIN)/sparsect promote --params $(UNROLLED)/params.yaml --prepared artifacts/prepared \
		--models $(UNROLLED)/models --evaluations reports/unrolled/views \
		--out reports/unrolled/promotion.json
	$(BIN)/sparsect seeds --models sg_lpd,lpd --seeds 0,1,2 --evaluations \
		reports/unrolled/views/60 $(UNROLLED)/seed1/evaluation $(UNROLLED)/seed2/evaluation \
		--out reports/unrolled/seeds.json
