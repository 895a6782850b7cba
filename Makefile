# feedhandler: the two commands a newcomer needs, `make demo` and `make test`, and a few more.
#
# Rules this Makefile keeps:
# - Everything runs from `.venv`, which it creates from nothing (python3 -m venv) when missing.
# - A re-run is fast: each install leaves a stamp in `.venv` that is newer than pyproject.toml, and
#   pip runs again only when pyproject.toml changes (or `.venv` is removed).
# - `make test` needs a real Redis and PostgreSQL: scripts/services.sh makes sure both listen
#   (starting or installing them where it can) before pytest runs. Nothing is mocked.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:  # a failed `feedhandler generate` leaves no half-written sample behind

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
PIP := $(VPY) -m pip --disable-pip-version-check
# -qq: errors still show, warnings don't (this machine's pip config warns about each missing local index).
PIP_FLAGS ?= -qq

# Integration test servers; tests and scripts/services.sh read the same variables.
export FEEDHANDLER_REDIS_URL ?= redis://127.0.0.1:6379/15
export FEEDHANDLER_PG_DSN ?= postgresql://postgres@127.0.0.1:5432/feedhandler_test
# Real captures, where shared/ sits beside the repo as in CI (.ci/run sets the same); else tests skip.
REAL_DATA_DEFAULT := $(wildcard $(abspath ../shared/data/real))
ifneq ($(REAL_DATA_DEFAULT),)
export FEEDHANDLER_REAL_DATA ?= $(REAL_DATA_DEFAULT)
endif

PYTEST_ARGS ?=
SAMPLE := captures/nasdaq-sample.pcap
SAMPLE_ARGS ?= --messages 16000 --symbols 40 --seed 7 --format pcap
DEMO_OUT ?= out

# Several people (and CI) may run make in the same tree at once: serialise pip on one lock file.
FLOCK := $(shell command -v flock 2>/dev/null)
LOCKED = $(if $(FLOCK),$(FLOCK) $(VENV)/.install.lock,)

.PHONY: help demo test bench sample docs services clean distclean

help:
	@echo "make demo       create .venv, install, replay $(SAMPLE) into $(DEMO_OUT)/"
	@echo "make test       install with test extras, start Redis + PostgreSQL if needed, run pytest"
	@echo "                (PYTEST_ARGS='-k redis' passes arguments to pytest)"
	@echo "make bench      install with bench extras and run every bench/*.py (helpers named _*.py are skipped)"
	@echo "make sample     rebuild $(SAMPLE) (SAMPLE_ARGS='$(SAMPLE_ARGS)')"
	@echo "make docs       regenerate docs/schema.md and docs/itch50.md from the declarations and the sample"
	@echo "make services   only make sure Redis and PostgreSQL are up"
	@echo "make clean      remove outputs and caches (keeps .venv); make distclean also removes .venv"

# --- the virtual environment ---------------------------------------------------------------------

$(VPY):
	@$(PYTHON) -c 'import sys' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' was not found. Install Python 3.11 or newer, or run make PYTHON=/path/to/python3.11" >&2; exit 1; }
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "error: feedhandler needs Python >= 3.11, but '$(PYTHON)' is $$($(PYTHON) -c 'import platform; print(platform.python_version())')." >&2; \
	  echo "       Install a newer Python and run: make PYTHON=python3.11 $(MAKECMDGOALS)" >&2; exit 1; }
	@echo "creating $(VENV) with $$($(PYTHON) -c 'import sys; print(sys.executable, sys.version.split()[0])')"
	@$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	  echo "error: '$(PYTHON) -m venv' failed. On Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }

# One stamp per set of extras; each is redone when pyproject.toml changes.
$(VENV)/.installed-base: pyproject.toml | $(VPY)
	@echo "installing feedhandler into $(VENV)"
	@$(LOCKED) $(PIP) install $(PIP_FLAGS) -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(VPY)
	@echo "installing feedhandler[test] into $(VENV)"
	@$(LOCKED) $(PIP) install $(PIP_FLAGS) -e '.[test]'
	@touch $@

$(VENV)/.installed-bench: pyproject.toml | $(VPY)
	@echo "installing feedhandler[test,bench] into $(VENV)"
	@$(LOCKED) $(PIP) install $(PIP_FLAGS) -e '.[test,bench]'
	@touch $@

# --- commands ------------------------------------------------------------------------------------

$(SAMPLE): | $(VENV)/.installed-base
	$(VENV)/bin/feedhandler generate $(SAMPLE) $(SAMPLE_ARGS)

demo: $(VENV)/.installed-base | $(SAMPLE)
	$(VENV)/bin/feedhandler replay $(SAMPLE) --out $(DEMO_OUT)

sample: $(VENV)/.installed-base
	$(VENV)/bin/feedhandler generate $(SAMPLE) $(SAMPLE_ARGS)

services:
	@scripts/services.sh

test: $(VENV)/.installed-test
	@scripts/services.sh
	$(VPY) -m pytest -q $(PYTEST_ARGS)

bench: $(VENV)/.installed-bench
	@shopt -s nullglob; files=(); \
	for f in bench/*.py; do case $${f##*/} in _*) ;; *) files+=("$$f") ;; esac; done; \
	if [ $${#files[@]} -eq 0 ]; then echo "no benchmarks in bench/"; exit 0; fi; \
	for f in "$${files[@]}"; do echo "=== $$f"; $(VPY) "$$f"; done

clean:
	rm -rf $(DEMO_OUT) build .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

docs: $(VENV)/.installed-base
	$(VPY) scripts/schema_doc.py $(SAMPLE)
