# The few verbs people type. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch 2.13.0 lies on this project's dev/CI machines; GPU users can set
# TORCH="torch==2.13.0" (PyPI's CUDA build) or any torch>=2.4 before `make`.
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.lp-installed

.PHONY: install train test lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,sweeps]"
	touch $(STAMP)

train: $(STAMP)
	$(PY) -m lp.train $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check lp tests
	$(VENV)/bin/ruff format --check lp tests

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache
