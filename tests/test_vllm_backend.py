"""The vLLM backend against a stand-in `vllm` module with the real API's shape (vLLM itself is CUDA-only)."""

import sys
import types
from dataclasses import dataclass, field

import pytest

from ctxsynth.generation.base import Request
from ctxsynth.generation.settings import VllmSettings


@dataclass
class FakeSamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    repetition_penalty: float = 1.0


@dataclass
class FakeLLM:
    model: str
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    seed: int = 0
    calls: list = field(default_factory=list)

    def chat(self, conversations, sampling_params, use_tqdm, add_generation_prompt, continue_final_message):
        self.calls.append((conversations, sampling_params, add_generation_prompt, continue_final_message))
        completion = types.SimpleNamespace
        return [
            types.SimpleNamespace(
                outputs=[completion(text=f" reply {c[-1]['content'][:6]}", finish_reason="length", token_ids=[1, 2, 3])]
            )
            for c in conversations
        ]


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_chat_over_whole_lists_with_per_item_seeds_and_prefix(fake_vllm, tiny_model_dir):
    from ctxsynth.generation.vllm_backend import VLLMBackend

    backend = VLLMBackend(tiny_model_dir, VllmSettings(tensor_parallel_size=8), chunk_size=3)
    assert backend.llm.tensor_parallel_size == 8
    requests = [
        Request(f"k{i}", [{"role": "user", "content": f"seed {i}"}], "Context:" if i % 2 else "") for i in range(4)
    ]
    sampling = {"max_new_tokens": 64, "temperature": 0.8, "top_p": 0.9}
    batches = list(backend.iter_generate(requests, sampling, seed=7))
    assert [len(b) for b in batches] == [3, 1]  # one yield per chunk, so the caller caches progressively
    results = {request.key: result for batch in batches for request, result in batch}
    assert results["k1"]["text"] == "Context: reply Contex" and results["k0"]["text"] == " reply seed 0"
    assert results["k0"]["finish_reason"] == "length" and results["k0"]["generated_tokens"] == 3
    plain, prefixed = backend.llm.calls[0], backend.llm.calls[1]
    assert plain[2:] == (True, False) and prefixed[2:] == (False, True)
    assert prefixed[0][0][-1] == {"role": "assistant", "content": "Context:"}
    seeds = [p.seed for p in plain[1]]
    assert len(set(seeds)) == len(seeds) and plain[1][0].max_tokens == 64 and plain[1][0].temperature == 0.8
    # The seed belongs to the item, not to its batch position.
    again = VLLMBackend(tiny_model_dir, VllmSettings(), chunk_size=1)
    list(again.iter_generate(requests[:1], sampling, seed=7))
    assert again.llm.calls[0][1][0].seed == plain[1][0].seed


def test_missing_vllm_is_a_clear_error(monkeypatch, tiny_model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)
    from ctxsynth.generation.vllm_backend import VLLMBackend

    with pytest.raises(ImportError, match="pip install '.\\[vllm\\]'"):
        VLLMBackend(tiny_model_dir, VllmSettings())
