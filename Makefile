# `make repro` and `make test` each set up .venv first, so both work on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin

# Stage commands run `python -m ...`: the venv's interpreter must come first on PATH.
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1

# The offline page that `dvc plots show` / `dvc plots diff` fill (.dvc/config: plots.html_template). It carries
# vega, vega-lite and vega-embed, fetched from the npm registry at pinned versions and sha512-checked by the
# script: generated here, never committed (build/ is git-ignored).
PLOTS_TEMPLATE := build/plots_template.html

.PHONY: setup repro test test-slow loss-curve

setup: $(VENV)/.installed $(PLOTS_TEMPLATE)

$(VENV)/.installed: requirements.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $@

# The versions and their hashes live in the script, so editing it rebuilds the template.
$(PLOTS_TEMPLATE): scripts/build_plots_template.py
	$(PYTHON) scripts/build_plots_template.py build --out $@

repro: setup
	dvc repro

test: setup
	python -m pytest $(PYTEST_ARGS)

# pytest exits 5 when no test is marked slow: not a failure.
test-slow: setup
	python -m pytest -m slow $(PYTEST_ARGS) || [ $$? -eq 5 ]

# The README's loss curve: the project's own `dvc plots show` (offline template), screenshotted by headless
# Chromium, checked to show a drawn chart, cropped to it. Needs metrics/train_history.json (make repro).
loss-curve: setup
	@test -f metrics/train_history.json || { \
	    echo "metrics/train_history.json is missing: run 'make repro' first (the train stage writes it)" >&2; exit 1; }
	rm -rf build/loss_curve
	dvc plots show loss_by_step --out build/loss_curve
	python scripts/build_plots_template.py screenshot build/loss_curve/index.html docs/loss_curve.png --crop --scale 2
