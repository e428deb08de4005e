"""Stage lengths: synthesized-context lengths against evaluation-context lengths (plot data, Figure 5)."""

import argparse
from pathlib import Path

from ctxsynth.core.io import load_params, read_jsonl, write_json
from ctxsynth.core.text import count_words
from ctxsynth.synthesis.contexts import length_histogram


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--contexts", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--benchmark-dir", default="data/benchmark", type=Path)
    parser.add_argument("--out", default="metrics/plots/context_lengths.json", type=Path)
    args = parser.parse_args()
    params = load_params("lengths")
    synthesized = [r["words"] for r in read_jsonl(args.contexts, required=("words",)) if r.get("context")]
    evaluation = [
        count_words(doc["context"])
        for task in params["tasks"]
        for doc in read_jsonl(args.benchmark_dir / f"{task}.jsonl", required=("context",))
    ]
    write_json(args.out, length_histogram(synthesized, evaluation, int(params["bin_words"])))
    print(f"lengths: {len(synthesized)} synthesized, {len(evaluation)} evaluation contexts")


if __name__ == "__main__":
    main()
