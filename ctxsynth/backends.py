"""Generation backends behind one interface: `iter_generate(requests, sampling, seed)` yields finished batches.

A request is (key, messages, response_prefix). Yielding finished items as they complete lets the caller cache each
one at once, so a killed run loses at most what is in flight.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ctxsynth.text import stable_int


@dataclass(frozen=True)
class Request:
    key: str
    messages: list[dict]
    response_prefix: str = ""


def model_identity(model_dir: Path | str) -> str:
    """Name and content hash of a model directory: the fetch stage's provenance, else a hash of the weights."""
    import json

    from ctxsynth.io import sha256_file

    model_dir = Path(model_dir)
    provenance_path = model_dir / "provenance.json"
    provenance = json.loads(provenance_path.read_text(encoding="utf-8")) if provenance_path.is_file() else {}
    name = provenance.get("model_name") or provenance.get("name") or model_dir.name
    version = provenance.get("member_sha256") or provenance.get("weights_sha256")
    if not version:
        weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
        if not weights:
            raise FileNotFoundError(f"{model_dir}: no provenance.json and no weights to identify the model by")
        version = sha256_file(weights[0])
    return f"{name}@{version}"


class TransformersBackend:
    """Continuous batching (`ctxsynth.batched_generation`): up to `batch_size` rows at a time, a finished row's slot
    goes to the next waiting prompt at once; prompts enter longest first (CPU or CUDA)."""

    name = "transformers"

    def __init__(self, model_dir: Path | str, batch_size: int = 16, device: str = "auto", dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=getattr(torch, dtype),
                                                          attn_implementation="sdpa").to(self.device).eval()
        self.batch_size = batch_size
        self.model_id = model_identity(model_dir)

    def prompt_text(self, request: Request) -> str:
        prompt = self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True)
        return prompt + request.response_prefix

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        from ctxsynth.batched_generation import ContinuousBatcher, Sampling

        prompts = [self.prompt_text(r) for r in requests]
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False).input_ids
        # Longest first, so the batch's padding stays small while it refills with ever shorter prompts.
        order = sorted(range(len(requests)), key=lambda i: (-len(prompt_ids[i]), requests[i].key))
        batcher = ContinuousBatcher(self.model, self.batch_size, set(self._eos_ids()), self.tokenizer.pad_token_id,
                                    self.device)
        runs = batcher.run([prompt_ids[i] for i in order], [stable_int(seed, requests[i].key) % (2**63) for i in order],
                           Sampling.from_params(sampling))
        for finished in runs:
            results = []
            for position, tokens, finish_reason in finished:
                request = requests[order[position]]
                text = request.response_prefix + self.tokenizer.decode(tokens, skip_special_tokens=True)
                results.append((request, {"text": text, "generated_tokens": len(tokens),
                                          "finish_reason": finish_reason}))
            yield results

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return [i for i in ids + [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id] if i is not None]


BACKENDS = ("transformers", "vllm", "openai", "openai-batch")


def _api_key(options: dict) -> str | None:
    return options.pop("api_key", None) or os.environ.get(options.pop("api_key_env", None) or "OPENAI_API_KEY")


def make_backend(name: str, model_dir: Path | str, batch_size: int = 16, device: str = "auto",
                 dtype: str = "float32", openai: dict | None = None, vllm: dict | None = None,
                 openai_batch: dict | None = None):
    """The generator named by `synthesize.backend`; heavy or optional libraries are imported only when chosen."""
    if name == "transformers":
        return TransformersBackend(model_dir, batch_size=batch_size, device=device, dtype=dtype)
    if name == "vllm":
        from ctxsynth.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, **(vllm or {}))
    if name == "openai":
        from ctxsynth.openai_backend import OpenAIBackend

        options = dict(openai or {})
        # By default the served model is taken to be the pipeline's base model, so cache entries are shared.
        options["model_id"] = options.get("model_id") or model_identity(model_dir)
        options["api_key"] = _api_key(options)
        return OpenAIBackend(**options)
    if name == "openai-batch":
        from ctxsynth.openai_batch import OpenAIBatchBackend

        options = dict(openai_batch or {})
        # A hosted model is not the pipeline's base model: its cache identity is the served model's name.
        options["api_key"] = _api_key(options)
        return OpenAIBatchBackend(**options)
    raise ValueError(f"unknown synthesize.backend {name!r}; available: {', '.join(BACKENDS)}")
