"""Report sections beside the pilot and the main comparison: the generator (F4) by LongBench category, and the groups
that exist only at the gpu scale (their paper numbers, and how to produce ours)."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import yaml

from ctxsynth.core.tasks import get_task
from ctxsynth.paper import stats
from ctxsynth.paper.findings import generator_finding
from ctxsynth.paper.rows import Row, mean_of
from ctxsynth.paper.verdicts import fmt, interval, not_measured, table


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


def tasks_by_category(rows: dict[str, Row]) -> dict[str, list[str]]:
    """LongBench category -> the evaluated tasks in it (ctxsynth/core/tasks.yaml), over every row."""
    categories: dict[str, list[str]] = {}
    for task in sorted({t for row in rows.values() for t in row.tasks()}):
        categories.setdefault(get_task(task).category, []).append(task)
    return categories


def generator_section(rows: dict[str, Row]) -> tuple[str, list[str]]:
    """F4 as the paper reports it, by LongBench category: ours (mean of the category's tasks, with a bootstrap interval
    over its test documents and seeds) beside the paper's, category by category; then the overall score."""
    reference = paper_reference()["generator"]
    ours = tasks_by_category(rows)
    paper_columns = dict(zip(reference["categories"], reference["columns"], strict=True))
    order = [c for c in reference["categories"] if c in ours] + [c for c in ours if c not in paper_columns]
    order += [c for c in reference["categories"] if c not in ours]  # the paper's, no task of ours: paper only

    def cells(name: str, row: Row | None) -> list[str]:
        documents = row.documents() if row is not None and row.has_documents else None
        paper = dict(zip(reference["categories"], reference["rows"].get(name) or [], strict=False))
        out = []
        for category in order:
            if category in ours:
                estimate = stats.score(documents, ours[category]) if documents else None
                value = mean_of([row.score("finetuned", t) for t in ours[category]]) if row is not None else None
                out += [fmt(value), interval(estimate)]
            if category in paper_columns:
                out.append(fmt(paper.get(category)))
        overall = stats.score(documents) if documents else None
        return out + ([fmt(row.score()), interval(overall), str(row.seeds)] if row else ["–"] * 3)

    body = [[name] + cells(name, row) for name, row in rows.items()]
    body += [[f"{name} (gpu rows only)"] + cells(name, None) for name in reference["rows"] if name not in rows]
    header = ["generator"]
    for category in order:
        label = paper_columns.get(category, category)
        if category in ours:
            header += [f"ours: {label}", "95% interval"]
        if category in paper_columns:
            header.append(f"paper: {label}")
    header += ["ours: overall", "95% interval", "seeds"]
    tasks_line = "; ".join(f"{paper_columns.get(c, c)}: {', '.join(ours[c])}" for c in order if c in ours)
    text = [
        table(header, body),
        "",
        f"Our categories hold {tasks_line or 'no task yet'} (the paper's: LongBench's 8 English tasks). Generators "
        "the CPU scale cannot run are rows of the `generator` group at the gpu scale (GPT-4o-mini through the Batch "
        "API, the open models behind `vllm serve`), rehearsed here with local fake servers.",
    ]
    return "\n".join(text), [generator_finding(rows, {paper_columns.get(c, c): ours[c] for c in order if c in ours})]


def gpu_only_section(group: str, spec: dict) -> tuple[str, list[str]]:
    """A group with no CPU rows (its student or data exists only on the hub): the paper's numbers it produces, and
    the commands that produce and rehearse ours."""
    parts = []
    for reference in reference_tables_of(group).values():
        column = reference["groups"].index(group)
        body = [[row, "–", fmt(values[column])] for row, values in reference["rows"].items()]
        parts += [table(["row", "ours (gpu scale)", f"paper: {reference['columns'][column]}"], body), ""]
    parts.append(
        f"This group has gpu rows only: `make paper-{group} SCALE=gpu` runs them, `make paper-{group} "
        "SCALE=rehearsal` runs the same code paths here with tiny stand-ins (docs/paper-scale.md)."
    )
    code = (spec.get("finding") or "").split(",")[0].strip() or group
    return "\n".join(parts), [not_measured(f"{code} ({group})", "gpu rows only; not run at this scale")]
