"""Generation backends behind one interface (`base.Backend`); `make_backend` builds the one a stage names.

Heavy or optional libraries (torch, vLLM) are imported only by the backend that is chosen.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal, get_args

from ctxsynth.core.hub import model_identity
from ctxsynth.core.io import InputError
from ctxsynth.generation.base import Backend
from ctxsynth.generation.settings import OpenAIBatchSettings, OpenAISettings, VllmSettings

# "released" generates nothing: the synthesize stage reads the paper's own contexts (ctxsynth/synthesis/released.py).
BackendName = Literal["transformers", "vllm", "openai", "openai-batch", "released"]
BACKENDS: tuple[str, ...] = get_args(BackendName)


def api_key(variable: str | None, key: str) -> str | None:
    """The key in the variable the settings' `api_key_env` (params key `key`) names, and no other: falling back to
    OPENAI_API_KEY would send that key to whatever server base_urls names (a local vLLM, a colleague's endpoint).
    None: the server needs no key. A named variable that is unset stops here, before anything is sent or paid."""
    if not variable:
        return None
    if not os.environ.get(variable):
        raise InputError(
            "params.yaml",
            f"names ${variable}, which is not set in this environment: export it, or name the variable that holds "
            "this server's key (null: a server that needs none)",
            field=key,
        )
    return os.environ[variable]


def make_backend(
    name: str,
    model_dir: Path | str,
    *,
    batch_size: int,
    device: str,
    dtype: str,
    openai: OpenAISettings | None = None,
    vllm: VllmSettings | None = None,
    openai_batch: OpenAIBatchSettings | None = None,
) -> Backend:
    """The generator named by `synthesize.backend`, built from its own settings section (the section's defaults
    when none is given); heavy or optional libraries are imported only when chosen."""
    if name == "transformers":
        from ctxsynth.generation.transformers_backend import TransformersBackend

        return TransformersBackend(model_dir, batch_size=batch_size, device=device, dtype=dtype)
    if name == "vllm":
        from ctxsynth.generation.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, vllm or VllmSettings())
    if name == "openai":
        from ctxsynth.generation.openai_chat import OpenAIBackend

        openai = openai or OpenAISettings()
        # By default the served model is taken to be the pipeline's base model, so cache entries are shared.
        base_model = None if openai.model_id else model_identity(model_dir)
        return OpenAIBackend(
            openai, default_model_id=base_model, api_key=api_key(openai.api_key_env, "synthesize.openai.api_key_env")
        )
    if name == "openai-batch":
        from ctxsynth.generation.openai_batch import OpenAIBatchBackend

        openai_batch = openai_batch or OpenAIBatchSettings()
        # A hosted model is not the pipeline's base model: its cache identity is the served model's name.
        return OpenAIBatchBackend(
            openai_batch, api_key=api_key(openai_batch.api_key_env, "synthesize.openai_batch.api_key_env")
        )
    if name == "released":
        raise ValueError("synthesize.backend released runs no model: ctxsynth.synthesis.released reads the release")
    raise ValueError(f"unknown synthesize.backend {name!r}; available: {', '.join(BACKENDS)}")
