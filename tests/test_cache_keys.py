"""Caches are keyed by everything that changes an output (issue 12, item 4).

- The evaluation cache (one lm-eval request-cache file per model content) is also named by the backend, the device
  and dtype they resolve to, and the batch size; lm-eval's own per-request key holds the prompt and generation kwargs.
- The synthesis cache stores each generation under its request key together with the backend's
  `generation_settings` (transformers: device type and dtype; vllm: dtype and max_model_len; servers: nothing), for
  contexts, instructions and answerability alike. The request key itself, from which backends derive an item's
  sampling seed, is unchanged: the same settings give the same texts as before.
"""

from __future__ import annotations

import json

import pytest

from ctxsynth.evaluate.run import generation_cache_db
from ctxsynth.evaluate.settings import EvalSettings
from ctxsynth.generation.cache import GenerationCache, cache_key, stored_key
from ctxsynth.generation.settings import OpenAIBatchSettings, OpenAISettings, VllmSettings
from ctxsynth.synthesis.contexts import synthesize_contexts
from ctxsynth.synthesis.instructions import synthesize_instructions
from ctxsynth.synthesis.prompts import get_prompt
from ctxsynth.synthesis.verify import answerability_scores

# ------------------------------------------------------------------------------------------------ evaluation cache


@pytest.fixture
def model_dir(tmp_path):
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "provenance.json").write_text(json.dumps({"model_name": "m", "weights_sha256": "abc"}))
    return directory


def cache_path(model_dir, adapter=None, **settings):
    return generation_cache_db(model_dir, adapter, settings=EvalSettings(**{"device": "cpu", **settings}))


@pytest.mark.parametrize(
    "change",
    [
        {"backend": "vllm"},
        {"dtype": "bfloat16"},
        {"dtype": "float16"},
        {"device": "cuda"},
        {"batch_size": 4},
    ],
)
def test_each_generation_setting_names_its_own_evaluation_cache(model_dir, change):
    assert cache_path(model_dir, **change) != cache_path(model_dir)


def test_the_same_settings_share_the_evaluation_cache(model_dir, tmp_path):
    assert cache_path(model_dir) == cache_path(model_dir)
    # dtype auto on CPU resolves to float32: the same generations, the same cache.
    assert cache_path(model_dir, dtype="auto") == cache_path(model_dir, dtype="float32")
    # Settings that change no generation (what to score, how many docs) keep the cache.
    assert cache_path(model_dir, limit=3, score_base=False, tasks=["squad_long"]) == cache_path(model_dir)
    # The adapter's content still names the cache as before.
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    with_adapter = cache_path(model_dir, adapter)
    assert with_adapter != cache_path(model_dir)
    (adapter / "adapter_model.safetensors").write_bytes(b"other weights")
    assert cache_path(model_dir, adapter) != with_adapter
    # A merged adapter is another float path than the unmerged one; without an adapter there is nothing to merge.
    assert cache_path(model_dir, adapter, merge_adapter=False) != cache_path(model_dir, adapter)
    assert cache_path(model_dir, merge_adapter=False) == cache_path(model_dir)


# ------------------------------------------------------------------------------------------------- synthesis cache

SEEDS = [
    {
        "id": f"s{i}",
        "task": "hotpotqa",
        "instruction": f"Question {i}?",
        "answer": f"answer {i}",
        "context": f"c{i} " * 9,
    }
    for i in range(4)
]
SAMPLING = {"max_new_tokens": 8, "temperature": 0.0}


class FakeBackend:
    """A generator with a model_id and generation settings, counting what it is asked to generate."""

    name = "fake"

    def __init__(self, model_id: str = "fake@1", **generation_settings):
        self.model_id, self.generation_settings, self.calls = model_id, generation_settings, 0

    def iter_generate(self, requests, sampling, seed):
        for request in requests:
            self.calls += 1
            text = "Context: background. Question: Who? Answer: answer 1"
            yield [(request, {"text": text, "generated_tokens": 3, "finish_reason": "stop"})]


def contexts(backend, cache):
    return synthesize_contexts(SEEDS, backend, cache, get_prompt("context_synthesis"), SAMPLING, 0, 50, "Context:")


def instructions(backend, cache):
    return synthesize_instructions(SEEDS, backend, cache, get_prompt("instruction_synthesis"), SAMPLING, 0, 30, 1)


def answerability(backend, cache):
    records = [{**seed, "parse_status": "ok"} for seed in SEEDS]
    return answerability_scores(records, backend, cache, seed=0), {}


