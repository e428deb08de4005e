"""Stage benchmark: held-out long-context evaluation sets (LongBench layout) and the items they reserve."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json, write_jsonl
from ctxsynth.core.settings import load_settings
from ctxsynth.prepare.benchmark import build_benchmark
from ctxsynth.prepare.settings import BenchmarkSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--out", default="data/benchmark", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(BenchmarkSettings, "benchmark")
    sets, reserved = build_benchmark(args.raw, settings)
    counts = {task: write_jsonl(args.out / f"{task}.jsonl", items) for task, items in sets.items()}
    write_json(args.out / "reserved.json", reserved)
    print(f"benchmark: {counts}")


if __name__ == "__main__":
    sys.exit(main())
