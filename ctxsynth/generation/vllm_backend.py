"""Offline vLLM generation (CUDA): `LLM.chat` over whole lists of conversations, tensor parallel, seeded per item.

vLLM is an optional extra (`pip install '.[vllm]'`, CUDA only on PyPI, with its own torch pin) and is imported
only when this backend is chosen. Each request carries its own sampling seed derived from (seed, cache key), so an
item's output does not depend on which other items share its batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ctxsynth.core.hub import model_identity
from ctxsynth.core.text import stable_int
from ctxsynth.generation.base import Request
from ctxsynth.generation.settings import VllmSettings


class VLLMBackend:
    name = "vllm"

    def __init__(self, model_dir: Path | str, settings: VllmSettings, chunk_size: int = 1024):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError(
                "synthesize.backend: vllm needs vLLM on a CUDA machine (pip install '.[vllm]'); "
                "use the transformers or openai backend elsewhere"
            ) from error
        self.llm = LLM(
            model=str(model_dir),
            tensor_parallel_size=int(settings.tensor_parallel_size),
            dtype=settings.dtype,
            max_model_len=settings.max_model_len,
            gpu_memory_utilization=float(settings.gpu_memory_utilization),
            seed=0,
        )
        self.model_id = model_identity(model_dir)
        # Stored with every cached generation (generation.cache.stored_key): dtype and window change the outputs.
        self.generation_settings = {"dtype": settings.dtype, "max_model_len": settings.max_model_len}
        self.chunk_size = int(chunk_size)  # results are yielded (and cached) after every chunk

    @staticmethod
    def sampling_params(sampling: dict, seed: int, key: str):
        from vllm import SamplingParams

        options = {
            "max_tokens": int(sampling["max_new_tokens"]),
            "temperature": float(sampling.get("temperature", 0.0)),
            "top_p": float(sampling.get("top_p", 1.0)),
            "seed": stable_int(seed, key) % (2**31),
        }
        if sampling.get("repetition_penalty"):
            options["repetition_penalty"] = float(sampling["repetition_penalty"])
        return SamplingParams(**options)

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        for start in range(0, len(requests), self.chunk_size):
            chunk = requests[start : start + self.chunk_size]
            # A response prefix is sent as an open assistant turn that the model continues.
            prefixed = [r for r in chunk if r.response_prefix]
            groups = [(False, [r for r in chunk if not r.response_prefix]), (True, prefixed)]
            results = []
            for continue_final, group in groups:
                if not group:
                    continue
                conversations = [
                    r.messages + ([{"role": "assistant", "content": r.response_prefix}] if continue_final else [])
                    for r in group
                ]
                outputs = self.llm.chat(
                    conversations,
                    [self.sampling_params(sampling, seed, r.key) for r in group],
                    use_tqdm=False,
                    add_generation_prompt=not continue_final,
                    continue_final_message=continue_final,
                )
                for request, output in zip(group, outputs):
                    completion = output.outputs[0]
                    results.append(
                        (
                            request,
                            {
                                "text": request.response_prefix + completion.text,
                                "finish_reason": completion.finish_reason or "stop",
                                "generated_tokens": len(completion.token_ids),
                            },
                        )
                    )
            yield results
