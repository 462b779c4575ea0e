# toptune: `make run` sets up .venv and runs the default pipeline; `make test` runs the suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Kedro telemetry asks for consent and calls out: off in every command.
export KEDRO_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false

.PHONY: run test bench bench-scale venv data clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/kedro run

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m toptune.benchlog.bench

bench-scale: $(STAMP)
	$(PY) -m toptune.benchlog.scale

data:
	$(PYTHON) scripts/make_reviews.py

clean:
	rm -rf data/04_feature/* data/06_models/* data/07_model_output/* data/08_reporting/* mlflow.db mlruns
