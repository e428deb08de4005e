"""Stage lengths: synthesized-context lengths against evaluation-context lengths (plot data, Figure 5)."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json
from ctxsynth.core.settings import load_settings
from ctxsynth.synthesis.contexts import context_lengths, length_histogram
from ctxsynth.synthesis.settings import LengthsSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contexts", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--benchmark-dir", default="data/benchmark", type=Path)
    parser.add_argument("--out", default="metrics/plots/context_lengths.json", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(LengthsSettings, "lengths")
    synthesized, evaluation = context_lengths(args.contexts, args.benchmark_dir, settings.tasks)
    write_json(args.out, length_histogram(synthesized, evaluation, settings.bin_words))
    print(f"lengths: {len(synthesized)} synthesized, {len(evaluation)} evaluation contexts")


if __name__ == "__main__":
    sys.exit(main())
