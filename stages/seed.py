"""Stage seed: instruction-answer pairs per task into data/seed/<task>.jsonl, disjoint from evaluation."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import read_json, write_json, write_jsonl
from ctxsynth.core.settings import load_settings
from ctxsynth.core.versions import library_versions
from ctxsynth.prepare.seeds import seed_metrics, seeds_by_task, select_seeds
from ctxsynth.prepare.settings import SeedSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--reserved", default="data/benchmark/reserved.json", type=Path)
    parser.add_argument("--out", default="data/seed", type=Path)
    parser.add_argument("--metrics", default="metrics/seed.json", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(SeedSettings, "seed")
    seeds, report = select_seeds(settings.sources, args.raw, read_json(args.reserved), settings.seed)
    by_task = seeds_by_task(seeds)
    args.out.mkdir(parents=True, exist_ok=True)
    for task, records in by_task.items():
        write_jsonl(args.out / f"{task}.jsonl", records)
    metrics = seed_metrics(seeds, report)
    write_json(args.metrics, {**metrics, "versions": library_versions()})
    print(
        f"seed: {len(seeds)} seeds in {len(by_task)} tasks; removed as reserved for evaluation: "
        f"{metrics['removed_reserved']}"
    )


if __name__ == "__main__":
    sys.exit(main())
