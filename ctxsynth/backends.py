"""Generation backends behind one interface: `iter_generate(requests, sampling, seed)` yields finished batches.

A request is (key, messages, response_prefix). Yielding batch by batch lets the caller cache each batch as soon as
it is done, so a killed run loses at most one batch.
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


class PerItemSampler:
    """Samples every row with its own seeded generator (temperature, then top-p) and leaves only the drawn token for
    the greedy step to pick. An item's sample then depends on its own seed and logits, not on which other items
    share its batch or which items a resumed run still had to generate."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device):
        import torch

        self.generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = probs.sort(dim=-1, descending=True)
            sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) > self.top_p] = 0.0  # smallest set reaching top_p
            probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
        drawn = torch.stack([torch.multinomial(probs[row], 1, generator=generator)
                             for row, generator in enumerate(self.generators)])
        return torch.full_like(scores, float("-inf")).scatter(-1, drawn, 0.0)


class TransformersBackend:
    """Batched `generate` with left padding and length-sorted batches (CPU or CUDA)."""

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
        import torch
        from transformers import LogitsProcessorList

        prompts = [self.prompt_text(r) for r in requests]
        lengths = [len(ids) for ids in self.tokenizer(prompts, add_special_tokens=False).input_ids]
        order = sorted(range(len(requests)), key=lambda i: (-lengths[i], requests[i].key))
        eos_ids = set(self._eos_ids())
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            encoded = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                     add_special_tokens=False).to(self.device)
            kwargs = {"max_new_tokens": int(sampling["max_new_tokens"]), "do_sample": False,
                      "pad_token_id": self.tokenizer.pad_token_id}
            if float(sampling.get("temperature", 0)) > 0:
                sampler = PerItemSampler([stable_int(seed, requests[i].key) % (2**63) for i in batch],
                                         float(sampling["temperature"]), float(sampling.get("top_p", 1.0)), self.device)
                kwargs["logits_processor"] = LogitsProcessorList([sampler])
            if sampling.get("repetition_penalty"):
                kwargs["repetition_penalty"] = float(sampling["repetition_penalty"])
            if sampling.get("min_new_tokens"):
                kwargs["min_new_tokens"] = int(sampling["min_new_tokens"])
            with torch.inference_mode():
                output = self.model.generate(**encoded, **kwargs)
            new_tokens = output[:, encoded.input_ids.shape[1]:].tolist()
            results = []
            for i, tokens in zip(batch, new_tokens):
                stop = next((n for n, t in enumerate(tokens) if t in eos_ids), None)
                kept = tokens if stop is None else tokens[:stop]
                text = requests[i].response_prefix + self.tokenizer.decode(kept, skip_special_tokens=True)
                results.append((requests[i], {"text": text, "generated_tokens": len(kept),
                                              "finish_reason": "length" if stop is None else "stop"}))
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
