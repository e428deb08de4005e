"""metrics/report.md: every finding of the paper, our numbers beside the paper's, from the DVC experiments.

    ctxsynth report                  # collect from `dvc exp show --json`, then render
    ctxsynth report --from-results   # render from the committed metrics/results.json only

Verdicts are computed from the collected numbers each time; nothing here knows what the result "should" be. Each one
follows a 95% interval from ctxsynth/paper/stats.py (a paired bootstrap over test documents within each task, and over
training seeds where a row has several): holds, contradicted or inconclusive. A comparison that involves a row
collected without per-document scores is inconclusive, whatever its means say.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctxsynth.core.io import write_json
from ctxsynth.paper import figures, stats
from ctxsynth.paper.experiments import run_history
from ctxsynth.paper.findings import BASE, contexts_finding, main_findings, niah_by_length, pilot_findings
from ctxsynth.paper.rows import Row, mean_of, per_document, rows_of
from ctxsynth.paper.sections import generator_section, gpu_only_section, paper_reference
from ctxsynth.paper.verdicts import compare, fmt, interval, not_measured, shared_tasks, table, task_weights

RESULTS = Path("metrics/results.json")
REPORT = Path("metrics/report.md")
FIGURES = Path("metrics/figures")
MAIN_LABELS = {
    "general-only": "general data only",
    "instruction-synthesis": "+ instruction synthesis",
    "instruction-synthesis-no-context": "+ instruction synthesis, context removed",
    "context-synthesis": "+ context synthesis",
    "human-context": "+ human context",
    "context-free": "+ seeds, context removed",
    "longalpaca": "+ LongAlpaca-12k",
    "longalign": "+ LongAlign-10k",
    "longmit": "+ LongMIT",
}
GPU_ONLY = "gpu rows only"  # a row of the paper's table that this scale has no data or model for
COHERENCE = (
    ("instruction synthesis", "instruction-synthesis", "instruction-synthesis-no-context"),
    ("context synthesis", "context-synthesis", "context-free"),
    ("human context", "human-context", "context-free"),
)


def pilot_section(results: dict, figures_dir: Path) -> tuple[str, list[str]]:
    rows = rows_of(results, "pilot")
    if not rows:
        return "", [not_measured("F1", "run `make paper-pilot`", "pilot")]
    first = next(iter(rows.values()))
    subtasks = [
        s for s in figures.SUBTASK_ORDER if any(r.score("finetuned", f"niah_{s}") is not None for r in rows.values())
    ]
    models = [(BASE, first, "base")] + [(name, row, "finetuned") for name, row in rows.items()]
    lengths = sorted(niah_by_length(first.niah("base"), "base"))
    body, by_length = [], {}
    for label, row, model in models:
        per_length = niah_by_length(row.niah(model), model)
        by_length[label] = per_length
        per_task = [row.score(model, f"niah_{s}") for s in subtasks]
        estimate = stats.score(row.documents(model)) if row.has_documents else None
        body.append(
            [label]
            + [fmt(v) for v in per_task]
            + [fmt(mean_of(per_task)), interval(estimate)]
            + [fmt(per_length.get(n)) for n in lengths]
        )
    header = ["training data"] + subtasks + ["mean", "mean: 95% interval"] + [f"{n} words" for n in lengths]
    text = [table(header, body), ""]
    counts = first.runs[0].get("test_documents") or {}
    if counts:
        text += [
            "Test samples per subtask: "
            + ", ".join(f"{task} {n}" for task, n in sorted(counts.items()))
            + (f"; {first.seeds} seeds per row" if first.seeds > 1 else "")
            + ". One sample moves a subtask's recall by up to "
            + f"{100 / min(counts.values()):.2f} points.",
            "",
        ]
    if any(not run.get("per_document") and per_document(run) for row in rows.values() for run in row.runs):
        text += [
            "Rows collected without per-document scores take each sample's recall from their heatmap cells, which "
            "hold one test sample each.",
            "",
        ]
    elif not counts and first.niah("base"):
        text += [
            f"Each subtask has {first.cells_per_subtask('base')} heatmap cells (haystack length x needle depth); how "
            "many test samples each cell holds was not collected for these rows, so the table has no intervals.",
            "",
        ]
    base_mean = mean_of([first.score("base", f"niah_{s}") for s in subtasks])
    if base_mean is not None and base_mean >= 90:
        text += [
            f"The base model already retrieves at these lengths (mean recall {base_mean:.2f}), so here a "
            "training set can mostly preserve retrieval, not teach it (the paper tested haystacks up to 32K tokens).",
            "",
        ]
    for label, row, model in models:
        slug = "base" if model == "base" else label
        title = f"NIAH recall, {label}" + (f" (mean of {row.seeds} seeds)" if row.seeds > 1 else "")
        path = figures.niah_heatmaps(
            row.niah(model), model, title, figures_dir / f"niah_{slug}.png", counts=row.cell_counts(model)
        )
        if path:
            text.append(f"![NIAH heatmap, {label}](figures/{path.name})")
    return "\n".join(text), pilot_findings(rows, by_length, lengths, subtasks)


def _series_with_errors(labelled: list[tuple[str, Row, str]]) -> tuple[dict, dict]:
    """Per-task and overall scores, and their 95% intervals where per-document scores exist, for the bar figures."""
    series, errors = {}, {}
    for label, row, model in labelled:
        tasks = row.tasks(model)
        series[label] = {**{t: row.score(model, t) or 0.0 for t in tasks}, figures.OVERALL: row.score(model) or 0.0}
        if row.has_documents:
            documents = row.documents(model)
            bars = {t: stats.score(documents, [t]) for t in tasks}
            bars[figures.OVERALL] = stats.score(documents, tasks)
            errors[label] = {t: (e.low, e.high) for t, e in bars.items() if e is not None}
    return series, errors


def main_section(results: dict, figures_dir: Path) -> tuple[str, list[str]]:
    rows = rows_of(results, "main")
    if not rows:
        return "", [not_measured("F2 / F5", "run `make paper-main`", "main comparison")]
    reference = paper_reference()["main"]
    tasks = sorted({t for row in rows.values() for t in row.tasks()})
    first = next(iter(rows.values()))
    seeded = any(row.seeds > 1 for row in rows.values())
    labelled = [(BASE, first, "base")] + [(MAIN_LABELS.get(r, r), row, "finetuned") for r, row in rows.items()]
    body = []
    for label, row, model in labelled:
        paper = reference["rows"].get(row.name) if model == "finetuned" else None
        estimate = stats.score(row.documents(model)) if row.has_documents else None
        spread = row.seed_range(model)
        trained = model == "finetuned"
        seed_cell = f"{row.seeds} ({fmt(spread[0])}–{fmt(spread[1])})" if spread and trained else str(row.seeds)
        body.append(
            [label]
            + [fmt(row.score(model, t)) for t in tasks]
            + [fmt(row.score(model)), interval(estimate)]
            + ([seed_cell if trained else "–"] if seeded else [])
            + [(row.field("mix", key) if trained else None) or "–" for key in ("long_samples", "trained_tasks")]
            + ([fmt(v) for v in paper] if paper else ["–"] * len(reference["columns"]))
        )
    ours_cells = len(tasks) + 2 + (1 if seeded else 0) + 2
    for name, paper in reference["rows"].items():  # the paper's rows this scale cannot build (prior hub datasets)
        if name not in rows:
            body.append([f"{MAIN_LABELS.get(name, name)} ({GPU_ONLY})"] + ["–"] * ours_cells + [fmt(v) for v in paper])
    header = (
        ["training data"]
        + tasks
        + ["ours: overall", "ours: 95% interval"]
        + (["seeds (range)"] if seeded else [])
        + ["long samples", "tasks trained"]
        + [f"paper: {c}" for c in reference["columns"]]
    )
    text = [table(header, body), ""]
    if any(name not in rows for name in reference["rows"]):
        text += [
            f"Rows marked *{GPU_ONLY}* train on hub datasets (LongAlpaca-12k, LongAlign-10k, LongMIT) that this scale "
            "does not read; they are rows of the `main` (LLaMA3.1-8B) and `main-llama2` (LLaMA2-7B-64K) groups at the "
            "gpu scale, rehearsed on fixtures in each dataset's layout (docs/paper-scale.md).",
            "",
        ]
    gaps = []
    for label, with_context, without in COHERENCE:
        a, b = rows.get(with_context), rows.get(without)
        value = None if a is None or b is None or None in (a.score(), b.score()) else a.score() - b.score()
        estimate = (
            compare([(1.0, a, "finetuned"), (-1.0, b, "finetuned")], task_weights(shared_tasks(a, b)))[0]
            if a and b
            else None
        )
        gaps.append((label, a, b, value, estimate))
    text += [
        "Coherence (F5): the same pairs fine-tuned with and without their context.",
        "",
        table(
            ["data", "with context", "without context", "gap", "gap: 95% interval"],
            [
                [label, fmt(a.score() if a else None), fmt(b.score() if b else None), fmt(g), interval(e)]
                for label, a, b, g, e in gaps
            ],
        ),
        "",
    ]
    series, errors = _series_with_errors(labelled)
    path = figures.task_bars(
        series, "Per-task and overall scores, main comparison (CPU scale)", figures_dir / "tasks_main.png", errors
    )
    if path:
        text.append(f"![per-task scores](figures/{path.name})")
    return "\n".join(text), main_findings(rows)


def simple_section(results: dict, group: str, figures_dir: Path) -> tuple[str, list[str]]:
    rows = rows_of(results, group)
    reference = paper_reference().get(group) or {}
    finding_code = results["groups"][group]["finding"]
    if not rows:
        return "", [not_measured(finding_code, f"run `make paper-{group}`", group)]
    body = []
    for name, row in rows.items():
        estimate = stats.score(row.documents()) if row.has_documents else None
        body.append(
            [name, fmt(row.score()), interval(estimate), str(row.seeds), fmt(row.score("base"))]
            + [fmt(v) for v in (reference.get("rows") or {}).get(name, [None] * len(reference.get("columns", [])))]
        )
    header = ["row", "ours: overall", "ours: 95% interval", "seeds", "ours: base"] + [
        f"paper: {c}" for c in reference.get("columns", [])
    ]
    series, errors = _series_with_errors([(name, row, "finetuned") for name, row in rows.items()])
    path = figures.task_bars(
        series, f"Per-task and overall scores, {group}", figures_dir / f"tasks_{group}.png", errors
    )
    if group == "generator":
        text, findings = generator_section(rows)
        return "\n".join([text, ""] + ([f"![per-task scores](figures/{path.name})"] if path else [])), findings
    text = [table(header, body), ""] + ([f"![per-task scores](figures/{path.name})"] if path else [])
    return "\n".join(text), [contexts_finding(rows)] if group == "contexts" else []


def render(results: dict, figures_dir: Path = FIGURES) -> str:
    reference = paper_reference()
    parts = [
        "# Paper findings at our scale",
        "",
        "Generated by `ctxsynth report` from `metrics/results.json` (collected from `dvc exp show`). "
        "Numbers labelled *paper* are the paper's own (" + reference["source"] + "); ours are labelled by scale.",
        "",
        "Scales:",
    ]
    parts += [f"- **{scale}**: {text}" for scale, text in results["scales"].items()]
    experiments = list(results["experiments"].values())
    without = sorted({e["group"] for e in experiments if not per_document(e)})
    if without:
        parts += [
            "",
            f"Rows of {', '.join(without)} were collected without per-document scores (before collect read them, or "
            "their predictions are no longer in the DVC cache): they have no intervals, and every finding that "
            "compares them is inconclusive until the group is rerun.",
        ]
    # Sections in the plan's order, also when rendered from the file (written with sorted keys).
    results["groups"] = dict(sorted(results["groups"].items(), key=lambda item: item[1].get("order", 0)))
    for group, meta in results["groups"].items():
        runs = results.get("runs", {}).get(group)
        if runs:
            meta = {
                **meta,
                "took": "; ".join(
                    f"{run['wall_seconds'] / 60:.0f} min for {len(run['rows'])} rows "
                    f"({run['scale']} scale, {run['finished']})"
                    for run in run_history(runs)
                ),
            }
        results["groups"][group] = meta
    sections = {"pilot": pilot_section, "main": main_section}
    verdicts = []
    for group, meta in results["groups"].items():
        if meta.get("cpu_rows") == 0:
            text, findings = gpu_only_section(group, meta)
        elif group in sections:
            text, findings = sections[group](results, figures_dir)
        else:
            text, findings = simple_section(results, group, figures_dir)
        verdicts += findings
        parts += ["", f"## {meta['finding']}: {meta['title']}", ""]
        parts += [
            f"Paper: {paper_reference()['claims'][f]}"
            for f in (meta["finding"] or "").replace(" ", "").split(",")
            if f in reference["claims"]
        ]
        if meta.get("took"):
            parts += ["", f"Run time here: {meta['took']}."]
        parts += ["", text or "_No experiment of this group has been run at the CPU scale yet._"]
    if results.get("context_lengths"):
        path = figures.length_histogram(results["context_lengths"], figures_dir / "context_lengths.png")
        parts += [
            "",
            "## Synthesized context lengths against evaluation contexts (the paper's Figure 5)",
            "",
            f"![context lengths](figures/{path.name})",
        ]
    parts += [
        "",
        "## Which findings hold at this scale",
        "",
        f"Each verdict reads a 95% interval of the difference the finding rests on, from a paired bootstrap "
        f"(`ctxsynth/paper/stats.py`, {stats.REPLICATES:,} replicates, fixed seed): test documents are redrawn "
        "within each task, the same documents for every compared row, and training seeds are redrawn too where a "
        "row has several. **holds**: the interval excludes 0 on the paper's side; **contradicted**: it excludes 0 "
        "on the other side; **inconclusive**: it includes 0 (a tie always does). Each line gives the difference, its "
        "interval, the paired documents and seeds, and what else differs between the compared rows.",
        "",
    ] + verdicts
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-results", action="store_true", help=f"render from {RESULTS} without DVC")
    parser.add_argument("--plan", type=Path, default=Path("experiments/paper.yaml"))
    args = parser.parse_args(argv)
    if args.from_results:
        results = json.loads(RESULTS.read_text(encoding="utf-8"))
    else:
        from ctxsynth.paper.collect import collect

        stored = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.is_file() else None
        results = collect(args.plan, stored=stored)
        write_json(RESULTS, results)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(render(results), encoding="utf-8")
    print(f"report: {REPORT} ({len(results['experiments'])} experiments)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
