"""Stage mix: chat-format training samples, each context hidden among contexts of other seeds of its task."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxsynth.io import load_params, read_jsonl, write_json, write_jsonl  # noqa: E402
from ctxsynth.mix import apply_filter, assemble, length_stats, pool_for_variant  # noqa: E402
from ctxsynth.seeds import read_seed_dir  # noqa: E402
from ctxsynth.tasks import templates_version  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--contexts", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--out", default="data/mix/train.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/mix.json", type=Path)
    args = parser.parse_args()
    params = load_params("mix")
    seeds = read_seed_dir(args.seeds)
    synthesized = read_jsonl(args.contexts, required=("id", "task", "parse_status"))
    pool = pool_for_variant(params["variant"], seeds, synthesized)
    thresholds = params.get("filter") or {}
    filter_report = {}
    if params["variant"] == "context_synthesis" and any(v is not None for v in thresholds.values()):
        pool, filter_report = apply_filter(pool, thresholds)
    if not pool:
        raise SystemExit(f"mix: no records usable for variant {params['variant']!r} "
                         f"(seeds in {args.seeds}, contexts in {args.contexts})")
    samples = assemble(pool, params["variant"], int(params["num_contexts"]), int(params["seed"]),
                       bool(params["summarization_distractors"]))
    write_jsonl(args.out, samples)
    from transformers import AutoTokenizer

    stats = length_stats(samples, AutoTokenizer.from_pretrained(args.model))
    write_json(args.metrics, {**stats, "variant": params["variant"], "num_contexts": int(params["num_contexts"]),
                              "templates_version": templates_version(),
                              "records_available": len(pool), "records_total": len(seeds),
                              "filter": filter_report})
    print(f"mix: {len(samples)} samples ({params['variant']}, n={params['num_contexts']})")


if __name__ == "__main__":
    main()
