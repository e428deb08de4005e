"""Stage mix: chat-format training samples (long samples of `mix.variant` plus `mix.general`), one JSONL file."""

import argparse
from pathlib import Path

from ctxsynth.core.io import load_params, read_json, read_jsonl, write_json, write_jsonl
from ctxsynth.core.tasks import templates_version
from ctxsynth.mix.assemble import GENERAL_ONLY, VARIANTS, apply_filter, assemble, length_stats, pool_for_variant
from ctxsynth.mix.niah_training import NIAH_VARIANTS, niah_training_samples
from ctxsynth.prepare.general_data import load_general
from ctxsynth.prepare.seeds import read_seed_dir


def long_samples(params: dict, args) -> tuple[list[dict], dict]:
    """The variant's long samples and what they were built from."""
    variant = params["variant"]
    if variant == GENERAL_ONLY:
        return [], {}
    if variant in NIAH_VARIANTS:
        essays = read_json(args.raw / "PaulGrahamEssays.json")["text"]
        reserved_keys = read_json(args.reserved).get("niah_keys", [])
        samples = niah_training_samples(essays, reserved_keys, variant, params["niah"], int(params["seed"]))
        return samples, {"niah": params["niah"], "reserved_test_keys": len(reserved_keys)}
    if variant not in VARIANTS:
        known = (GENERAL_ONLY,) + VARIANTS + tuple(NIAH_VARIANTS)
        raise SystemExit(f"params.yaml: mix.variant {variant!r} is unknown; expected one of {', '.join(known)}")
    seeds = read_seed_dir(args.seeds)
    synthesized = read_jsonl(args.contexts, required=("id", "task", "parse_status"))
    pool = pool_for_variant(variant, seeds, synthesized)
    thresholds = params.get("filter") or {}
    filter_report = {}
    if variant == "context_synthesis" and any(v is not None for v in thresholds.values()):
        pool, filter_report = apply_filter(pool, thresholds)
    if not pool:
        raise SystemExit(
            f"mix: no records usable for variant {variant!r} (seeds in {args.seeds}, contexts in {args.contexts})"
        )
    samples = assemble(
        pool, variant, int(params["num_contexts"]), int(params["seed"]), bool(params["summarization_distractors"])
    )
    return samples, {"records_available": len(pool), "records_total": len(seeds), "filter": filter_report}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--reserved", default="data/benchmark/reserved.json", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--contexts", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--out", default="data/mix/train.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/mix.json", type=Path)
    args = parser.parse_args()
    params = load_params("mix")
    samples, report = long_samples(params, args)
    general, general_report = load_general(params.get("general"), len(samples), int(params["seed"]))
    if not samples and not general:
        raise SystemExit(
            f"mix: nothing to train on: mix.variant is {params['variant']!r} and mix.general.source "
            "is null (name a general SFT file, e.g. data/general/train.jsonl)"
        )
    write_jsonl(args.out, samples + general)
    from transformers import AutoTokenizer

    stats = length_stats(samples + general, AutoTokenizer.from_pretrained(args.model))
    write_json(
        args.metrics,
        {
            **stats,
            "variant": params["variant"],
            "num_contexts": int(params["num_contexts"]),
            "templates_version": templates_version(),
            "long_samples": len(samples),
            "general": general_report,
            **report,
        },
    )
    print(
        f"mix: {len(samples)} long samples ({params['variant']}, n={params['num_contexts']}) + {len(general)} general"
    )


if __name__ == "__main__":
    main()
