# `make demo` and `make test` each set up a local virtual environment (.venv) first.
# torch is pinned and installed before pyro-ppl so pip never pulls a CUDA build; the pin
# goes with the extras too, so that Lightning (the distributed extra) cannot move it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: setup demo test test-all

setup: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,distributed]" "$(TORCH)"
	touch $@

demo: setup
	$(PY) -m lazyjit demo

test: setup
	$(PY) -m pytest

test-all: setup
	$(PY) -m pytest -m ""
