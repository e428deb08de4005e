"""Context synthesis: an LLM writes the missing background document for each seed pair (the paper's Figure 3).

Every generation goes through the content-addressed cache, so a rerun generates only what is missing.
Records keep the raw output and a parse status; failures are counted, never passed off as contexts.
"""

from __future__ import annotations

import time
from pathlib import Path

from ctxsynth.core.io import read_jsonl
from ctxsynth.core.text import count_words
from ctxsynth.generation.base import GenerationError, Request
from ctxsynth.generation.cache import GenerationCache, batch_provenance, cache_key, generation_settings, stored_key
from ctxsynth.synthesis.prompts import PromptSpec

PARSE_OK, PARSE_MISSING_MARKER, PARSE_EMPTY = "ok", "missing_marker", "empty"
# backend released: the release holds no context for this seed (not a parse failure; mix takes "ok" only)
PARSE_NOT_RELEASED = "not_released"


def parse_context(text: str, marker: str) -> tuple[str | None, str]:
    """Keep the text after the first marker (the reference scripts' rule); no marker or nothing after it fails."""
    position = text.find(marker) if marker else 0
    if position < 0:
        return None, PARSE_MISSING_MARKER
    context = text[position + len(marker) :].strip()
    while marker and context.startswith(marker):  # "Context: Context: ..." when the model repeats a prefilled marker
        context = context[len(marker) :].strip()
    return (context, PARSE_OK) if context else (None, PARSE_EMPTY)


def build_requests(
    seeds: list[dict],
    prompt: PromptSpec,
    model_id: str,
    sampling: dict,
    seed: int,
    target_words: int,
    response_prefix: str,
) -> list[Request]:
    requests = []
    for record in seeds:
        messages = prompt.messages(instruction=record["instruction"], answer=record["answer"], length=target_words)
        key = cache_key(
            model=model_id,
            messages=messages,
            response_prefix=response_prefix,
            sampling=sampling,
            seed=seed,
            prompt_version=prompt.version,
        )
        label = str(record.get("id", ""))  # named in errors: a seed id, not a hash
        requests.append(Request(key=key, messages=messages, response_prefix=response_prefix, label=label))
    return requests


def generate_cached(
    requests: list[Request],
    backend,
    cache: GenerationCache,
    sampling: dict,
    seed: int,
    progress=None,
    label: str = "synthesize",
) -> tuple[dict[str, dict], dict]:
    """Generations for every request (keyed by request key): from the cache when present, else generated and cached
    batch by batch. The cache holds each under `stored_key(request key, backend generation settings)`."""
    generation = generation_settings(backend)
    stored = {r.key: stored_key(r.key, generation) for r in requests}
    generations = {r.key: cache.get(stored[r.key]) for r in requests}
    missing = list({r.key: r for r in requests if generations[r.key] is None}.values())
    started, generated_tokens = time.perf_counter(), 0
    if missing:
        task = progress.add_task(label, total=len(missing), stats="") if progress else None
        for batch in backend.iter_generate(missing, sampling, seed):
            for request, result in batch:
                cache.put(stored[request.key], result)
                generations[request.key] = result
                generated_tokens += result["generated_tokens"]
            if progress:
                speed = generated_tokens / max(time.perf_counter() - started, 1e-9)
                progress.update(task, advance=len(batch), stats=f"{speed:,.1f} tok/s")
    seconds = time.perf_counter() - started
    done = {key: generation for key, generation in generations.items() if generation is not None}
    for request in requests:  # a backend yields every request it is given: none is left without a generation
        if request.key not in done:
            raise GenerationError(f"{request.name}: the {backend.name} backend returned no generation")
    stats = {
        "generated": len(missing),
        "from_cache": len(requests) - len(missing),
        "corrupt_cache_entries": cache.corrupt,
        "generated_tokens": generated_tokens,
        "tokens_per_second": round(generated_tokens / seconds, 2) if missing and seconds > 0 else None,
    }
    return done, stats


def run_provenance(backend, prompt: PromptSpec, sampling: dict, seed: int, **extra) -> dict:
    return {
        "model": backend.model_id,
        "backend": backend.name,
        "prompt": prompt.name,
        "prompt_version": prompt.version,
        "sampling": sampling,
        "seed": seed,
        **extra,
    }


