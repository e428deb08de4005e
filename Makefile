# The two commands of the quick start: `make repro` and `make test`. Both create .venv and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
# Every version the CPU environment resolved to, as pip constraints (`make lock` refreshes it).
LOCK := requirements.lock
# CPU torch first, pinned: a looser requirement lets pip pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
EXTRAS ?= pipeline,eval,quant,test

# The paper's findings as DVC experiment groups (experiments/paper.yaml): `make paper-main`, SCALE=gpu for the
# paper-scale rows (qlora: on one GPU; rehearsal, qlora-rehearsal: their CPU twins), JOBS=N parallel queue workers,
# ROWS="a b" only those rows of the group.
SCALE ?= cpu
# CPU scale: 2 queue workers with 1 thread each ran the same rows 1.3x faster than 1 worker with both cores
# (benchmarks/cpu_budget.py); gpu and rehearsal rows take the whole machine each.
JOBS ?= $(if $(filter cpu,$(SCALE)),2,1)
ROWS ?=
# EXECUTOR=slurm: one Slurm job a run instead of the local DVC queue (ctxsynth/paper/slurm.py, docs/scaling.md).
EXECUTOR ?= local
PAPER_GROUPS := paper-pilot paper-main paper-main-llama2 paper-sharegpt paper-contexts paper-generator
RUN := PATH="$(CURDIR)/$(BIN):$$PATH"

# GPU machines: two environments, since vLLM pins its own torch (installed beside the training torch it would
# replace it, and flash-attn's compiled kernels would no longer load). `make gpu-env`: .venv with the CUDA torch
# (PyPI's Linux wheel of $(TORCH)), then DeepSpeed, then flash-attn built against that torch without build isolation.
# `make vllm-env`: vLLM alone in .venv-vllm, which the synthesize stage starts as a server
# (synthesize.openai.serve.command). `ctxsynth experiments preflight <group> --scale gpu` checks both.
GPU_EXTRAS ?= pipeline,eval,quant,gpu,test
FLASH_ATTN ?= flash-attn==2.8.3.post2
VLLM ?= vllm==0.34.0
VLLM_VENV := .venv-vllm

.PHONY: repro test lint format install lock dag clean-venv report gpu-env vllm-env doctor gpu-check $(PAPER_GROUPS)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(INSTALLED): pyproject.toml $(LOCK) | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[$(EXTRAS)]"
	touch $@

lock: | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet --upgrade -e ".[$(EXTRAS)]"
	{ sed -n '1,2p' $(LOCK); $(BIN)/pip freeze --exclude-editable | sed 's/+cpu$$//'; } > $(LOCK).new
	mv $(LOCK).new $(LOCK)

install: $(INSTALLED)

gpu-env: | $(BIN)/python
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'torch $(TORCH) here is a CPU build: on a CUDA machine pip takes the CUDA one')"
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[$(GPU_EXTRAS)]"
	$(BIN)/pip install --quiet packaging ninja psutil
	$(BIN)/pip install --no-build-isolation "$(FLASH_ATTN)"
	$(BIN)/python -c "import flash_attn, deepspeed, bitsandbytes, torch; print('gpu-env: torch', torch.__version__, 'CUDA', torch.version.cuda, 'flash-attn', flash_attn.__version__)"
	touch $(INSTALLED)

vllm-env:
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/pip install "$(VLLM)"
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm-env: vllm', vllm.__version__)"

# No PATH change: the stages find the venv's interpreter themselves (stages/python), as a plain `.venv/bin/dvc repro`.
# Every CUDA path checked in minutes on small random-weight models; on CPU, the checks with a CPU form.
doctor: $(INSTALLED)
	$(BIN)/ctxsynth doctor

# The prepared run for a short GPU window (docs/paper-scale.md): on a bare CUDA machine with torch, transformers,
# peft and accelerate and no network, the wheels carried in .whl/ (bitsandbytes) go to /tmp/site, and the doctor and
# the GPU benchmark run from the checkout itself; their results land in metrics/ to be committed.
GPU_PYTHON ?= python3
gpu-check:
	if ls .whl/*.whl >/dev/null 2>&1; then $(GPU_PYTHON) -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl; fi
	PYTHONPATH="/tmp/site:$(CURDIR)" $(GPU_PYTHON) -m ctxsynth.cli doctor --out metrics/doctor.json
	PYTHONPATH="/tmp/site:$(CURDIR)" $(GPU_PYTHON) benchmarks/gpu_throughput.py --json metrics/gpu_throughput.json | tee metrics/gpu_throughput.txt

repro: $(INSTALLED)
	$(BIN)/ctxsynth preflight
	$(BIN)/dvc repro

test: $(INSTALLED)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

# ruff: lint and format check (pyproject.toml [tool.ruff]); `make format` rewrites. mypy: the types of core,
# generation and finetune (pyproject.toml [tool.mypy]).
lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m mypy

format: $(INSTALLED)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

$(PAPER_GROUPS): paper-%: $(INSTALLED)
	$(RUN) $(BIN)/ctxsynth experiments run $* --scale $(SCALE) --jobs $(JOBS) $(if $(ROWS),--rows $(ROWS)) \
		--executor $(EXECUTOR)
	$(RUN) $(BIN)/ctxsynth report

report: $(INSTALLED)
	$(RUN) $(BIN)/ctxsynth report

dag: $(INSTALLED)
	$(BIN)/dvc dag

clean-venv:
	rm -rf $(VENV)
