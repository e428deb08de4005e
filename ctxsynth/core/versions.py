"""The library versions a stage's numbers depend on, recorded beside them in its metrics file: the same params on
other versions can give other scores (a tokenizer fix, a kernel change), and a comparison should say so."""

from __future__ import annotations

import platform
from importlib import metadata

LIBRARIES = (
    "torch",
    "transformers",
    "tokenizers",
    "peft",
    "accelerate",
    "lm_eval",
    "safetensors",
    "datasets",
    "bitsandbytes",
    "deepspeed",
    "flash_attn",
    "vllm",
)


def library_versions() -> dict[str, str]:
    """Python's and every installed library's version of LIBRARIES (absent ones left out)."""
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions
