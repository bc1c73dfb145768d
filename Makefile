# `make repro` and `make test` each set up .venv first, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin

# Stage commands run `python -m ...`: the venv's interpreter must come first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

# The offline page that `dvc plots show` / `dvc plots diff` fill (.dvc/config: plots.html_template). It carries
# vega, vega-lite and vega-embed inline, from the vl-convert-python that requirements.txt pins: generated here
# with the venv's python, never committed (build/ is git-ignored).
PLOTS_TEMPLATE := build/plots_template.html

.PHONY: setup repro test test-slow loss-curve

setup: $(VENV)/.installed $(PLOTS_TEMPLATE)

# The project, editable, with the pins of requirements.txt and the test extra's of requirements-test.txt
# (pyproject.toml reads both): the `tinytransformer` command runs this checkout's code.
$(VENV)/.installed: requirements.txt requirements-test.txt pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --editable '.[test]'
	@touch $@

# A new vl-convert-python pin (requirements.txt, so .installed) brings new library versions.
$(PLOTS_TEMPLATE): scripts/build_plots_template.py $(VENV)/.installed
	$(BIN)/python scripts/build_plots_template.py build --out $@

# check_params first: DVC parses params.yaml before any stage runs (dvc.yaml's templating loads it), expanding
# YAML aliases without limit; check_params refuses them before they expand (docs/TROUBLESHOOTING.md).
repro: setup
	python -m src.pipeline.check_params
	dvc repro

test: setup
	python -m pytest $(PYTEST_ARGS)

# pytest exits 5 when no test is marked slow: not a failure.
test-slow: setup
	python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The README's loss curve: the chart `dvc plots show` draws, from its vega-lite spec, rendered by vl-convert (no
# browser) and checked to show the lines. Needs metrics/train_history.json (make repro).
loss-curve: setup
	@test -f metrics/train_history.json || { \
	    echo "metrics/train_history.json is missing: run 'make repro' first (the train stage writes it)" >&2; exit 1; }
	dvc plots show loss_by_step --json > build/loss_curve.json
	python scripts/build_plots_template.py render build/loss_curve.json docs/loss_curve.png --scale 2
