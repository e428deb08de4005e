"""The transformers backend: continuous batching on CPU or CUDA, one seeded sampler per request."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ctxsynth.core.hub import model_identity
from ctxsynth.core.text import stable_int
from ctxsynth.generation.base import Request
from ctxsynth.generation.batching import ContinuousBatcher, Sampling


class TransformersBackend:
    """Continuous batching (`ctxsynth.generation.batching`): up to `batch_size` rows at a time, a finished row's slot
    goes to the next waiting prompt at once; prompts enter longest first (CPU or CUDA)."""

    name = "transformers"

    def __init__(self, model_dir: Path | str, batch_size: int, device: str, dtype: str):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        torch_dtype = getattr(torch, dtype)
        self.model = (
            AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype, attn_implementation="sdpa")
            .to(self.device)  # type: ignore[arg-type]  # transformers types `to` for a model, not a device
            .eval()
        )
        self.batch_size = batch_size
        self.model_id = model_identity(model_dir)
        # Stored with every cached generation (generation.cache.stored_key): the numerics differ by device type and
        # dtype. Not the GPU index, nor batch_size: a row's output does not depend on its batch (test_backends.py).
        self.generation_settings = {
            "device": torch.device(self.device).type,
            "dtype": str(torch_dtype).removeprefix("torch."),
        }

    def prompt_text(self, request: Request) -> str:
        # tokenize=False: one string (the return type covers the token-id forms too).
        prompt = str(self.tokenizer.apply_chat_template(request.messages, tokenize=False, add_generation_prompt=True))
        return prompt + request.response_prefix

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        prompts = [self.prompt_text(r) for r in requests]
        prompt_ids = self.tokenizer(prompts, add_special_tokens=False).input_ids
        # Longest first, so the batch's padding stays small while it refills with ever shorter prompts.
        order = sorted(range(len(requests)), key=lambda i: (-len(prompt_ids[i]), requests[i].key))
        batcher = ContinuousBatcher(
            self.model, self.batch_size, set(self._eos_ids()), self.tokenizer.pad_token_id, self.device
        )
        runs = batcher.run(
            [prompt_ids[i] for i in order],
            [stable_int(seed, requests[i].key) % (2**63) for i in order],
            Sampling.from_params(sampling),
        )
        for finished in runs:
            results = []
            for position, tokens, finish_reason in finished:
                request = requests[order[position]]
                text = request.response_prefix + str(self.tokenizer.decode(tokens, skip_special_tokens=True))
                results.append(
                    (request, {"text": text, "generated_tokens": len(tokens), "finish_reason": finish_reason})
                )
            yield results

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        ids = eos if isinstance(eos, list) else [eos]
        return [i for i in ids + [self.tokenizer.eos_token_id, self.tokenizer.pad_token_id] if i is not None]
