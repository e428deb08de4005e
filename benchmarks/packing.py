"""Padding versus packing on the same mix: share of useful (non-padding) tokens and training tokens per second.

Both modes train the same base model on the same prepared samples (chat template, answer-only labels, middle
truncation to --max-tokens) through the finetune stage's own code (`ctxsynth.finetune.train.train`, LoRA, cpu recipe,
gradient checkpointing so a long row fits in memory), with about the same tokens per step: padding batches
--batch-size samples padded to the longest; packing fills one row of up to --pack-tokens with whole samples
(best-fit decreasing). The useful-token share is counted over one whole epoch of batches; tokens/s (non-padding
tokens, the number that matters) over --steps.

    .venv/bin/python benchmarks/packing.py --model data/model --train data/mix/train.jsonl --steps 1
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ctxsynth.core.chat import MODEL_TEMPLATE
from ctxsynth.core.chat_encoding import end_of_turn_ids
from ctxsynth.finetune.data import PadCollator, load_chat_records, prepare_examples
from ctxsynth.finetune.packing import PackedCollator, pack_examples
from ctxsynth.finetune.train import FinetuneSettings, load_tokenizer, train


def useful_share(rows: list, collator, batch_size: int) -> tuple[float, int]:
    """(non-padding tokens / tokens computed, batches) over one epoch, in dataset order."""
    real = computed = batches = 0
    for start in range(0, len(rows), batch_size):
        batch = collator(rows[start : start + batch_size])
        real += int(batch["real_tokens"])
        computed += batch["input_ids"].numel()
        batches += 1
    return real / computed, batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--train", default="data/mix/train.jsonl")
    parser.add_argument("--max-tokens", type=int, default=1024, help="per sample (longer ones lose their middle)")
    parser.add_argument("--pack-tokens", type=int, default=2560, help="per packed row (one row per step)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples per padded batch")
    parser.add_argument("--steps", type=int, default=1, help="training steps timed per mode")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    tokenizer, _ = load_tokenizer(args.model, MODEL_TEMPLATE)
    examples = prepare_examples(
        load_chat_records(args.train),
        tokenizer,
        max_tokens=args.max_tokens,
        overlength="truncate_middle",
        end_ids=end_of_turn_ids(tokenizer),
        path=args.train,
    ).examples
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if max(len(example) for example in examples) > args.pack_tokens:
        parser.error("--pack-tokens must hold the longest sample (--max-tokens)")
    packs = pack_examples(examples, args.pack_tokens)
    results = {
        "padding": useful_share(examples, PadCollator(pad), args.batch_size),
        "packing": useful_share(packs, PackedCollator(pad), 1),
    }

    speed = {}
    with tempfile.TemporaryDirectory(prefix="ctxsynth-bench-packing-") as scratch:
        for mode in ("padding", "packing"):
            packing = mode == "packing"  # every sample is within --max-tokens already: the same samples either way
            params = FinetuneSettings(
                packing=packing,
                batch_size=1 if packing else args.batch_size,
                grad_accum=1,
                max_steps=args.steps,
                max_tokens=args.pack_tokens if packing else args.max_tokens,
                gradient_checkpointing=True,
                save_steps=0,
            )
            summary = train(args.model, args.train, Path(scratch) / mode, None, params)
            speed[mode] = summary
    lengths = sorted(len(example) for example in examples)
    print(
        f"{len(examples)} samples from {args.train}, {lengths[0]}-{lengths[-1]} tokens (median "
        f"{lengths[len(lengths) // 2]}); padding: {args.batch_size} samples per batch; packing: {len(packs)} rows "
        f"of <= {args.pack_tokens} tokens (filled to {sum(lengths) / (len(packs) * args.pack_tokens):.1%}), one "
        f"per step; {args.steps} LoRA step(s) per mode on {args.model}"
    )
    print("| mode | batches/epoch | useful tokens | samples/step | train tokens/s | s/step |")
    print("|---|---|---|---|---|---|")
    for mode in ("padding", "packing"):
        share, batches = results[mode]
        summary = speed[mode]
        print(
            f"| {mode} | {batches} | {share:.1%} | {summary['samples_seen'] / summary['steps']:.1f} | "
            f"{summary['tokens_per_second']:.0f} | {summary['seconds_per_step']:.2f} |"
        )
    packing_share = results["packing"][0]
    if packing_share < 0.95:
        print(f"packing reached only {packing_share:.1%} useful tokens (< 95%)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
