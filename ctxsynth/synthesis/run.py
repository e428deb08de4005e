"""The synthesize stage as one call: build the generator backend and cache from `SynthesizeSettings`, write a context
(or, for instruction_synthesis, an instruction) for every seed, and verify the records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.io import InputError, user_cache_dir
from ctxsynth.generation import make_backend
from ctxsynth.generation.base import Backend
from ctxsynth.generation.cache import GenerationCache
from ctxsynth.generation.managed_server import ManagedServer, ServedBackend
from ctxsynth.synthesis.contexts import summarize, synthesize_contexts
from ctxsynth.synthesis.instructions import synthesize_instructions
from ctxsynth.synthesis.prompts import get_prompt
from ctxsynth.synthesis.released import released_contexts
from ctxsynth.synthesis.settings import SynthesizeSettings
from ctxsynth.synthesis.verify import answerability_scores, verify_records


def _model_dir_param(path: str, key: str) -> Path:
    """A model directory a parameter names: it exists, is a dependency of the synthesize stage (inputs/models), and is
    a directory."""
    directory = require_tracked(path, "synthesize", key)
    if not directory.is_dir():
        raise InputError("params.yaml", f"{path!r} is not a model directory", field=key)
    return directory


def generator_dir(settings: SynthesizeSettings, model_dir: Path | str) -> Path:
    """`synthesize.generator`, or the pipeline's base model when it is null; it must be a model directory."""
    if settings.generator:
        return _model_dir_param(settings.generator, "synthesize.generator")
    generator = Path(model_dir)
    if not generator.is_dir():
        raise InputError("params.yaml", f"{str(generator)!r} is not a model directory", field="synthesize.generator")
    return generator


def check_inputs(settings: SynthesizeSettings, model_dir: Path | str) -> None:
    """Every model directory the settings name, checked before any model is loaded or anything generated."""
    generator_dir(settings, model_dir)
    if settings.verify.judge_model:
        _model_dir_param(settings.verify.judge_model, "synthesize.verify.judge_model")


def managed_server(settings: SynthesizeSettings) -> ManagedServer | None:
    """The generator's server the stage starts itself (`synthesize.openai.serve.command`), or None."""
    serve = settings.openai.serve
    if settings.backend != "openai" or serve.command is None:
        return None
    log = Path(serve.log).expanduser() if serve.log else user_cache_dir("servers") / f"{serve.port}.log"
    return ManagedServer(serve.command, settings.openai.model, serve.port, serve.startup_timeout, log)


def build_backend(settings: SynthesizeSettings, model_dir: Path | str, server: ManagedServer | None = None) -> Backend:
    """The backend `synthesize.backend` names, with its own settings section; with `server`, talking to it only and
    starting it on the first generation that is not cached."""
    openai = settings.openai if server is None else dataclasses.replace(settings.openai, base_urls=[server.url])
    backend = make_backend(
        settings.backend,
        generator_dir(settings, model_dir),
        batch_size=settings.batch_size,
        device=settings.device,
        dtype=settings.dtype,
        openai=openai,
        vllm=settings.vllm,
        openai_batch=settings.openai_batch,
    )
    return backend if server is None else ServedBackend(backend, server)


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


def verify(records: list[dict], backend: Backend | None, cache: GenerationCache, settings: SynthesizeSettings) -> None:
    """Attach `synthesize.verify` scores to the records in place (nothing when verification is off). Backend None
    (released): support and leakage need no model; answerability needs `verify.judge_model` (the settings check)."""
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
    """The stage's records (data/synth/contexts.jsonl) and metrics (metrics/synthesize.json). With the OpenAI Batch
    backend, the metrics list the batches this run consumed (`batches`) and every batch the records came from
    (`batch_ids`, cached generations included); each record's provenance names its own `batch_id`. The released
    backend loads no model: records come from the paper's release (ctxsynth/synthesis/released.py), and the metrics
    report what it held and what matched (`release`)."""
    if settings.backend != "released":
        check_inputs(settings, model_dir)
    if not seeds:  # e.g. the pilot, which trains on needles and general data: no generator is loaded or paid
        return [], {"total": 0, "method": settings.method, "run": {"generated": 0, "from_cache": 0}}
    if settings.backend == "released":
        judge_model = settings.verify.judge_model
        if settings.verify.answerability and judge_model:  # answerability: the settings require a judge model
            _model_dir_param(judge_model, "synthesize.verify.judge_model")
        records, release = released_contexts(seeds, settings.released)
        verify(records, None, generation_cache(settings), settings)
        run = {"generated": 0, "from_cache": 0, "released": release["matched"]}
        return records, {**summarize(records), "method": settings.method, "run": run, "release": release}
    server = managed_server(settings)
    backend = build_backend(settings, model_dir, server)
    cache = generation_cache(settings)
    try:
        records, stats = synthesize(seeds, backend, cache, settings, progress)
        verify(records, backend, cache, settings)
    finally:
        if server is not None:  # before fine-tuning needs the GPUs back, whatever happened
            server.stop()
    metrics = {**summarize(records), "method": settings.method, "run": stats}
    retries = getattr(backend, "retries", None)  # HTTP backends: 429s, 5xx, timeouts and dropped connections retried
    if retries is not None:
        metrics["run"] = {**stats, "http_retries": retries}
    if server is not None:  # the command as params name it: the rendered one holds this machine's paths
        metrics["server"] = {"command": settings.openai.serve.command, "started": server.started}
    if settings.backend == "openai-batch":
        metrics["batches"] = list(getattr(backend, "batches", []))
        metrics["batch_ids"] = sorted({r["provenance"]["batch_id"] for r in records if r["provenance"].get("batch_id")})
    return records, metrics