@pytest.mark.parametrize("synthesize", [contexts, instructions, answerability])
@pytest.mark.parametrize(
    "changed",
    [
        {"device": "cuda", "dtype": "float32"},
        {"device": "cpu", "dtype": "bfloat16"},
        {"device": "cpu"},
        {"dtype": "float32", "max_model_len": 4096},
    ],
)
def test_a_changed_device_or_dtype_misses_the_synthesis_cache(tmp_path, synthesize, changed):
    cache = GenerationCache(tmp_path)
    first = FakeBackend(device="cpu", dtype="float32")
    synthesize(first, cache)
    assert first.calls == len(SEEDS)
    same = FakeBackend(dtype="float32", device="cpu")  # the same settings, in another order: the same keys
    synthesize(same, cache)
    assert same.calls == 0
    other = FakeBackend(**changed)
    synthesize(other, cache)
    assert other.calls == len(SEEDS)


class KeyRecorder(FakeBackend):
    def __init__(self, **generation_settings):
        super().__init__(**generation_settings)
        self.keys = []

    def iter_generate(self, requests, sampling, seed):
        self.keys += [request.key for request in requests]
        yield from super().iter_generate(requests, sampling, seed)


def test_the_backend_sees_the_same_request_keys_whatever_the_settings(tmp_path):
    """Backends derive each item's sampling seed from its request key (transformers, vllm): the request key is the
    content key as before (model, prompt, sampling, seed), so the stored key's new part changes no sampled text."""
    cpu, bf16 = KeyRecorder(device="cpu", dtype="float32"), KeyRecorder(device="cpu", dtype="bfloat16")
    records, _ = contexts(cpu, GenerationCache(tmp_path))
    contexts(bf16, GenerationCache(tmp_path))
    assert cpu.keys == bf16.keys and len(cpu.keys) == len(SEEDS)
    prompt = get_prompt("context_synthesis")
    seed = SEEDS[0]
    messages = prompt.messages(instruction=seed["instruction"], answer=seed["answer"], length=50)
    content_key = cache_key(
        model="fake@1",
        messages=messages,
        response_prefix="Context:",
        sampling=SAMPLING,
        seed=0,
        prompt_version=prompt.version,
    )
    assert cpu.keys[0] == content_key
    assert records[0]["provenance"]["cache_key"] == stored_key(content_key, {"device": "cpu", "dtype": "float32"})
    assert GenerationCache(tmp_path).get(records[0]["provenance"]["cache_key"]) is not None


def test_records_name_the_key_that_holds_the_generation_settings(tmp_path):
    records, _ = contexts(FakeBackend(device="cpu", dtype="float32"), GenerationCache(tmp_path))
    bf16, _ = contexts(FakeBackend(device="cpu", dtype="bfloat16"), GenerationCache(tmp_path))
    assert [r["context"] for r in records] == [r["context"] for r in bf16]  # the fake's text does not change...
    assert {r["provenance"]["cache_key"] for r in records}.isdisjoint(r["provenance"]["cache_key"] for r in bf16)


def test_a_backend_without_generation_settings_keys_as_an_empty_mapping(tmp_path):
    """A server backend (openai, openai-batch) has {}: a plain fake without the attribute shares its entries."""

    class Plain(FakeBackend):
        def __init__(self):
            super().__init__()
            del self.generation_settings

    cache = GenerationCache(tmp_path)
    contexts(FakeBackend(), cache)
    plain = Plain()
    contexts(plain, cache)
    assert plain.calls == 0


def test_backends_report_what_changes_their_outputs(tiny_model_dir):
    from ctxsynth.generation.openai_batch import OpenAIBatchBackend
    from ctxsynth.generation.openai_chat import OpenAIBackend
    from ctxsynth.generation.transformers_backend import TransformersBackend

    auto = TransformersBackend(tiny_model_dir, batch_size=2, device="auto", dtype="float32")
    assert auto.generation_settings == {"device": "cpu", "dtype": "float32"}  # auto resolved: shares cpu's keys
    assert TransformersBackend(tiny_model_dir, batch_size=2, device="cpu", dtype="bfloat16").generation_settings == {
        "device": "cpu",
        "dtype": "bfloat16",
    }
    assert OpenAIBackend(OpenAISettings(base_urls=["http://127.0.0.1:1/v1"], model="m")).generation_settings == {}
    batch = OpenAIBatchSettings(base_url="http://127.0.0.1:1/v1", model="m", state_dir="unused")
    assert OpenAIBatchBackend(batch).generation_settings == {}


def test_the_vllm_backend_reports_dtype_and_window(tiny_model_dir, monkeypatch):
    import sys
    import types

    module = types.ModuleType("vllm")
    module.LLM = lambda **kwargs: types.SimpleNamespace(**kwargs)
    monkeypatch.setitem(sys.modules, "vllm", module)
    from ctxsynth.generation.vllm_backend import VLLMBackend

    backend = VLLMBackend(tiny_model_dir, VllmSettings(dtype="bfloat16", max_model_len=4096))
    assert backend.generation_settings == {"dtype": "bfloat16", "max_model_len": 4096}
