"""Stage synthesize: the generator writes a context for every seed (cached by content hash, resumable)."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.progress import Progress  # noqa: E402

from ctxsynth.backends import make_backend  # noqa: E402
from ctxsynth.cache import GenerationCache  # noqa: E402
from ctxsynth.io import load_params, read_jsonl, user_cache_dir, write_json, write_jsonl  # noqa: E402
from ctxsynth.prompts import get_prompt  # noqa: E402
from ctxsynth.synthesis import summarize, synthesize_contexts  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--out", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/synthesize.json", type=Path)
    args = parser.parse_args()
    params = load_params("synthesize")
    if params["method"] != "context_synthesis":
        raise SystemExit(f"params.yaml: synthesize.method {params['method']!r} is not available yet "
                         "(context_synthesis is)")
    seeds = [r for path in sorted(args.seeds.glob("*.jsonl"))
             for r in read_jsonl(path, required=("id", "task", "instruction", "answer"))]
    backend = make_backend(params["backend"], args.model, batch_size=int(params["batch_size"]),
                           device=params["device"], dtype=params["dtype"])
    cache = GenerationCache(Path(params["cache_dir"]).expanduser() if params.get("cache_dir") else user_cache_dir("generations"))
    with Progress() as progress:
        records, stats = synthesize_contexts(seeds, backend, cache, get_prompt("context_synthesis"),
                                             dict(params["sampling"]), int(params["seed"]),
                                             int(params["target_words"]), params.get("response_prefix") or "",
                                             progress)
    write_jsonl(args.out, records)
    write_json(args.metrics, {**summarize(records), "run": stats})
    print(f"synthesize: {len(records)} records, {stats['generated']} generated, {stats['from_cache']} from cache")


if __name__ == "__main__":
    main()
