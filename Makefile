# The two commands of the quick start: `make repro` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# CPU torch first, pinned: a looser requirement lets pip pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= pipeline,eval,quant,test

# The paper's findings as DVC experiment groups (experiments/paper.yaml): `make paper-main`, SCALE=gpu for the
# paper-scale rows, JOBS=N parallel queue workers, ROWS="a b" only those rows of the group.
SCALE ?= cpu
# CPU scale: 2 queue workers with 1 thread each ran the same rows 1.3x faster than 1 worker with both cores
# (benchmarks/cpu_budget.py); gpu and rehearsal rows take the whole machine each.
JOBS ?= $(if $(filter cpu,$(SCALE)),2,1)
ROWS ?=
PAPER_GROUPS := paper-pilot paper-main paper-main-llama2 paper-sharegpt paper-contexts paper-generator
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

.PHONY: repro test lint format install dag clean-venv report $(PAPER_GROUPS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(INSTALLED)

repro: $(INSTALLED)
	$(RUN) $(BIN)/ctxsynth preflight
	$(RUN) $(BIN)/dvc repro

test: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# ruff: lint and format check (pyproject.toml [tool.ruff]); `make format` rewrites.
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(PAPER_GROUPS): paper-%: $(INSTALLED)
	$(RUN) $(BIN)/ctxsynth experiments run $* --scale $(SCALE) --jobs $(JOBS) $(if $(ROWS),--rows $(ROWS))
	$(RUN) $(BIN)/ctxsynth report

report: $(INSTALLED)
	$(RUN) $(BIN)/ctxsynth report

dag: $(INSTALLED)
	$(BIN)/dvc dag

clean-venv:
	rm -rf $(VENV)
