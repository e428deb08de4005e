"""Comparisons between rows: a contrast's 95% interval from stats.py, and what else differs between the compared
rows (training set sizes, optimizer steps, seeds, tasks scored, test set sizes)."""

from __future__ import annotations

from ctxsynth.paper import stats
from ctxsynth.paper.rows import Row

NO_DOCUMENTS = "no per-document scores collected; rerun the group"
# What collect records about a row's training, compared across the rows of a finding: (section, key, words).
TRAINING_FIELDS = (
    ("mix", "samples", "training samples"),
    ("mix", "long_samples", "long samples"),
    ("mix", "trained_tasks", "tasks trained on"),
    ("train", "samples_used", "samples trained on"),
    ("train", "steps", "optimizer steps"),
)


def compare(terms: list[tuple[float, Row, str]], weights: dict[str, float]) -> tuple[stats.Estimate | None, str | None]:
    """A contrast of rows (coefficient, row, model variant) over strata; (estimate, None) or (None, why not). A
    stratum `<task>@<length>` is one NIAH task at one haystack length."""
    missing = list(dict.fromkeys(row.name for _, row, _ in terms if not row.has_documents))
    if missing:
        rows = list(dict.fromkeys(row.name for _, row, _ in terms))
        return None, NO_DOCUMENTS if len(missing) == len(rows) else (
            f"no per-document scores collected for {', '.join(missing)}; rerun the group"
        )
    by_length = any("@" in stratum for stratum in weights)
    runs = {f"{row.name}/{model}": row.documents(model, by_length) for _, row, model in terms}
    estimate = stats.contrast(runs, [(c, f"{row.name}/{model}") for c, row, model in terms], weights)
    if estimate is None:
        return None, "no test document was scored by every compared row"
    return estimate, None


def task_weights(tasks: list[str]) -> dict[str, float]:
    return {task: 1 / len(tasks) for task in tasks} if tasks else {}


def shared_tasks(*rows: Row) -> list[str]:
    sets = [set(row.tasks()) for row in rows]
    return sorted(set.intersection(*sets)) if sets else []


def inequalities(rows: list[Row]) -> list[dict]:
    """What differs between compared rows besides the variable under test, from what collect recorded: one
    {what, by_row: [[row, value], ...]} per quantity that is known for every row and not the same for all."""
    if len(rows) < 2:
        return []
    found = []

    def note(what: str, values: list[str | None]) -> None:
        if None not in values and len(set(values)) > 1:
            found.append({"what": what, "by_row": [[row.name, value] for row, value in zip(rows, values)]})

    samples = [row.field("mix", "samples") for row in rows]
    for section, key, words in TRAINING_FIELDS:
        values = [row.field(section, key) for row in rows]
        if not (key == "samples_used" and values == samples):  # the same numbers as the mix's: said once
            note(words, values)
    note("seeds", [str(row.seeds) for row in rows])
    note("tasks scored", [", ".join(row.tasks()) or "none" for row in rows])
    documents = [row.test_documents() for row in rows]
    if all(documents):
        note("test documents", [str(count) for count in documents])
    return found


def _tasks_of(run: dict) -> dict:
    return (((run.get("eval") or {}).get("finetuned")) or {}).get("tasks") or {}


def flat_tasks(rows: list[Row], tasks: list[str]) -> list[dict]:
    """Tasks on which every compared row scores the same in every seed (often 0.0): they carry no difference."""
    flat = []
    for task in tasks:
        values = {_tasks_of(run).get(task) for row in rows for run in row.runs}
        if len(values) == 1 and None not in values:
            flat.append({"task": task, "score": values.pop()})
    return flat
