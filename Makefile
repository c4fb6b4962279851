# flairlab — two commands on a fresh machine:  `make demo` (notebook pipeline)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.flairlab-installed

.PHONY: test lint browser install gpu-check

install: $(STAMP)

# (re)install when pyproject.toml changes; torch is pinned to the 2.13.0 CPU build in pyproject
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
	# JupyterLab works offline: no news prompt, no update check (settings defaults of this venv)
	mkdir -p $(VENV)/share/jupyter/lab/settings
	cp binder/jupyterlab-overrides.json $(VENV)/share/jupyter/lab/settings/overrides.json
	touch $(STAMP)

# Debian's chromium for the headless-browser tests (no browser download); needs root or sudo
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null; }

lint: $(STAMP)
	$(BIN)/ruff check flairlab tests benchmarks notebooks

test: $(STAMP) browser lint
	$(BIN)/python -m pytest

# -- the one-command demo and JupyterLab ---------------------------------------------------------
# `make demo`: venv (install), the sample (and its packed store) if missing, then notebooks 00 -> 06.
# Same as `flairlab run pipelines/demo.yaml`; `python -m flairlab.runs.runner` only imports the runner
# (~150 MB instead of ~450 MB for the whole CLI), which matters for the 2 GB demo budget.
RUNS     ?= runs
PIPELINE ?= pipelines/demo.yaml
.PHONY: demo lab sample

sample: $(STAMP)
	$(BIN)/python -c "from flairlab.data.sample import ensure_sample; print('sample:', ensure_sample())"
	$(BIN)/python -c "from flairlab.data.sources import ensure_source; print('store:', ensure_source('sample_store'))"

demo: sample
	$(BIN)/python -m flairlab.runs.runner $(PIPELINE) --runs-dir $(RUNS)

# JupyterLab in the project's environment (ipywidgets, bokeh and leaflet front-ends are prebuilt);
# offline: no news feed, no update check (both fetch from the internet); runs/ is in its file browser.
# Extra options via LAB_ARGS, e.g. `make lab LAB_ARGS="--no-browser --port 8889"`
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root)
LAB_OFFLINE := --LabApp.news_url= --LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate
lab: sample
	$(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) $(LAB_OFFLINE) $(LAB_ARGS) \
	  notebooks/00_getting_started.ipynb

# -- GPU ---------------------------------------------------------------------------------------
# `make gpu-check`: the one-call GPU check (benchmarks/gpu_check.sh; README "Running on a GPU"):
# CLI smoke runs on CUDA, DDP when > 1 GPU, bench_gpu (MFU table). Without CUDA it says so, exit 0.
gpu-check:
	PYTHON=$(if $(wildcard $(BIN)/python),$(BIN)/python,python3) bash benchmarks/gpu_check.sh
