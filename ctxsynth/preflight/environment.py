"""Whether this machine's environments can run a group's rows: the engines the rows name, each importable where
the row will load it (`ctxsynth experiments preflight`).

Two environments, because their pins collide (docs/scaling.md, "Installing on a GPU machine"): the training one
(.venv: the CUDA torch, flash-attn built against it without build isolation, DeepSpeed, bitsandbytes; `make
gpu-env`) and vLLM's own (.venv-vllm, `make vllm-env`), used only as a server the synthesize stage starts. Installing
vLLM into .venv would replace its torch with vLLM's pin, after which flash-attn's compiled kernels no longer load.

On a machine with a CUDA device a missing engine is a problem (the row would fail there); without one it is a note,
since the check is then about another machine.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from ctxsynth.finetune.settings import read_accelerate_config


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


def _executable(program: str) -> bool:
    path = Path(program)
    if path.parent != Path("."):
        return path.is_file() and os.access(path, os.X_OK)
    return shutil.which(program) is not None


def missing_engines(settings: dict, configs_dir: Path = Path("configs/accelerate")) -> list[tuple[str, str]]:
    """(params key, what is missing and how to install it) for one row's resolved settings, by section."""
    finetune, synthesize = settings["finetune"], settings["synthesize"]
    missing = []
    if finetune.attn_implementation == "flash_attention_2" and not _importable("flash_attn"):
        missing.append(
            ("finetune.attn_implementation", "flash-attn does not import here (`make gpu-env` builds it against torch)")
        )
    if finetune.quantization == "nf4" and not _importable("bitsandbytes"):
        missing.append(("finetune.quantization", "bitsandbytes does not import here (`make gpu-env`)"))
    if finetune.launcher == "accelerate":
        try:
            _, config = read_accelerate_config(finetune.accelerate_config, configs_dir)
        except Exception:  # noqa: BLE001 - the row check names a bad config
            config = {}
        if config.get("distributed_type") == "DEEPSPEED" and not _importable("deepspeed"):
            missing.append(("finetune.accelerate_config", "DeepSpeed does not import here (`make gpu-env`)"))
    if synthesize.backend == "vllm" and not _importable("vllm"):
        missing.append(("synthesize.backend", "vllm does not import here: serve it from .venv-vllm instead"))
    if settings["evaluate"].backend == "vllm" and not _importable("vllm"):
        missing.append(("evaluate.backend", "vllm does not import here (`pip install vllm`; auto falls back to hf)"))
    command = synthesize.openai.serve.command if synthesize.backend == "openai" else None
    if command and command[0] != "{python}" and not _executable(command[0]):
        missing.append(("synthesize.openai.serve.command", f"{command[0]} is not installed here (`make vllm-env`)"))
    return missing
