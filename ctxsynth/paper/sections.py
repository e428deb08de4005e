"""What each section of the report shows, as data for report.md.j2: the pilot (F1), the main comparison (F2, F5), the
generator (F4) by LongBench category, the other groups' tables, and the groups that exist only at the gpu scale
(their paper numbers, and how to produce ours). Tables are {header, rows}; a cell is a value the template formats
(templates.cell): a score, an interval (stats.Estimate), a count or a label. Figures are drawn here, on the way."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ctxsynth.core.tasks import get_task
from ctxsynth.paper import figures, stats
from ctxsynth.paper.rows import Row, mean_of, per_document
from ctxsynth.paper.templates import SeedRange
from ctxsynth.paper.verdicts import compare, shared_tasks, task_weights

BASE = "base model (no fine-tuning)"
GPU_ONLY = "gpu rows only"  # a row of the paper's table that this scale has no data or model for
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
COHERENCE = (
    ("instruction synthesis", "instruction-synthesis", "instruction-synthesis-no-context"),
    ("context synthesis", "context-synthesis", "context-free"),
    ("human context", "human-context", "context-free"),
)


@lru_cache(maxsize=1)
def paper_reference() -> dict:
    text = resources.files("ctxsynth.paper").joinpath("paper_reference.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def reference_tables_of(group: str) -> dict[str, dict]:
    """The paper's tables (paper_reference.yaml) a column of which this plan group produces."""
    return {
        name: spec
        for name, spec in paper_reference().items()
        if isinstance(spec, dict) and group in (spec.get("groups") or [])
    }


def _numbers(values: list | None, count: int) -> list[float | None]:
    """The paper's numbers of one row as table cells (count of them: none where the paper has no such row)."""
    return [None if v is None else float(v) for v in values] if values else [None] * count


def _table(header: list[str], rows: list[list]) -> dict:
    return {"header": header, "rows": rows}


def niah_by_length(cells: list[dict] | None, model: str) -> dict[int, float]:
    lengths: dict[int, list[float]] = {}
    for cell in cells or []:
        if cell["model"] == model:
            lengths.setdefault(int(cell["length"]), []).append(float(cell["recall"]))
    return {length: mean_of(values) for length, values in sorted(lengths.items())}


def measured_subtasks(rows: dict[str, Row]) -> list[str]:
    """The NIAH subtasks some row scored, in the paper's order."""
    return [
        s for s in figures.SUBTASK_ORDER if any(r.score("finetuned", f"niah_{s}") is not None for r in rows.values())
    ]


def tasks_by_category(rows: dict[str, Row]) -> dict[str, list[str]]:
    """LongBench category -> the evaluated tasks in it (ctxsynth/core/tasks.yaml), over every row."""
    categories: dict[str, list[str]] = {}
    for task in sorted({t for row in rows.values() for t in row.tasks()}):
        categories.setdefault(get_task(task).category, []).append(task)
    return categories


def category_order(rows: dict[str, Row]) -> tuple[dict[str, list[str]], dict[str, str], list[str]]:
    """(our categories and their tasks, the paper's label of each of its categories, the order to show them in: the
    paper's with a task of ours, then ours alone, then the paper's alone)."""
    reference = paper_reference()["generator"]
    ours = tasks_by_category(rows)
    paper_columns = dict(zip(reference["categories"], reference["columns"], strict=True))
    order = [c for c in reference["categories"] if c in ours] + [c for c in ours if c not in paper_columns]
    return ours, paper_columns, order + [c for c in reference["categories"] if c not in ours]


def labelled_categories(rows: dict[str, Row]) -> dict[str, list[str]]:
    """The categories of the tasks scored here, under the paper's labels, in the paper's order."""
    ours, paper_columns, order = category_order(rows)
    return {paper_columns.get(c, c): ours[c] for c in order if c in ours}


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


def task_bars(labelled: list[tuple[str, Row, str]], title: str, out: Path) -> str | None:
    series, errors = _series_with_errors(labelled)
    path = figures.task_bars(series, title, out, errors)
    return path.name if path else None


# --- the pilot (F1) -----------------------------------------------------------------------------------------------


