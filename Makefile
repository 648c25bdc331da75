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
# Extras resolved into the lock (comma-separated, as in pip: dev,slurm,docs), and what
# the lock leaves out (torch and the CUDA libraries come with TORCH_SPEC; sparsect
# is this checkout).
LOCK_EXTRAS ?= dev,slurm,docs
LOCK_EXCLUDE = ^(torch|triton|sparsect|nvidia[-_.][^=]*)==
BIN = $(VENV)/bin
, := ,
space := $(subst ,, )
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: setup run test test-fast lint docs params clean ablation lock unrolled ellipses \
	followup followup-endpoint fan

# The outputs of a pipeline stage (prepare, simulate@30, ...) as dvc.yaml names them:
# stage paths live in dvc.yaml alone, and the experiments outside `dvc repro` below ask
# for them (tests/test_docs.py fails on a stage path spelled in this file). Each answer
# is kept for the rest of the run; a stage dvc.yaml lacks stops make.
out = $(or $(_out_$(1)),$(eval _out_$(1) := $(shell $(BIN)/sparsect stage-out $(1)))$(or \
	$(_out_$(1)),$(error dvc.yaml has no stage $(1) with outputs)))

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

# `sparsect recover` repairs the DVC state a hard kill of an earlier run can leave (a
# no-op otherwise), so that rerunning `make run` is always how a killed run resumes
run: setup
	$(BIN)/sparsect make-data --if-empty --out data
	$(BIN)/sparsect recover
	$(BIN)/dvc repro

test: setup
	$(BIN)/python -m pytest

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tests scripts docs
	$(BIN)/ruff format --check src tests scripts docs

# The documentation site (mkdocs.yml, docs/) into site/, strict as in CI: a broken link
# or anchor, a page missing from the nav or a broken API reference fails the build.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The prior ablation at 30 and 60 views, three seeds, with the pre-stated endpoint
# (conf/experiment/ablation.yaml; inputs from the pipeline; docs/evaluation/ablation.md
# gives its duration).
# ABLATION_OVERRIDES, e.g. 'ablation.variants=[unet,sg_unet]' trains the endpoint's pair only.
ABLATION_OVERRIDES ?=
ablation: setup
	$(BIN)/sparsect make-data --if-empty --out data
	$(BIN)/dvc repro masks simulate@30 simulate@60 cohort segmenter
	$(BIN)/sparsect params experiment=ablation $(ABLATION_OVERRIDES) \
		--out artifacts/ablation/params.yaml
	$(BIN)/sparsect ablation --params artifacts/ablation/params.yaml \
		--prepared $(call out,prepare) --sim $(dir $(call out,simulate@30)) \
		--masks $(call out,masks) --cohort $(call out,cohort) --segmenter $(call out,segmenter) \
		--work artifacts/ablation --out reports/ablation.json

# Follow-up imaging at 15, 30 and 60 views on the whole follow-up cohort (make run scores
# its first followup.subjects at followup.views); the learned models where train@<views>
# and followup_train@<views> made them (train@<views> is run where dvc.yaml has it; none
# at 15 views: FBP, TV, PICCS and the prior only). docs/evaluation/followup.md gives its time.
FOLLOWUP_VIEWS ?= 15 30 60
followup: setup
	$(BIN)/sparsect make-data --if-empty --out data
	$(BIN)/dvc repro followup_cohort
	set -e; for v in $(FOLLOWUP_VIEWS); do \
		models=""; m=$$($(BIN)/sparsect stage-out --optional train@$$v); \
		if [ -n "$$m" ]; then $(BIN)/dvc repro train@$$v; models="--models $$m"; fi; \
		p=$$($(BIN)/sparsect stage-out --optional followup_train@$$v); \
		if [ -n "$$p" ] && [ -f "$$p/summary.json" ]; then \
			models="$$models --prior-models $$p --segmenter $(call out,segmenter)"; fi; \
		$(BIN)/sparsect followup --views $$v --cohort $(call out,followup_cohort) $$models \
			--scans realct --out reports/followup-all/$$v followup.subjects=null; \
	done

# The learned prior model's pre-stated endpoint (docs/evaluation/followup.md;
# followup.endpoint):
# the model and its comparator at every seed, on the whole follow-up cohort at 30 views.
followup-endpoint: setup
	$(BIN)/sparsect make-data --if-empty --out data
	$(BIN)/dvc repro followup_cohort segmenter train@30
	$(BIN)/sparsect followup-endpoint --cohort $(call out,followup_cohort) \
		--segmenter $(call out,segmenter) --prepared $(call out,prepare) \
		--sim $(call out,simulate@30) --masks $(call out,masks) --models $(call out,train@30) \
		--work artifacts/followup-endpoint --out reports/followup-endpoint

# Recompose params.yaml after editing conf/ (a test checks they agree).
params: setup
	$(BIN)/sparsect params

# Removes what the pipeline wrote that git ignores (the DVC-cached outputs under artifacts/
# and reports/, the MLflow store, the registry's locks, the site); the committed results stay.
clean:
	rm -rf artifacts mlflow.db mlruns mlartifacts .sparsect-locks site
	git clean -fdXq -- reports

