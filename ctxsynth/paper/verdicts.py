"""Comparisons between rows as verdicts: a 95% interval from stats.py, the words it allows (holds, contradicted,
inconclusive), and what else differs between the compared rows."""

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

# --- formatting --------------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def interval(estimate: stats.Estimate | None) -> str:
    return "–" if estimate is None else f"[{estimate.low:.2f}, {estimate.high:.2f}]"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def bold(word: str) -> str:
    return f"**{word}**"


def not_measured(finding: str, why: str, what: str = "") -> str:
    return f"- **{finding}**{f' ({what})' if what else ''}: **not measured** ({why})."


# --- comparisons -------------------------------------------------------------------------------------------------


def compare(
    terms: list[tuple[float, Row, str]], weights: dict[str, float], by_length: bool = False
) -> tuple[stats.Estimate | None, str | None]:
    """A contrast of rows (coefficient, row, model variant) over strata; (estimate, None) or (None, why not)."""
    missing = list(dict.fromkeys(row.name for _, row, _ in terms if not row.has_documents))
    if missing:
        rows = list(dict.fromkeys(row.name for _, row, _ in terms))
        return None, NO_DOCUMENTS if len(missing) == len(rows) else (
            f"no per-document scores collected for {', '.join(missing)}; rerun the group"
        )
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


def evidence(estimate: stats.Estimate, unit: str = "test documents") -> str:
    """How many paired documents and seeds an interval rests on."""
    tasks = {stratum.split("@")[0] for stratum, _ in estimate.strata}
    seeds = sorted({count for _, count in estimate.seeds})
    seeds_text = (
        f"{seeds[0]} seed{'s' if seeds[0] > 1 else ''} per row"
        if len(seeds) == 1
        else "seeds " + ", ".join(f"{name.split('/')[0]} {count}" for name, count in estimate.seeds)
    )
    text = f"{estimate.documents} paired {unit} in {len(tasks)} task{'s' if len(tasks) > 1 else ''}, {seeds_text}"
    if estimate.unpaired:
        text += f"; {estimate.unpaired} scored by only some rows left out"
    return text


def inequalities(rows: list[Row]) -> list[str]:
    """What differs between compared rows besides the variable under test: training set sizes, optimizer steps,
    seeds, task coverage and test set sizes (from what collect recorded)."""
    if len(rows) < 2:
        return []
    notes = []

    def differs(values: list[str | None]) -> bool:
        return None not in values and len(set(values)) > 1

    def listed(values: list[str]) -> str:
        if len(rows) == 2:
            return " vs ".join(values)
        return ", ".join(f"{row.name} {value}" for row, value in zip(rows, values))

    samples = [row.field("mix", "samples") for row in rows]
    for section, key, words in TRAINING_FIELDS:
        values = [row.field(section, key) for row in rows]
        if key == "samples_used" and values == samples:
            continue  # the same numbers as the mix's: said once
        if differs(values):
            notes.append(f"{words} {listed(values)}")
    seeds = [str(row.seeds) for row in rows]
    if differs(seeds):
        notes.append(f"seeds {listed(seeds)}")
    coverage = [", ".join(row.tasks()) or "none" for row in rows]
    if differs(coverage):
        notes.append(f"tasks scored {listed(coverage)}")
    documents = [str(row.test_documents()) for row in rows if row.test_documents()]
    if len(documents) == len(rows) and differs(documents):
        notes.append(f"test documents {listed(documents)}")
    return notes


def _tasks_of(run: dict) -> dict:
    return (((run.get("eval") or {}).get("finetuned")) or {}).get("tasks") or {}


def flat_tasks(rows: list[Row], tasks: list[str]) -> list[str]:
    """Tasks on which every compared row scores the same in every seed (often 0.0): they carry no difference."""
    flat = []
    for task in tasks:
        values = {_tasks_of(run).get(task) for row in rows for run in row.runs}
        if len(values) == 1 and None not in values:
            flat.append(f"{task} is {fmt(values.pop())} for every compared row")
    return flat


def finding(
    code: str,
    claim: str,
    numbers: str,
    parts: list[tuple[str, stats.Estimate | None]],
    reason: str | None,
    rows: list[Row],
    unit: str = "test documents",
    tasks: list[str] | None = None,
    notes: list[str] | None = None,
    judge=stats.Estimate.verdict,
) -> str:
    """One verdict line: the claim, our numbers, each contrast with its 95% interval, the evidence behind it, the
    three-way verdict (judge: estimate -> word, every part combined), and what else differs between the rows."""
    estimates = [estimate for _, estimate in parts]
    if reason is None and estimates and all(estimates):
        word = stats.combine([judge(estimate) for estimate in estimates])
        shown = "; ".join(
            f"{label}{' ' if label else ''}{signed(e.value)}, 95% interval [{e.low:+.2f}, {e.high:+.2f}]"
            for label, e in parts
        )
        line = f"- **{code}** {claim}: {numbers}; {shown} ({evidence(estimates[0], unit)}) → {bold(word)}"
    else:
        documents = [row.test_documents() for row in rows if row.test_documents()]
        size = f"{min(documents)} {unit}, " if documents else ""
        if not documents and any(row.niah("finetuned") for row in rows):
            cells = min(row.cells_per_subtask() for row in rows if row.niah("finetuned"))
            size = f"{cells} heatmap cells per subtask, samples per cell not collected, "
        seeds = sorted({row.seeds for row in rows})
        line = (
            f"- **{code}** {claim}: {numbers} ({size}{'/'.join(map(str, seeds))} seed{'s' if seeds[-1] > 1 else ''} "
            f"per row) → {bold(stats.INCONCLUSIVE)} ({reason or NO_DOCUMENTS})"
        )
    extra = list(notes or [])
    if tasks:
        flat = flat_tasks(rows, tasks)
        if flat and len(flat) < len(tasks):
            extra.append("; ".join(flat) + ": the comparison rests on the other tasks")
        elif flat:
            extra.append("; ".join(flat) + ": the rows do not differ on any task")
    unequal = inequalities(rows)
    if unequal:
        extra.append("Unequal rows: " + "; ".join(unequal))
    return line + "".join(f". {note}" for note in extra) + ("." if extra else "")
