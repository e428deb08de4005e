"""Settings of the generation backends, beside the backends that take them: params.yaml sections `synthesize.vllm`,
`synthesize.openai` (with its `serve`) and `synthesize.openai_batch`, nested in the synthesize stage's settings
(ctxsynth/synthesis/settings.py). Each field's default is the one place that default lives: a backend takes its
settings object, not the fields one by one with defaults of its own (tests/test_settings.py checks both).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ctxsynth.core.settings import Invalid


@dataclass(frozen=True)
class VllmSettings:
    """`synthesize.vllm`: backend vllm (CUDA; pip install '.[vllm]')."""

    tensor_parallel_size: int = 1  # GPUs per model
    dtype: str = "auto"  # vLLM's dtype
    max_model_len: int | None = None  # null: the model's own window
    gpu_memory_utilization: float = 0.9  # share of GPU memory vLLM may take


@dataclass(frozen=True)
class ServeSettings:
    """`synthesize.openai.serve`: the generator's server, started by the synthesize stage on the first generation
    that is not cached, and stopped before the stage ends (ctxsynth/generation/managed_server.py)."""

    # null: base_urls name servers started elsewhere. A list: the command, with {model}, {port} and {python} filled
    # in, e.g. [.venv-vllm/bin/vllm, serve, "{model}", --port, "{port}", --tensor-parallel-size, "8"].
    command: list[str] | None = None
    port: int = 8000  # where the started server listens; base_urls is then http://127.0.0.1:<port>/v1
    startup_timeout: float = 1800  # seconds to wait for the model to load (a 72B model takes minutes)
    log: str | None = None  # the server's output; null: ~/.cache/ctxsynth/servers/<port>.log

    def validate(self) -> None:
        if self.command is not None:
            if not self.command or not all(isinstance(part, str) for part in self.command):
                raise Invalid("command", "expected a non-empty list of strings, or null")
            for part in self.command:
                names = re.findall(r"{(\w*)}", part)
                unknown = [name for name in names if name not in ("model", "port", "python")]
                if unknown:
                    known = "{model}, {port}, {python}"
                    raise Invalid("command", f"unknown placeholder {{{unknown[0]}}} (known: {known})")
        if not 0 < self.port < 65536:
            raise Invalid("port", f"expected a TCP port, got {self.port}")
        if self.startup_timeout <= 0:
            raise Invalid("startup_timeout", f"expected > 0 seconds, got {self.startup_timeout}")


@dataclass(frozen=True)
class OpenAISettings:
    """`synthesize.openai`: backend openai (any chat-completions server; several URLs are used round-robin)."""

    base_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:8000/v1"])  # used round-robin
    model: str = "SmolLM2-135M-Instruct"  # the model name the server serves
    model_id: str | None = None  # cache identity; null = the pipeline's base model (shares cache with transformers)
    # The environment variable holding the server's key; null: a server that needs none (a local `vllm serve`).
    api_key_env: str | None = None
    concurrency: int = 8  # requests in flight
    timeout: float = 120  # seconds per request
    max_retries: int = 6  # per request, with exponential backoff
    serve: ServeSettings = field(default_factory=ServeSettings)  # start the server in the stage (vllm serve)

    def validate(self) -> None:
        if not self.base_urls:
            raise Invalid("base_urls", "expected at least one server URL")
        if self.concurrency < 1:
            raise Invalid("concurrency", f"expected at least 1, got {self.concurrency}")


@dataclass(frozen=True)
class OpenAIBatchSettings:
    """`synthesize.openai_batch`: backend openai-batch (the OpenAI Batch API the paper used; matched by custom_id)."""

    base_url: str = "https://api.openai.com/v1"  # the Batch API server
    model: str = "gpt-4o-mini-2024-07-18"  # pin a dated snapshot: the cache key is the name
    model_id: str | None = None  # cache identity; null = the model name
    api_key_env: str = "OPENAI_API_KEY"  # the environment variable holding the API key (OpenAI's, by default)
    completion_window: str = "24h"  # the Batch API's completion window
    poll_interval: float = 30  # seconds between status polls
    max_polls: int | None = None  # null = wait until the batch ends; a killed run resumes the same batch
    state_dir: str | None = None  # where batch ids are kept for resuming; null: ~/.cache/ctxsynth/openai_batches
    timeout: float = 120  # seconds per HTTP request
    max_retries: int = 6  # per HTTP request
    send_repetition_penalty: bool = False  # OpenAI rejects it: set sampling.repetition_penalty to null there