# The clinical fan beam at 60 views (conf/experiment/fan.yaml; docs/physics.md, "The
# clinical fan beam", gives its time): simulate, tune the baselines, train unet and
# sg_unet, evaluate on the test split, score the real scans and write reports/fan/.
# FAN_OVERRIDES, e.g. trainer=gpu.
FAN_OVERRIDES ?=
F = artifacts/fan
FR = reports/fan
FARGS = --params $(F)/params.yaml --views 60
fan: setup
	$(BIN)/sparsect make-data --if-empty --out data
	$(BIN)/dvc repro masks
	$(BIN)/sparsect params experiment=fan $(FAN_OVERRIDES) --out $(F)/params.yaml
	$(BIN)/sparsect simulate $(FARGS) --prepared $(call out,prepare) --out $(F)/sim/60
	$(BIN)/sparsect baselines --params $(F)/params.yaml --prepared $(call out,prepare) \
		--sim $(F)/sim/60 --out $(F)/baselines/60
	$(BIN)/sparsect train $(FARGS) --prepared $(call out,prepare) --sim $(F)/sim/60 \
		--masks $(call out,masks) --out $(F)/models/60
	$(BIN)/sparsect evaluate $(FARGS) --prepared $(call out,prepare) --sim $(F)/sim/60 \
		--masks $(call out,masks) --models $(F)/models/60 --baselines $(F)/baselines/60 \
		--out $(FR)/views/60
	$(BIN)/sparsect external $(FARGS) --scans realct --models $(F)/models/60 \
		--baselines $(F)/baselines/60 --out $(FR)/external/60
	$(BIN)/sparsect report --params $(F)/params.yaml --evaluations $(FR)/views \
		--external $(FR)/external --out $(FR)

# dival's ellipses benchmark reproduced (conf/experiment/ellipses.yaml;
# docs/evaluation/ellipses.md gives its time and the published numbers beside ours).
ellipses: setup
	$(BIN)/sparsect params experiment=ellipses --out artifacts/ellipses/params.yaml
	$(BIN)/sparsect ellipses --params artifacts/ellipses/params.yaml --out reports/ellipses

# Learned Primal-Dual against the UNets at 60 views, equal epochs (conf/experiment/
# unrolled.yaml; docs/methods.md gives its time): simulate, tune the baselines, train,
# evaluate, real scans, report, register, and sg_lpd against lpd over training seeds 0 and
# $(UNROLLED_SEEDS). `make unrolled UNROLLED_GEOMETRY=fan_clinical UNROLLED_SEEDS=` runs
# it in the clinical fan beam, seed 0 only; UNROLLED_OVERRIDES=trainer=gpu trains on GPUs.
UNROLLED_GEOMETRY ?= parallel
UNROLLED_OVERRIDES ?=
UNROLLED_SEEDS ?= 1 2
U = artifacts/unrolled/$(UNROLLED_GEOMETRY)
UR = reports/unrolled/$(UNROLLED_GEOMETRY)
UARGS = --params $(U)/params.yaml --views 60
unrolled: setup
	$(BIN)/dvc repro masks
	$(BIN)/sparsect params experiment=unrolled geometry=$(UNROLLED_GEOMETRY) \
		$(UNROLLED_OVERRIDES) --out $(U)/params.yaml
	$(BIN)/sparsect simulate $(UARGS) --prepared $(call out,prepare) --out $(U)/sim/60
	$(BIN)/sparsect baselines --params $(U)/params.yaml --prepared $(call out,prepare) \
		--sim $(U)/sim/60 --out $(U)/baselines/60
	$(BIN)/sparsect train $(UARGS) --prepared $(call out,prepare) --sim $(U)/sim/60 \
		--masks $(call out,masks) --out $(U)/models/60
	$(BIN)/sparsect evaluate $(UARGS) --prepared $(call out,prepare) --sim $(U)/sim/60 \
		--masks $(call out,masks) --models $(U)/models/60 --baselines $(U)/baselines/60 \
		--out $(UR)/views/60
	$(BIN)/sparsect external $(UARGS) --scans realct --models $(U)/models/60 \
		--baselines $(U)/baselines/60 --out $(UR)/external/60
	$(BIN)/sparsect report --params $(U)/params.yaml --evaluations $(UR)/views \
		--external $(UR)/external --out $(UR)
	$(BIN)/sparsect promote --params $(U)/params.yaml --prepared $(call out,prepare) \
		--models $(U)/models --evaluations $(UR)/views --out $(UR)/promotion.json
	for seed in $(UNROLLED_SEEDS); do \
		$(BIN)/sparsect train $(UARGS) --prepared $(call out,prepare) --sim $(U)/sim/60 \
			--masks $(call out,masks) --out $(U)/seed$$seed/models/60 \
			--models lpd,sg_lpd seed=$$seed || exit 1; \
		$(BIN)/sparsect evaluate $(UARGS) --prepared $(call out,prepare) --sim $(U)/sim/60 \
			--masks $(call out,masks) --models $(U)/seed$$seed/models/60 \
			--out $(U)/seed$$seed/evaluation || exit 1; \
	done
	$(if $(strip $(UNROLLED_SEEDS)),$(BIN)/sparsect seeds --models sg_lpd$(,)lpd \
		--seeds $(subst $(space),$(,),$(strip 0 $(UNROLLED_SEEDS))) --evaluations $(UR)/views/60 \
		$(foreach s,$(UNROLLED_SEEDS),$(U)/seed$(s)/evaluation) --out $(UR)/seeds.json)
