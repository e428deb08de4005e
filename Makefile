# The two commands of the quick start: `make repro` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# CPU torch first, pinned: a looser requirement lets pip pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= pipeline,eval,quant,test

.PHONY: repro test install dag clean-venv

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[$(EXTRAS)]"
	touch $@

install: $(INSTALLED)

repro: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/dvc repro

test: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

dag: $(INSTALLED)
	$(BIN)/dvc dag

clean-venv:
	rm -rf $(VENV)
