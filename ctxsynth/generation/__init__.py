"""Generation backends behind one interface (`base.Backend`); `make_backend` builds the one a stage names.

Heavy or optional libraries (torch, vLLM) are imported only by the backend that is chosen.
"""

from __future__ import annotations

import os
from pathlib import Path

from ctxsynth.core.hub import model_identity
from ctxsynth.generation.base import Backend

# "released" generates nothing: the synthesize stage reads the paper's own contexts (ctxsynth/synthesis/released.py).
BACKENDS = ("transformers", "vllm", "openai", "openai-batch", "released")


def _api_key(options: dict) -> str | None:
    """The key in the variable `api_key_env` names, and no other: falling back to OPENAI_API_KEY would send that key
    to whatever server base_urls names (a local vLLM, a colleague's endpoint)."""
    explicit = options.pop("api_key", None)
    variable = options.pop("api_key_env", None)
    return explicit or (os.environ.get(variable) if variable else None)


def make_backend(
    name: str,
    model_dir: Path | str,
    batch_size: int = 16,
    device: str = "auto",
    dtype: str = "float32",
    openai: dict | None = None,
    vllm: dict | None = None,
    openai_batch: dict | None = None,
) -> Backend:
    """The generator named by `synthesize.backend`; heavy or optional libraries are imported only when chosen."""
    if name == "transformers":
        from ctxsynth.generation.transformers_backend import TransformersBackend

        return TransformersBackend(model_dir, batch_size=batch_size, device=device, dtype=dtype)
    if name == "vllm":
        from ctxsynth.generation.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, **(vllm or {}))
    if name == "openai":
        from ctxsynth.generation.openai_chat import OpenAIBackend

        options = dict(openai or {})
        options.pop("serve", None)  # the server it starts is the synthesize stage's (generation/managed_server.py)
        # By default the served model is taken to be the pipeline's base model, so cache entries are shared.
        options["model_id"] = options.get("model_id") or model_identity(model_dir)
        options["api_key"] = _api_key(options)
        return OpenAIBackend(**options)
    if name == "openai-batch":
        from ctxsynth.generation.openai_batch import OpenAIBatchBackend

        options = dict(openai_batch or {})
        # A hosted model is not the pipeline's base model: its cache identity is the served model's name.
        options["api_key"] = _api_key(options)
        return OpenAIBatchBackend(**options)
    if name == "released":
        raise ValueError("synthesize.backend released runs no model: ctxsynth.synthesis.released reads the release")
    raise ValueError(f"unknown synthesize.backend {name!r}; available: {', '.join(BACKENDS)}")