def pilot_section(rows: dict[str, Row], figures_dir: Path) -> dict:
    """Recall per NIAH subtask and haystack length, base model first, and one heatmap per row."""
    first = next(iter(rows.values()))
    subtasks = measured_subtasks(rows)
    models = [(BASE, first, "base")] + [(name, row, "finetuned") for name, row in rows.items()]
    lengths = sorted(niah_by_length(first.niah("base"), "base"))
    body = []
    for label, row, model in models:
        per_length = niah_by_length(row.niah(model), model)
        per_task = [row.score(model, f"niah_{s}") for s in subtasks]
        estimate = stats.score(row.documents(model)) if row.has_documents else None
        body.append([label, *per_task, mean_of(per_task), estimate, *[per_length.get(n) for n in lengths]])
    header = ["training data", *subtasks, "mean", "mean: 95% interval", *[f"{n} words" for n in lengths]]
    counts = first.runs[0].get("test_documents") or {}
    return {
        "kind": "pilot",
        "table": _table(header, body),
        "counts": sorted(counts.items()),
        "seeds": first.seeds,
        "sample_step": 100 / min(counts.values()) if counts else None,  # one sample's share of a subtask's recall
        "recall_from_cells": any(
            not run.get("per_document") and per_document(run) for row in rows.values() for run in row.runs
        ),
        "cells_per_subtask": first.cells_per_subtask("base") if not counts and first.niah("base") else None,
        "base_mean": mean_of([first.score("base", f"niah_{s}") for s in subtasks]),
        "figures": _heatmaps(models, figures_dir),
    }


def _heatmaps(models: list[tuple[str, Row, str]], figures_dir: Path) -> list[tuple[str, str]]:
    drawn = []
    for label, row, model in models:
        slug = "base" if model == "base" else label
        title = f"NIAH recall, {label}" + (f" (mean of {row.seeds} seeds)" if row.seeds > 1 else "")
        path = figures.niah_heatmaps(
            row.niah(model), model, title, figures_dir / f"niah_{slug}.png", counts=row.cell_counts(model)
        )
        if path:
            drawn.append((label, path.name))
    return drawn


# --- the main comparison (F2, F5) ---------------------------------------------------------------------------------


def _main_row(label: str, row: Row, model: str, tasks: list[str], seeded: bool, reference: dict) -> list:
    trained = model == "finetuned"
    estimate = stats.score(row.documents(model)) if row.has_documents else None
    spread = row.seed_range(model)
    seeds = SeedRange(row.seeds, *spread) if spread and trained else row.seeds
    cells = [label, *[row.score(model, t) for t in tasks], row.score(model), estimate]
    cells += [seeds if trained else None] if seeded else []
    cells += [(row.field("mix", key) if trained else None) or None for key in ("long_samples", "trained_tasks")]
    paper = reference["rows"].get(row.name) if trained else None
    return cells + _numbers(paper, len(reference["columns"]))


def main_section(rows: dict[str, Row], figures_dir: Path) -> dict:
    """Our rows beside the paper's (its rows this scale cannot build marked), and the coherence gaps (F5)."""
    reference = paper_reference()["main"]
    tasks = sorted({t for row in rows.values() for t in row.tasks()})
    first = next(iter(rows.values()))
    seeded = any(row.seeds > 1 for row in rows.values())
    labelled = [(BASE, first, "base")] + [(MAIN_LABELS.get(r, r), row, "finetuned") for r, row in rows.items()]
    body = [_main_row(label, row, model, tasks, seeded, reference) for label, row, model in labelled]
    ours = len(tasks) + 2 + (1 if seeded else 0) + 2
    missing = [name for name in reference["rows"] if name not in rows]  # prior hub datasets
    body += [
        [f"{MAIN_LABELS.get(n, n)} ({GPU_ONLY})", *[None] * ours, *_numbers(reference["rows"][n], 0)] for n in missing
    ]
    header = [
        "training data",
        *tasks,
        "ours: overall",
        "ours: 95% interval",
        *(["seeds (range)"] if seeded else []),
        "long samples",
        "tasks trained",
        *[f"paper: {c}" for c in reference["columns"]],
    ]
    title = "Per-task and overall scores, main comparison (CPU scale)"
    return {
        "kind": "main",
        "table": _table(header, body),
        "gpu_only_rows": bool(missing),
        "coherence": _table(["data", "with context", "without context", "gap", "gap: 95% interval"], _coherence(rows)),
        "figure": task_bars(labelled, title, figures_dir / "tasks_main.png"),
    }