def synthesize_contexts(
    seeds: list[dict],
    backend,
    cache: GenerationCache,
    prompt: PromptSpec,
    sampling: dict,
    seed: int,
    target_words: int,
    response_prefix: str = "",
    progress=None,
) -> tuple[list[dict], dict]:
    requests = build_requests(seeds, prompt, backend.model_id, sampling, seed, target_words, response_prefix)
    generations, stats = generate_cached(requests, backend, cache, sampling, seed, progress)
    provenance = run_provenance(
        backend, prompt, sampling, seed, target_words=target_words, response_prefix=response_prefix
    )
    settings = generation_settings(backend)
    records = []
    for record, request in zip(seeds, requests):
        generation = generations[request.key]
        context, status = parse_context(generation["text"], prompt.marker)
        records.append(
            {
                "id": record["id"],
                "task": record["task"],
                "instruction": record["instruction"],
                "answer": record["answer"],
                "context": context,
                "parse_status": status,
                "raw_output": generation["text"],
                "finish_reason": generation["finish_reason"],
                "generated_tokens": generation["generated_tokens"],
                "words": count_words(context) if context else 0,
                "provenance": {
                    **provenance,
                    "cache_key": stored_key(request.key, settings),
                    **batch_provenance(generation),
                },
            }
        )
    return records, stats


def summarize(records: list[dict]) -> dict:
    """Per-task parse outcomes and lengths, for metrics/synthesize.json."""
    tasks: dict[str, dict] = {}
    for record in records:
        entry = tasks.setdefault(
            record["task"], {"total": 0, "ok": 0, "missing_marker": 0, "empty": 0, "hit_max_tokens": 0, "words": []}
        )
        entry["total"] += 1
        entry[record["parse_status"]] = entry.get(record["parse_status"], 0) + 1
        entry["hit_max_tokens"] += record["finish_reason"] == "length"
        if record["context"]:
            entry["words"].append(record["words"])
        for name, value in (record.get("verification") or {}).items():
            if value is not None:
                entry.setdefault(f"verify_{name}", []).append(value)
    for entry in tasks.values():
        words = entry.pop("words")
        entry["mean_words"] = round(sum(words) / len(words), 1) if words else 0.0
        for name in [k for k in entry if k.startswith("verify_")]:
            values = entry.pop(name)
            entry[f"mean_{name}"] = round(sum(values) / len(values), 4)
    total = sum(e["total"] for e in tasks.values())
    failures = sum(e["total"] - e["ok"] - e.get(PARSE_NOT_RELEASED, 0) for e in tasks.values())
    return {
        "tasks": tasks,
        "total": total,
        "parse_failures": failures,
        "parse_failure_rate": round(failures / total, 4) if total else 0.0,
    }


def context_lengths(contexts_path: Path, benchmark_dir: Path, tasks: list[str]) -> tuple[list[int], list[int]]:
    """Words per synthesized context (records with a context) and per evaluation context of `tasks`."""
    synthesized = [r["words"] for r in read_jsonl(contexts_path, required=("words",)) if r.get("context")]
    evaluation = [
        count_words(doc["context"])
        for task in tasks
        for doc in read_jsonl(Path(benchmark_dir) / f"{task}.jsonl", required=("context",))
    ]
    return synthesized, evaluation


def length_histogram(synthesized_words: list[int], evaluation_words: list[int], bin_words: int) -> list[dict]:
    """Rows {words, synthesized, evaluation}: how long synthesized contexts are next to evaluation contexts
    (the paper's Figure 5), as shares of each group so the two are comparable."""
    top = max(synthesized_words + evaluation_words + [0])
    bins = range(0, (top // bin_words + 1) * bin_words, bin_words)

    def shares(values: list[int]) -> list[float]:
        counts = [0] * len(bins)
        for value in values:
            counts[value // bin_words] += 1
        return [round(c / len(values), 4) if values else 0.0 for c in counts]

    return [
        {"words": lower, "synthesized": s, "evaluation": e}
        for lower, s, e in zip(bins, shares(synthesized_words), shares(evaluation_words))
    ]
