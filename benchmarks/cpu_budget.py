"""Does every paper group at the CPU scale, all seeds, fit in 4 hours on this machine? (issue 15's budget)

Reads the wall times `ctxsynth experiments run` logs per pass (metrics/paper_runs.json) and the plan
(experiments/paper.yaml). A pass counts when all its runs are experiments the plan still has at the CPU scale (the
seeded names); its cost per run is its wall time over its runs, and how it ran (queue workers x threads) is its note.
Prints every such pass, then each group's full pass (all planned runs) projected at the fastest cost per run
measured for that group, and the total against the budget.

    python benchmarks/cpu_budget.py [--budget-minutes 240]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctxsynth.paper.experiments import PLAN, RUNS_LOG, load_plan, planned_runs


def passes_of_current_plan(log: dict, planned: dict[str, set[str]]) -> list[dict]:
    rows = []
    for group, names in planned.items():
        for entry in (log.get(group) or {}).get("history", []):
            if entry["scale"] == "cpu" and entry["rows"] and set(entry["rows"]) <= names:
                rows.append({"group": group, **entry})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-minutes", type=float, default=240.0)
    args = parser.parse_args()
    plan = load_plan(PLAN)
    planned = {group: {name for name, _ in planned_runs(plan, group, "cpu")} for group in plan["groups"]}
    planned = {group: names for group, names in planned.items() if names}
    log = json.loads(Path(RUNS_LOG).read_text(encoding="utf-8"))
    passes = passes_of_current_plan(log, planned)

    print(f"{'group':<10}{'finished':<24}{'runs':>5}{'wall min':>10}{'min/run':>9}  how")
    for p in passes:
        minutes, runs = p["wall_seconds"] / 60, len(p["rows"])
        how = p.get("note", "(workers not recorded)")
        print(f"{p['group']:<10}{p['finished']:<24}{runs:>5}{minutes:>10.1f}{minutes / runs:>9.2f}  {how}")
    print()
    print(f"{'group':<10}{'planned runs':>13}{'min/run':>9}{'full pass min':>15}")
    total = 0.0
    for group, names in planned.items():
        costs = [p["wall_seconds"] / 60 / len(p["rows"]) for p in passes if p["group"] == group]
        if not costs:
            print(f"{group:<10}{len(names):>13}{'-':>9}{'not measured':>15}")
            continue
        minutes = len(names) * min(costs)
        total += minutes
        print(f"{group:<10}{len(names):>13}{min(costs):>9.2f}{minutes:>15.1f}")
    verdict = "within" if total <= args.budget_minutes else "over"
    print(f"{'all groups':<32}{total:>15.1f}  ({verdict} the {args.budget_minutes:.0f}-minute budget)")


if __name__ == "__main__":
    main()
