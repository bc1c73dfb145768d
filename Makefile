# `make repro` and `make test` each set up .venv first, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin

# Stage commands run `python -m ...`: the venv's interpreter must come first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

.PHONY: setup repro test test-slow

setup: $(VENV)/.installed

$(VENV)/.installed: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

repro: setup
	dvc repro

test: setup
	python -m pytest $(PYTEST_ARGS)

# pytest exits 5 when no test is marked slow: not a failure.
test-slow: setup
	python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]
