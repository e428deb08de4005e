"""The synthesize stage as one call: build the generator backend and cache from `SynthesizeSettings`, write a context
(or, for instruction_synthesis, an instruction) for every seed, and verify the records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ctxsynth.core.io import InputError, user_cache_dir
from ctxsynth.generation import make_backend
from ctxsynth.generation.base import Backend
from ctxsynth.generation.cache import GenerationCache
from ctxsynth.synthesis.contexts import summarize, synthesize_contexts
from ctxsynth.synthesis.instructions import synthesize_instructions
from ctxsynth.synthesis.prompts import get_prompt
from ctxsynth.synthesis.settings import SynthesizeSettings
from ctxsynth.synthesis.verify import answerability_scores, verify_records


def generator_dir(settings: SynthesizeSettings, model_dir: Path | str) -> Path:
    """`synthesize.generator`, or the pipeline's base model when it is null; it must be a model directory."""
    generator = Path(settings.generator) if settings.generator else Path(model_dir)
    if not generator.is_dir():
        raise InputError("params.yaml", f"{str(generator)!r} is not a model directory", field="synthesize.generator")
    return generator


def build_backend(settings: SynthesizeSettings, model_dir: Path | str) -> Backend:
    """The backend `synthesize.backend` names, with its own settings section."""
    return make_backend(
        settings.backend,
        generator_dir(settings, model_dir),
        batch_size=settings.batch_size,
        device=settings.device,
        dtype=settings.dtype,
        openai=dataclasses.asdict(settings.openai),
        vllm=dataclasses.asdict(settings.vllm),
        openai_batch=dataclasses.asdict(settings.openai_batch),
    )


def generation_cache(settings: SynthesizeSettings) -> GenerationCache:
    """`synthesize.cache_dir`, or the cache shared by checkouts and experiments when it is null."""
    return GenerationCache(
        Path(settings.cache_dir).expanduser() if settings.cache_dir else user_cache_dir("generations")
    )


def synthesize(
    seeds: list[dict], backend: Backend, cache: GenerationCache, settings: SynthesizeSettings, progress=None
) -> tuple[list[dict], dict]:
    """Records for every seed by `synthesize.method`, and the run's statistics."""
    sampling = settings.sampling.as_dict()
    if settings.method == "context_synthesis":
        return synthesize_contexts(
            seeds,
            backend,
            cache,
            get_prompt("context_synthesis"),
            sampling,
            settings.seed,
            settings.target_words,
            settings.response_prefix,
            progress,
        )
    return synthesize_instructions(
        seeds,
        backend,
        cache,
        get_prompt("instruction_synthesis"),
        sampling,
        settings.seed,
        settings.chunk_words,
        settings.max_attempts,
        progress,
        settings.instruction_prefix,
    )


def verify(records: list[dict], backend: Backend, cache: GenerationCache, settings: SynthesizeSettings) -> None:
    """Attach `synthesize.verify` scores to the records in place (nothing when verification is off)."""
    options = settings.verify
    if not options.enabled:
        return
    judge = backend
    if options.answerability and options.judge_model:  # a separate model answers, not the generator
        judge = make_backend(
            "transformers",
            Path(options.judge_model),
            batch_size=settings.batch_size,
            device=settings.device,
            dtype=settings.dtype,
        )
    scores = answerability_scores(records, judge, cache, settings.seed) if options.answerability else None
    verify_records(records, options.max_answer_words, scores)


def run_synthesis(
    seeds: list[dict], model_dir: Path | str, settings: SynthesizeSettings, progress=None
) -> tuple[list[dict], dict]:
    """The stage's records (data/synth/contexts.jsonl) and metrics (metrics/synthesize.json)."""
    backend = build_backend(settings, model_dir)
    cache = generation_cache(settings)
    records, stats = synthesize(seeds, backend, cache, settings, progress)
    verify(records, backend, cache, settings)
    return records, {**summarize(records), "method": settings.method, "run": stats}
