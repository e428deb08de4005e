"""Synthesis throughput: the reference style (one generate() call per prompt) against the batched backend.

Same model, same prompts (the paper's Figure 3 prompt on real seeds), same sampling, same max new tokens, measured
side by side in one run. Tokens per second count generated tokens up to each sequence's end of turn.

    .venv/bin/python benchmarks/synthesis_throughput.py --model data/model --seeds data/seed --prompts 16
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxsynth.backends import TransformersBackend  # noqa: E402
from ctxsynth.seeds import read_seed_dir  # noqa: E402
from ctxsynth.prompts import get_prompt  # noqa: E402
from ctxsynth.synthesis import build_requests  # noqa: E402


def timed(backend: TransformersBackend, requests, sampling) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = sum(result["generated_tokens"] for batch in backend.iter_generate(requests, sampling, seed=0)
                 for _, result in batch)
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--fixed-length", action="store_true",
                        help="force every prompt to generate exactly --max-new-tokens (raw generation speed)")
    args = parser.parse_args()
    seeds = read_seed_dir(args.seeds)[: args.prompts]
    # Greedy, so both paths write (nearly) the same continuations; tokens/s counts what each actually generated.
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}
    if args.fixed_length:  # no early end of turn: both paths generate the same number of tokens
        sampling["min_new_tokens"] = args.max_new_tokens
    batched = TransformersBackend(args.model, batch_size=args.batch_size)
    requests = build_requests(seeds, get_prompt("context_synthesis"), batched.model_id, sampling, 0, 150, "Context:")
    single = copy.copy(batched)  # the same loaded model, one prompt per generate() call
    single.batch_size = 1
    timed(batched, requests[:2], {"max_new_tokens": 4, "temperature": 0.0})  # warm-up
    rows = [("one at a time (reference style)",) + timed(single, requests, sampling),
            (f"batched, batch {args.batch_size}",) + timed(batched, requests, sampling)]
    length = "exactly" if args.fixed_length else "up to"
    print(f"{len(requests)} prompts, {length} {args.max_new_tokens} new tokens, greedy, {batched.model_id.split('@')[0]}")
    print(f"{'path':<34}{'seconds':>10}{'tokens':>9}{'tokens/s':>11}")
    for name, seconds, tokens in rows:
        print(f"{name:<34}{seconds:>10.1f}{tokens:>9}{tokens / seconds:>11.1f}")
    ratio = (rows[1][2] / rows[1][1]) / (rows[0][2] / rows[0][1])
    print(f"{'speed-up (batched / one at a time)':<34}{ratio:>30.2f}x")


if __name__ == "__main__":
    main()
