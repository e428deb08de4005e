"""Stage mix: chat-format training samples (long samples of `mix.variant` plus `mix.general`), one JSONL file."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.chat import configured_chat_template
from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json, write_jsonl
from ctxsynth.core.settings import load_settings
from ctxsynth.core.versions import library_versions
from ctxsynth.mix.run import build_mix, mix_metrics
from ctxsynth.mix.settings import MixSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--reserved", default="data/benchmark/reserved.json", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--contexts", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--out", default="data/mix/train.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/mix.json", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(MixSettings, "mix")
    samples, general, report = build_mix(
        settings, raw_dir=args.raw, reserved_path=args.reserved, seeds_dir=args.seeds, contexts_path=args.contexts
    )
    write_jsonl(args.out, samples + general)
    # Lengths are counted in the format the samples will be trained in (a base model has no template of its own).
    chat_template = configured_chat_template("finetune")
    metrics = mix_metrics(settings, samples, general, report, args.model, chat_template)
    write_json(args.metrics, {**metrics, "versions": library_versions()})  # token lengths depend on the tokenizer
    print(f"mix: {len(samples)} long samples ({settings.variant}, n={settings.num_contexts}) + {len(general)} general")


if __name__ == "__main__":
    sys.exit(main())
