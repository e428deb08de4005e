"""How wide the main comparison's intervals are, where the width comes from, and what K and test-set sizes buy.

Reads metrics/results.json (`ctxsynth report` writes it) and prints, for the main group at the CPU scale:
1. each row's overall score per training seed and the seed-to-seed standard deviation;
2. for each key difference (context synthesis minus instruction synthesis, minus general data only): the bootstrap
   interval the report gives, and its variance split into a document part (paired per-document differences of the
   seed-averaged scores, per task) and a seed part (the two rows' seed-to-seed variances);
3. the expected 95% half-width for other (documents per task, seeds) choices,
   1.96 * sqrt(sum_t (1/T)^2 s_t^2 / n + (s_A^2 + s_B^2) / K), beside the measured cost of a row.

    python benchmarks/seed_spread.py [--results metrics/results.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from ctxsynth.paper import stats
from ctxsynth.paper.rows import rows_of

PAIRS = (("context-synthesis", "instruction-synthesis"), ("context-synthesis", "general-only"))
CHOICES = ((24, 1), (24, 3), (24, 5), (48, 3), (48, 5), (96, 3))  # (documents per task, seeds)


def seed_scores(row) -> list[float]:
    return [run["eval"]["finetuned"]["overall"] for run in row.runs]


def document_sd(a, b) -> dict[str, tuple[float, int]]:
    """Per task: SD of the paired per-document differences of the seed-averaged scores, and the paired count."""
    out = {}
    for task in sorted(set(a.tasks()) & set(b.tasks())):
        runs_a, runs_b = a.documents("finetuned"), b.documents("finetuned")
        docs = set.intersection(*(set(run[task]) for run in runs_a + runs_b))
        diffs = [
            statistics.fmean(run[task][d] for run in runs_a) - statistics.fmean(run[task][d] for run in runs_b)
            for d in sorted(docs)
        ]
        out[task] = (statistics.stdev(diffs), len(diffs))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=Path("metrics/results.json"))
    args = parser.parse_args(argv)
    rows = rows_of(json.loads(args.results.read_text(encoding="utf-8")), "main")
    print("| row | seeds | overall per seed | seed SD | train s per seed |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        scores = seed_scores(row)
        sd = statistics.stdev(scores) if len(scores) > 1 else float("nan")
        train = statistics.fmean(run["train"].get("train_time_s", 0.0) for run in row.runs)
        print(f"| {name} | {len(scores)} | {', '.join(f'{s:.2f}' for s in scores)} | {sd:.2f} | {train:.0f} |")
    print()
    header = " | ".join(f"n={n}, K={k}" for n, k in CHOICES)
    print(f"| difference | value | 95% interval (report) | doc SD per task | seed SD A, B | {header} |")
    print("|---|---|---|---|---|" + "---|" * len(CHOICES))
    for a_name, b_name in PAIRS:
        a, b = rows.get(a_name), rows.get(b_name)
        if not (a and b and a.has_documents and b.has_documents):
            print(f"| {a_name} − {b_name} | not collected |")
            continue
        estimate = stats.difference(a.documents("finetuned"), b.documents("finetuned"))
        per_task = document_sd(a, b)
        weight = 1.0 / len(per_task)
        seed_var = sum(statistics.variance(seed_scores(r)) if len(r.runs) > 1 else 0.0 for r in (a, b))
        projected = [
            1.96 * (sum((weight * sd) ** 2 / n for sd, _ in per_task.values()) + seed_var / k) ** 0.5
            for n, k in CHOICES
        ]
        print(
            f"| {a_name} − {b_name} | {estimate.value:+.2f} | [{estimate.low:+.2f}, {estimate.high:+.2f}] | "
            + ", ".join(f"{task} {sd:.1f} (n={n})" for task, (sd, n) in per_task.items())
            + f" | {seed_var**0.5:.2f} | "
            + " | ".join(f"±{p:.2f}" for p in projected)
            + " |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
