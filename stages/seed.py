"""Stage seed: instruction-answer pairs per task into data/seed/<task>.jsonl, disjoint from evaluation."""

import argparse
from pathlib import Path

from ctxsynth.core.io import load_params, read_json, write_json, write_jsonl
from ctxsynth.prepare.seeds import select_seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--reserved", default="data/benchmark/reserved.json", type=Path)
    parser.add_argument("--out", default="data/seed", type=Path)
    parser.add_argument("--metrics", default="metrics/seed.json", type=Path)
    args = parser.parse_args()
    params = load_params("seed")
    seeds, report = select_seeds(params["sources"], args.raw, read_json(args.reserved), int(params["seed"]))
    by_task: dict[str, list[dict]] = {}
    for record in seeds:
        by_task.setdefault(record["task"], []).append(record)
    args.out.mkdir(parents=True, exist_ok=True)
    for task, records in sorted(by_task.items()):
        write_jsonl(args.out / f"{task}.jsonl", records)
    write_json(
        args.metrics,
        {"tasks": report, "total": len(seeds), "removed_reserved": sum(e["removed_reserved"] for e in report.values())},
    )
    print(
        f"seed: {len(seeds)} seeds in {len(by_task)} tasks; removed as reserved for evaluation: "
        f"{sum(e['removed_reserved'] for e in report.values())}"
    )


if __name__ == "__main__":
    main()
