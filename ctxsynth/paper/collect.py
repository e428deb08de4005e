"""Collect the paper experiments' results from DVC into one small JSON file (metrics/results.json).

Experiment refs stay local to a machine; this file is what gets committed, and the report is rendered from it alone,
so `ctxsynth report --from-results` rebuilds the report anywhere. Collecting is cumulative: a row found in
`dvc exp show` replaces its stored result, and a stored row whose experiment is not on this machine (run elsewhere, or
before the refs were lost) is kept as long as the plan still gives it the same overrides.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from ctxsynth.paper.experiments import RUNS_LOG, SCALES, load_plan, planned_runs

NIAH_PLOT = "metrics/plots/niah.json"
LENGTHS_PLOT = "metrics/plots/context_lengths.json"
TRAIN_KEYS = (
    "samples_used",
    "steps",
    "train_time_s",
    "tokens_per_second",
    "final_loss",
    "mean_loss",
    "peak_rss_mb",
    "recipe",
    "method",
)
MIX_KEYS = ("variant", "num_contexts", "samples", "long_samples")


def planned_names(plan: dict) -> dict[str, dict]:
    """Experiment name -> {group, row, scale, overrides} for every row of every group at every scale."""
    names = {}
    for group in plan["groups"]:
        for scale in SCALES:
            for name, overrides in planned_runs(plan, group, scale):
                row = name[len(f"{scale}-{group}-") :]
                names[name] = {"group": group, "row": row, "scale": scale, "overrides": overrides, "order": len(names)}
    return names


def exp_show() -> list:
    # Baselines are named explicitly (the last 20 commits: experiments run before a later commit still count):
    # DVC 3.67 without --rev was seen listing an older commit as the baseline and none of its experiments.
    commits = subprocess.run(
        ["git", "rev-list", "-n", "20", "HEAD"], check=True, text=True, capture_output=True
    ).stdout.split()
    revs = [arg for commit in commits for arg in ("--rev", commit)]
    completed = subprocess.run(["dvc", "exp", "show", "--json", *revs], check=True, text=True, capture_output=True)
    return json.loads(completed.stdout)


def _metrics(data: dict) -> dict:
    return {path: (entry or {}).get("data") for path, entry in (data.get("metrics") or {}).items()}


def _git_json(rev: str, path: str):
    completed = subprocess.run(["git", "show", f"{rev}:{path}"], text=True, capture_output=True)
    return json.loads(completed.stdout) if completed.returncode == 0 else None


def experiments_from_show(show: list, planned: dict[str, dict], read_file=_git_json) -> dict[str, dict]:
    """The planned experiments found in `dvc exp show --json` output (the first baseline listing a name wins)."""
    found = {}
    for baseline in show:
        for experiment in baseline.get("experiments") or []:
            state = (experiment.get("executor") or {}).get("state", "success")
            if state != "success":  # a running row shows its temporary directory's half-written metrics
                continue
            for rev in experiment.get("revs") or []:
                name = rev.get("name")
                data = rev.get("data") or {}
                if name not in planned or name in found or rev.get("error") or not data.get("metrics"):
                    continue
                metrics = _metrics(data)
                train, mix = metrics.get("metrics/train.json") or {}, metrics.get("metrics/mix.json") or {}
                found[name] = {
                    **planned[name],
                    "rev": rev["rev"],
                    "timestamp": data.get("timestamp"),
                    "eval": metrics.get("metrics/eval.json"),
                    "train": {k: train[k] for k in TRAIN_KEYS if k in train},
                    "mix": {k: mix[k] for k in MIX_KEYS if k in mix},
                    "synthesize": {
                        k: (metrics.get("metrics/synthesize.json") or {}).get(k)
                        for k in ("method", "parse_failure_rate")
                    },
                    "test_documents": documents_per_task(data, metrics.get("metrics/eval.json")),
                    "niah": read_file(rev["rev"], NIAH_PLOT),
                }
    return found


def documents_per_task(data: dict, evaluation: dict | None) -> dict[str, int]:
    """Documents per scored QA task, from the experiment's own params (benchmark.<task>.count)."""
    benchmark = (((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}).get("benchmark") or {}
    tasks = ((evaluation or {}).get("finetuned") or {}).get("tasks") or {}
    return {
        task: benchmark[task]["count"]
        for task in tasks
        if isinstance(benchmark.get(task), dict) and benchmark[task].get("count")
    }


def merge_experiments(stored: dict[str, dict], found: dict[str, dict], planned: dict[str, dict]) -> dict[str, dict]:
    """Stored rows still planned with the same overrides, then the rows found now (which win), in the plan's order."""
    kept = {
        name: {**row, "order": planned[name]["order"]}
        for name, row in stored.items()
        if name in planned and row.get("overrides") == planned[name]["overrides"]
    }
    merged = {**kept, **found}
    return dict(sorted(merged.items(), key=lambda item: item[1]["order"]))


def collect(plan_path: Path, show: list | None = None, stored: dict | None = None) -> dict:
    """`stored`: the previous results file's content (its experiments are merged with those found now)."""
    plan = load_plan(plan_path)
    show = exp_show() if show is None else show
    planned = planned_names(plan)
    lengths = Path(LENGTHS_PLOT)
    return {
        "plan_version": plan["version"],
        "scales": plan["scales"],
        "groups": {
            group: {"finding": spec.get("finding"), "title": spec.get("title")}
            for group, spec in plan["groups"].items()
        },
        "experiments": merge_experiments(
            (stored or {}).get("experiments") or {}, experiments_from_show(show, planned), planned
        ),
        "runs": json.loads(RUNS_LOG.read_text(encoding="utf-8")) if RUNS_LOG.is_file() else {},
        "context_lengths": json.loads(lengths.read_text(encoding="utf-8")) if lengths.is_file() else None,
    }
