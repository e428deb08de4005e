"""Synthesis throughput: the reference style (one generate() call per prompt), static batches through generate()
(the previous backend) and the backend's continuous batching.

Same model, same prompts (the paper's Figure 3 prompt on real seeds), same sampling, same max new tokens, measured
side by side in one run. Tokens per second count generated tokens up to each sequence's end of turn.

    .venv/bin/python benchmarks/synthesis_throughput.py --model data/model --seeds data/seed --prompts 16
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ctxsynth.generation.transformers_backend import TransformersBackend
from ctxsynth.prepare.seeds import read_seed_dir
from ctxsynth.synthesis.contexts import build_requests
from ctxsynth.synthesis.prompts import get_prompt


def generate_calls(backend: TransformersBackend, requests, sampling, batch_size: int) -> int:
    """Plain `model.generate` over length-sorted, left-padded batches; generated tokens up to the end of turn."""
    import torch

    prompts = sorted((backend.prompt_text(r) for r in requests), key=lambda p: -len(backend.tokenizer(p).input_ids))
    eos, tokens = set(backend._eos_ids()), 0
    for start in range(0, len(prompts), batch_size):
        encoded = backend.tokenizer(
            prompts[start : start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
        ).to(backend.device)
        with torch.inference_mode():
            output = backend.model.generate(
                **encoded,
                max_new_tokens=sampling["max_new_tokens"],
                do_sample=False,
                min_new_tokens=sampling.get("min_new_tokens", 0),
                pad_token_id=backend.tokenizer.pad_token_id,
            )
        for row in output[:, encoded.input_ids.shape[1] :].tolist():
            tokens += next((n for n, t in enumerate(row) if t in eos), len(row))
    return tokens


def continuous(backend: TransformersBackend, requests, sampling) -> int:
    return sum(
        result["generated_tokens"] for batch in backend.iter_generate(requests, sampling, seed=0) for _, result in batch
    )


def timed(run, *args) -> tuple[float, int]:
    started = time.perf_counter()
    tokens = run(*args)
    return time.perf_counter() - started, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument(
        "--fixed-length",
        action="store_true",
        help="force every prompt to generate exactly --max-new-tokens (raw generation speed)",
    )
    parser.add_argument("--skip-static", action="store_true", help="leave out the static-batch generate() row")
    args = parser.parse_args()
    seeds = read_seed_dir(args.seeds)[: args.prompts]
    # Greedy, so all paths write (nearly) the same continuations; tokens/s counts what each actually generated.
    sampling = {"max_new_tokens": args.max_new_tokens, "temperature": 0.0}
    if args.fixed_length:  # no early end of turn: both paths generate the same number of tokens
        sampling["min_new_tokens"] = args.max_new_tokens
    backend = TransformersBackend(args.model, batch_size=args.batch_size, device="auto", dtype="float32")
    requests = build_requests(seeds, get_prompt("context_synthesis"), backend.model_id, sampling, 0, 150, "Context:")
    warm_up = {"max_new_tokens": 4, "temperature": 0.0}
    generate_calls(backend, requests[:2], warm_up, 2)
    continuous(backend, requests[:2], warm_up)
    rows = [("one at a time (reference style)",) + timed(generate_calls, backend, requests, sampling, 1)]
    if not args.skip_static:
        rows.append(
            (f"static batches of {args.batch_size}",)
            + timed(generate_calls, backend, requests, sampling, args.batch_size)
        )
    rows.append((f"continuous batching, {args.batch_size} slots",) + timed(continuous, backend, requests, sampling))
    length = "exactly" if args.fixed_length else "up to"
    print(
        f"{len(requests)} prompts, {length} {args.max_new_tokens} new tokens, greedy, {backend.model_id.split('@')[0]}"
    )
    print(f"{'path':<36}{'seconds':>10}{'tokens':>9}{'tokens/s':>11}{'speed-up':>10}")
    reference = rows[0][2] / rows[0][1]
    for name, seconds, tokens in rows:
        print(f"{name:<36}{seconds:>10.1f}{tokens:>9}{tokens / seconds:>11.1f}{tokens / seconds / reference:>9.2f}x")


if __name__ == "__main__":
    main()
