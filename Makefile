# flairlab — two commands on a fresh machine:  `make demo` (notebook pipeline)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.flairlab-installed

.PHONY: test lint browser install

install: $(STAMP)

# (re)install when pyproject.toml changes; torch is pinned to the 2.13.0 CPU build in pyproject
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[test]"
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