def _coherence(rows: dict[str, Row]) -> list[list]:
    """The same pairs fine-tuned with and without their context: scores, gap and the gap's interval."""
    body = []
    for label, with_context, without in COHERENCE:
        a, b = rows.get(with_context), rows.get(without)
        scores = [a.score() if a else None, b.score() if b else None]
        gap = None if None in scores else scores[0] - scores[1]
        terms = [(1.0, a, "finetuned"), (-1.0, b, "finetuned")]
        estimate = compare(terms, task_weights(shared_tasks(a, b)))[0] if a and b else None
        body.append([label, *scores, gap, estimate])
    return body


# --- the other groups ---------------------------------------------------------------------------------------------


def simple_section(rows: dict[str, Row], group: str, figures_dir: Path) -> dict:
    """One line per row with its interval, beside the paper's numbers (F3 and groups like it); F4 by category."""
    reference = paper_reference().get(group) or {}
    bars = task_bars(
        [(name, row, "finetuned") for name, row in rows.items()],
        f"Per-task and overall scores, {group}",
        figures_dir / f"tasks_{group}.png",
    )
    if group == "generator":
        return generator_section(rows, bars)
    columns = reference.get("columns", [])
    body = [
        [
            name,
            row.score(),
            stats.score(row.documents()) if row.has_documents else None,
            row.seeds,
            row.score("base"),
            *_numbers((reference.get("rows") or {}).get(name), len(columns)),
        ]
        for name, row in rows.items()
    ]
    header = ["row", "ours: overall", "ours: 95% interval", "seeds", "ours: base", *[f"paper: {c}" for c in columns]]
    return {"kind": "simple", "table": _table(header, body), "figure": bars}


def _generator_cells(row: Row | None, paper: list, ours: dict, paper_columns: dict, order: list[str]) -> list:
    documents = row.documents() if row is not None and row.has_documents else None
    paper_of = dict(zip(paper_columns, paper or [], strict=False))
    cells = []
    for category in order:
        if category in ours:
            estimate = stats.score(documents, ours[category]) if documents else None
            value = mean_of([row.score("finetuned", t) for t in ours[category]]) if row is not None else None
            cells += [value, estimate]
        if category in paper_columns:
            cells.append(None if paper_of.get(category) is None else float(paper_of[category]))
    overall = stats.score(documents) if documents else None
    return cells + ([row.score(), overall, row.seeds] if row else [None] * 3)


def generator_section(rows: dict[str, Row], bars: str | None) -> dict:
    """F4 as the paper reports it, by LongBench category: ours (mean of the category's tasks, with a bootstrap interval
    over its test documents and seeds) beside the paper's, category by category; then the overall score."""
    reference = paper_reference()["generator"]
    ours, paper_columns, order = category_order(rows)
    body = [
        [name, *_generator_cells(row, reference["rows"].get(name), ours, paper_columns, order)]
        for name, row in rows.items()
    ]
    body += [
        [f"{name} ({GPU_ONLY})", *_generator_cells(None, reference["rows"][name], ours, paper_columns, order)]
        for name in reference["rows"]
        if name not in rows
    ]
    header = ["generator"]
    for category in order:
        label = paper_columns.get(category, category)
        header += [f"ours: {label}", "95% interval"] if category in ours else []
        header += [f"paper: {label}"] if category in paper_columns else []
    header += ["ours: overall", "95% interval", "seeds"]
    held = [(paper_columns.get(c, c), ours[c]) for c in order if c in ours]
    return {"kind": "generator", "table": _table(header, body), "categories": held, "figure": bars}


def gpu_only_section(group: str) -> dict:
    """A group with no CPU rows (its student or data exists only on the hub): the paper's numbers it produces."""
    tables = []
    for reference in reference_tables_of(group).values():
        column = reference["groups"].index(group)
        body = [[row, None, float(values[column])] for row, values in reference["rows"].items()]
        tables.append(_table(["row", "ours (gpu scale)", f"paper: {reference['columns'][column]}"], body))
    return {"kind": "gpu_only", "tables": tables, "group": group}
