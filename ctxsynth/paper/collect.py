"""Collect the paper experiments' results from DVC into one small JSON file (metrics/results.json).

Experiment refs stay local to a machine; this file is what gets committed, and the report is rendered from it alone,
so `ctxsynth report --from-results` rebuilds the report anywhere. Collecting is cumulative: a row found in
`dvc exp show` replaces its stored result, and a stored row whose experiment is not on this machine (run elsewhere, or
before the refs were lost) is kept, with its per-document scores, as long as the plan still gives it the same overrides.

Per-document scores: the evaluate stage's `data/eval/predictions.jsonl` is a DVC output, so its content lives in the
DVC cache and the experiment's commit holds only its hash (dvc.lock). `dvc.api.open(path, rev=<experiment commit>)`
reads that commit's version from the cache (or the default remote). Each row keeps
`per_document: {variant: {task: {document id: score x100}}}`, the paired bootstrap's input (ctxsynth/paper/stats.py).
A row whose predictions cannot be read (not in the cache, or collected before this existed) has no `per_document`, and
the report calls its comparisons inconclusive.
"""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

from ctxsynth.core.dvc_deps import DVC
from ctxsynth.paper.experiments import RUNS_LOG, load_plan, planned_names, planned_runs

log = logging.getLogger(__name__)

NIAH_PLOT = "metrics/plots/niah.json"
PREDICTIONS = "data/eval/predictions.jsonl"
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


def exp_show() -> list:
    # Baselines are named explicitly (the last 20 commits: experiments run before a later commit still count):
    # DVC 3.67 without --rev was seen listing an older commit as the baseline and none of its experiments.
    commits = subprocess.run(
        ["git", "rev-list", "-n", "20", "HEAD"], check=True, text=True, capture_output=True
    ).stdout.split()
    revs = [arg for commit in commits for arg in ("--rev", commit)]
    completed = subprocess.run([*DVC, "exp", "show", "--json", *revs], check=True, text=True, capture_output=True)
    return json.loads(completed.stdout)


def _metrics(data: dict) -> dict:
    return {path: (entry or {}).get("data") for path, entry in (data.get("metrics") or {}).items()}


def _git_json(rev: str, path: str):
    completed = subprocess.run(["git", "show", f"{rev}:{path}"], text=True, capture_output=True)
    return json.loads(completed.stdout) if completed.returncode == 0 else None


def dvc_predictions(rev: str) -> list[dict] | None:
    """The experiment's prediction records, read through DVC at its commit; None (and a warning) when the cache and
    the remote do not have them."""
    import dvc.api
    from dvc.exceptions import DvcException

    try:
        with dvc.api.open(PREDICTIONS, rev=rev, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle if line.strip()]
    except (DvcException, OSError, ValueError) as error:
        log.warning("%s at %s not readable (%s): no per-document scores for it", PREDICTIONS, rev[:12], error)
        return None


def document_scores(records: list[dict] | None) -> dict[str, dict[str, dict[str, float]]] | None:
    """{variant: {task: {document id: score x100}}} from prediction records (their `score` is already x100)."""
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for record in records or []:
        document = str(record.get("_id", record.get("id")))
        scores.setdefault(record["variant"], {}).setdefault(record["task"], {})[document] = round(
            float(record["score"]), 4
        )
    return scores or None


def experiments_from_show(
    show: list, planned: dict[str, dict], read_file=_git_json, read_predictions=dvc_predictions
) -> dict[str, dict]:
    """The planned experiments found in `dvc exp show --json` output (the first baseline listing a name wins).
    read_file(rev, path): a git-tracked file's JSON at a commit; read_predictions(rev): prediction records or None."""
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
                    "mix": {
                        **{k: mix[k] for k in MIX_KEYS if k in mix},
                        # task coverage: rows trained on fewer tasks (no human contexts for some) are not like for like
                        "trained_tasks": sum(1 for task in (mix.get("tasks") or {}).values() if task.get("count")),
                    },
                    "synthesize": {
                        k: (metrics.get("metrics/synthesize.json") or {}).get(k)
                        for k in ("method", "parse_failure_rate")
                    },
                    "test_documents": documents_per_task(data, metrics.get("metrics/eval.json")),
                    "niah": read_file(rev["rev"], NIAH_PLOT),
                }
                per_document = document_scores(read_predictions(rev["rev"]))
                if per_document:
                    found[name]["per_document"] = per_document
                    scored = per_document.get("finetuned") or next(iter(per_document.values()))
                    found[name]["test_documents"] = {task: len(docs) for task, docs in sorted(scored.items())}
    return found


def documents_per_task(data: dict, evaluation: dict | None) -> dict[str, int]:
    """Documents per scored task, from the experiment's own params (benchmark.<task>.count; NIAH: samples per cell x
    lengths x depths); the per-document scores, where read, replace this with the documents actually scored."""
    benchmark = (((data.get("params") or {}).get("params.yaml") or {}).get("data") or {}).get("benchmark") or {}
    tasks = ((evaluation or {}).get("finetuned") or {}).get("tasks") or {}
    niah = benchmark.get("niah") if isinstance(benchmark.get("niah"), dict) else {}
    counts = {}
    for task in tasks:
        if isinstance(benchmark.get(task), dict) and benchmark[task].get("count"):
            counts[task] = benchmark[task]["count"]
        elif task.startswith("niah_") and niah.get("lengths") and niah.get("depths"):
            counts[task] = int(niah.get("samples") or 1) * len(niah["lengths"]) * len(niah["depths"])
    return counts


def merge_experiments(stored: dict[str, dict], found: dict[str, dict], planned: dict[str, dict]) -> dict[str, dict]:
    """Stored rows still planned with the same overrides, then the rows found now (which win), in the plan's order."""
    kept = {
        name: {**row, "order": planned[name]["order"], "seed": planned[name]["seed"]}
        for name, row in stored.items()
        if name in planned and row.get("overrides") == planned[name]["overrides"]
    }
    merged = {**kept, **found}
    for name, row in found.items():
        # The same run found again with its predictions gone from the cache: keep the scores read earlier.
        earlier = kept.get(name) or {}
        if "per_document" not in row and earlier.get("per_document") and earlier.get("rev") == row.get("rev"):
            merged[name] = {
                **row,
                "per_document": earlier["per_document"],
                "test_documents": earlier.get("test_documents", row.get("test_documents")),
            }
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
            group: {
                "finding": spec.get("finding"),
                "title": spec.get("title"),
                "cpu_rows": len(planned_runs(plan, group, "cpu")),  # 0: a gpu-only group (hub student or data)
                "order": index,  # the plan's order: the file is written with sorted keys
            }
            for index, (group, spec) in enumerate(plan["groups"].items())
        },
        "experiments": merge_experiments(
            (stored or {}).get("experiments") or {}, experiments_from_show(show, planned), planned
        ),
        "runs": json.loads(RUNS_LOG.read_text(encoding="utf-8")) if RUNS_LOG.is_file() else {},
        "context_lengths": json.loads(lengths.read_text(encoding="utf-8")) if lengths.is_file() else None,
    }
