"""Stage synthesize: the generator writes a context for every seed (cached by content hash, resumable)."""

import argparse
from pathlib import Path

from rich.progress import Progress

from ctxsynth.core.io import load_params, user_cache_dir, write_json, write_jsonl
from ctxsynth.generation import make_backend
from ctxsynth.generation.cache import GenerationCache
from ctxsynth.prepare.seeds import read_seed_dir
from ctxsynth.synthesis.contexts import summarize, synthesize_contexts
from ctxsynth.synthesis.instructions import synthesize_instructions
from ctxsynth.synthesis.prompts import get_prompt
from ctxsynth.synthesis.verify import answerability_scores, verify_records

METHODS = ("context_synthesis", "instruction_synthesis")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--out", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/synthesize.json", type=Path)
    args = parser.parse_args()
    params = load_params("synthesize")
    if params["method"] not in METHODS:
        raise SystemExit(
            f"params.yaml: synthesize.method must be one of {', '.join(METHODS)}, not {params['method']!r}"
        )
    seeds = read_seed_dir(args.seeds)
    generator = Path(params["generator"]) if params.get("generator") else args.model
    if not generator.is_dir():
        raise SystemExit(f"params.yaml: synthesize.generator {str(generator)!r} is not a model directory")
    backend = make_backend(
        params["backend"],
        generator,
        batch_size=int(params["batch_size"]),
        device=params["device"],
        dtype=params["dtype"],
        openai=params.get("openai"),
        vllm=params.get("vllm"),
        openai_batch=params.get("openai_batch"),
    )
    cache = GenerationCache(
        Path(params["cache_dir"]).expanduser() if params.get("cache_dir") else user_cache_dir("generations")
    )
    sampling, seed = dict(params["sampling"]), int(params["seed"])
    with Progress() as progress:
        if params["method"] == "context_synthesis":
            records, stats = synthesize_contexts(
                seeds,
                backend,
                cache,
                get_prompt("context_synthesis"),
                sampling,
                seed,
                int(params["target_words"]),
                params.get("response_prefix") or "",
                progress,
            )
        else:
            records, stats = synthesize_instructions(
                seeds,
                backend,
                cache,
                get_prompt("instruction_synthesis"),
                sampling,
                seed,
                int(params["chunk_words"]),
                int(params["max_attempts"]),
                progress,
                params.get("instruction_prefix") or "",
            )
    verify = params.get("verify") or {}
    if verify.get("enabled"):
        judge = backend
        if verify.get("answerability") and verify.get("judge_model"):  # a separate model answers, not the generator
            judge = make_backend(
                "transformers",
                Path(verify["judge_model"]),
                batch_size=int(params["batch_size"]),
                device=params["device"],
                dtype=params["dtype"],
            )
        scores = answerability_scores(records, judge, cache, seed) if verify.get("answerability") else None
        verify_records(records, int(verify["max_answer_words"]), scores)
    write_jsonl(args.out, records)
    write_json(args.metrics, {**summarize(records), "method": params["method"], "run": stats})
    print(f"synthesize: {len(records)} records, {stats['generated']} generated, {stats['from_cache']} from cache")


if __name__ == "__main__":
    main()
