# `make demo` and `make test` set themselves up on a fresh machine (Python 3.11, CPU torch pinned).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test lint setup clean

$(VENV)/.installed: requirements.txt requirements-dev.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

lint: setup
	$(VENV)/bin/ruff check .

test: lint
	$(PY) -m pytest -q -rs

demo: setup
	$(PY) -m toyworld.demo --out demo_output

clean:
	rm -rf $(VENV) demo_output .pytest_cache .ruff_cache
