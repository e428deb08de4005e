"""The paper's instruction-synthesis baseline: the generator writes one question and answer from a human context.

Contexts longer than `chunk_words` are cut to a random chunk of that many consecutive words (seeded per seed id).
Unparseable outputs are retried up to `max_attempts` times (the reference script gives up after one); each attempt
is its own cache entry, so retries differ only when sampling is on. Records feed `mix` exactly like synthesized
contexts: {id, task, instruction, answer, context, parse_status, ...}.
"""

from __future__ import annotations

from ctxsynth.core.text import count_words, rng_for
from ctxsynth.generation.base import Request
from ctxsynth.generation.cache import GenerationCache, batch_provenance, cache_key, generation_settings, stored_key
from ctxsynth.synthesis.contexts import generate_cached, run_provenance
from ctxsynth.synthesis.prompts import PromptSpec


def chunk_context(context: str, chunk_words: int, seed: int, item_id: str) -> str:
    words = context.split()
    if len(words) <= chunk_words:
        return context
    start = int(rng_for(seed, "chunk", item_id).integers(0, len(words) - chunk_words + 1))
    return " ".join(words[start : start + chunk_words])


def parse_question_answer(text: str) -> tuple[str | None, str | None, str]:
    """The reference parse: the last `Question:` up to `Answer:`, and everything after the last `Answer:`."""
    if "Question:" not in text or "Answer:" not in text:
        return None, None, "missing_marker"
    question = text.split("Question:")[-1].split("Answer:")[0].strip()
    answer = text.split("Answer:")[-1].strip()
    if not question or not answer:
        return None, None, "empty"
    return question, answer, "ok"


def synthesize_instructions(
    seeds: list[dict],
    backend,
    cache: GenerationCache,
    prompt: PromptSpec,
    sampling: dict,
    seed: int,
    chunk_words: int,
    max_attempts: int,
    progress=None,
    response_prefix: str = "",
) -> tuple[list[dict], dict]:
    with_context = [s for s in seeds if s.get("context")]
    chunks = {s["id"]: chunk_context(s["context"], chunk_words, seed, s["id"]) for s in with_context}
    results: dict[str, dict] = {}
    pending = list(with_context)
    totals = {"generated": 0, "from_cache": 0, "generated_tokens": 0}
    for attempt in range(max_attempts):
        requests = [
            attempt_request(prompt, chunks[record["id"]], backend, sampling, seed, attempt, response_prefix)
            for record in pending
        ]
        generations, stats = generate_cached(
            requests, backend, cache, sampling, seed, progress, label=f"instruction synthesis, attempt {attempt + 1}"
        )
        for name in totals:
            totals[name] += stats[name]
        pending = record_attempt(pending, requests, generations, attempt, results)
        if not pending:
            break
    provenance = run_provenance(
        backend,
        prompt,
        sampling,
        seed,
        chunk_words=chunk_words,
        max_attempts=max_attempts,
        response_prefix=response_prefix,
    )
    settings = generation_settings(backend)
    records = [
        instruction_record(record, results[record["id"]], chunks[record["id"]], provenance, settings)
        for record in with_context
    ]
    stats = {**totals, "skipped_without_context": len(seeds) - len(with_context)}
    return records, stats


def attempt_request(
    prompt: PromptSpec, chunk: str, backend, sampling: dict, seed: int, attempt: int, response_prefix: str
) -> Request:
    """The generation request for one context chunk; the attempt is in the cache key, so a retry is a new entry."""
    messages = prompt.messages(context=chunk)
    key = cache_key(
        model=backend.model_id,
        messages=messages,
        response_prefix=response_prefix,
        sampling=sampling,
        seed=seed,
        prompt_version=prompt.version,
        attempt=attempt,
    )
    return Request(key=key, messages=messages, response_prefix=response_prefix)


def record_attempt(
    pending: list[dict], requests: list[Request], generations: dict, attempt: int, results: dict[str, dict]
) -> list[dict]:
    """Parse each seed's generation into `results` (a later attempt's replaces an earlier one's); return the seeds
    whose output did not parse, for the next attempt."""
    still_failing = []
    for record, request in zip(pending, requests):
        generation = generations[request.key]
        question, answer, status = parse_question_answer(generation["text"])
        results[record["id"]] = {
            "question": question,
            "answer": answer,
            "status": status,
            "attempts": attempt + 1,
            "generation": generation,
            "key": request.key,
        }
        if status != "ok":
            still_failing.append(record)
    return still_failing


def instruction_record(record: dict, result: dict, chunk: str, provenance: dict, settings: dict) -> dict:
    """The output record of one seed: its last attempt's question and answer, the chunk they were written from."""
    generation = result["generation"]
    return {
        "id": record["id"],
        "task": record["task"],
        "instruction": result["question"],
        "answer": result["answer"],
        "context": chunk,
        "parse_status": result["status"],
        "attempts": result["attempts"],
        "raw_output": generation["text"],
        "finish_reason": generation["finish_reason"],
        "generated_tokens": generation["generated_tokens"],
        "words": count_words(chunk),
        "seed_instruction": record["instruction"],
        "seed_answer": record["answer"],
        "provenance": {
            **provenance,
            "cache_key": stored_key(result["key"], settings),
            **batch_provenance(generation),
        },
    }
