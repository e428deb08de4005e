"""DVC stage: LoRA (or QLoRA) fine-tuning of the base model on the training mix, answer tokens only."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxsynth.finetune import FinetuneError, FinetuneParams, train  # noqa: E402
from ctxsynth.io import InputError, load_params  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", help="base model (HF directory)")
    parser.add_argument("--train", default="data/mix/train.jsonl", help="chat-format training samples")
    parser.add_argument("--adapter", default="data/adapter", help="output PEFT adapter directory")
    parser.add_argument("--metrics", default="metrics/train.json", help="output training summary")
    parser.add_argument("--live-dir", default="metrics/train_live", help="dvclive per-step logs")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        params = FinetuneParams.from_mapping(load_params("finetune", args.params), source=args.params)
        summary = train(args.model, args.train, args.adapter, args.metrics, params, live_dir=args.live_dir)
    except (InputError, FinetuneError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"finetune: {summary['steps']} steps, loss {summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, "
          f"{summary['samples_used']}/{summary['samples_total']} samples ({summary['samples_truncated']} truncated, "
          f"{summary['samples_dropped']} dropped), {summary['tokens_per_second']:.0f} tok/s, "
          f"{summary['wall_time_s']:.0f} s")
    return 0


if __name__ == "__main__":
    # SIGTERM (timeout, a cancelled dvc repro) unwinds like Ctrl-C, so temporary directories are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
