"""The transformers backend's continuous batching: an item's output does not depend on its batch companions or on
refills, matches `generate` one prompt at a time, and every item is yielded exactly once."""

from __future__ import annotations

import pytest

from ctxsynth.generation.base import Request
from ctxsynth.generation.transformers_backend import TransformersBackend

# Prompts of different lengths, so rows are left-padded against each other and refills merge unequal caches.
TEXTS = [
    "Hi",
    "Write a long story about a lighthouse keeper and the sea.",
    "What is 2+2?",
    "Describe the history of Rome in detail, with dates.",
    "ok",
    "Tell me about cats and dogs, briefly.",
    "Why is the sky blue?",
]


def requests() -> list[Request]:
    return [
        Request(key=f"k{i}", messages=[{"role": "user", "content": text}], response_prefix="Context:")
        for i, text in enumerate(TEXTS)
    ]


def outputs(backend: TransformersBackend, sampling: dict, items: list[Request]) -> tuple[dict, list[list[str]]]:
    batches = list(backend.iter_generate(items, sampling, seed=3))
    return {r.key: result for batch in batches for r, result in batch}, [[r.key for r, _ in b] for b in batches]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    """The tiny model with larger weights: its default init gives near-uniform logits (greedy repeats one token and
    samples barely depend on the logits), which would let a wrong cache or position go unnoticed. The end-of-turn
    row is enlarged so that some rows stop early and free their slot."""
    import torch

    backend = TransformersBackend(tiny_model_dir, batch_size=3, device="cpu", dtype="float32")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in backend.model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        backend.model.get_input_embeddings().weight[backend.tokenizer.eos_token_id] *= 1.5
    return backend


def reference_generate(backend: TransformersBackend, request: Request, sampling: dict) -> list[int]:
    """`model.generate` on one prompt, no padding: the one-at-a-time path the batcher must reproduce."""
    import torch

    encoded = backend.tokenizer([backend.prompt_text(request)], return_tensors="pt", add_special_tokens=False)
    kwargs = {key: sampling[key] for key in ("repetition_penalty", "min_new_tokens") if key in sampling}
    with torch.inference_mode():
        output = backend.model.generate(
            **encoded,
            max_new_tokens=sampling["max_new_tokens"],
            do_sample=False,
            pad_token_id=backend.tokenizer.pad_token_id,
            **kwargs,
        )
    return output[0, encoded.input_ids.shape[1] :].tolist()


@pytest.mark.parametrize(
    "sampling",
    [{"max_new_tokens": 24, "temperature": 0.0}, {"max_new_tokens": 24, "temperature": 0.0, "repetition_penalty": 1.3}],
)
def test_greedy_batched_with_refill_matches_generate_one_at_a_time(backend, sampling):
    batched, _ = outputs(backend, sampling, requests())
    eos = set(backend._eos_ids())
    for request in requests():
        tokens = reference_generate(backend, request, sampling)
        stop = next((n for n, t in enumerate(tokens) if t in eos), None)
        kept = tokens if stop is None else tokens[:stop]
        assert batched[request.key]["generated_tokens"] == len(kept)
        assert batched[request.key]["text"] == "Context:" + backend.tokenizer.decode(kept, skip_special_tokens=True)


def test_sampled_item_does_not_depend_on_companions_refills_or_skipped_items(backend):
    sampling = {"max_new_tokens": 30, "temperature": 0.9, "top_p": 0.9, "repetition_penalty": 1.1}
    together, _ = outputs(backend, sampling, requests())
    again, _ = outputs(backend, sampling, requests())
    assert together == again  # same params, same items: identical run to run
    for request in requests():  # alone, as a resumed run that finds every other item cached would generate it
        alone, _ = outputs(backend, sampling, [request])
        assert alone[request.key] == together[request.key]
    subset = requests()[2:5]
    partial, _ = outputs(backend, sampling, subset)
    assert all(partial[r.key] == together[r.key] for r in subset)
    assert len({result["text"] for result in together.values()}) == len(TEXTS)  # seeds differ per item


def test_every_item_yielded_exactly_once_as_it_finishes(backend):
    sampling = {"max_new_tokens": 40, "temperature": 1.0, "min_new_tokens": 5}
    results, batches = outputs(backend, sampling, requests())
    keys = [key for batch in batches for key in batch]
    assert sorted(keys) == sorted(r.key for r in requests()) and len(keys) == len(set(keys))
    assert len(batches) > 1  # yielded as items complete, not in one list at the end
    for result in results.values():
        assert set(result) == {"text", "generated_tokens", "finish_reason"}
        assert 5 <= result["generated_tokens"] <= 40
        assert (result["finish_reason"] == "length") == (result["generated_tokens"] == 40)


def test_min_new_tokens_equal_to_max_forces_the_length(backend):
    results, _ = outputs(backend, {"max_new_tokens": 12, "min_new_tokens": 12, "temperature": 0.0}, requests())
    assert {(r["generated_tokens"], r["finish_reason"]) for r in results.values()} == {(12, "length")}
