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
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ctxsynth.core.io import write_json
from ctxsynth.paper import figures, stats
from ctxsynth.paper.experiments import run_history

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
}
COHERENCE = (
    ("instruction synthesis", "instruction-synthesis", "instruction-synthesis-no-context"),
    ("context synthesis", "context-synthesis", "context-free"),
    ("human context", "human-context", "context-free"),
)
BASE = "base model (no fine-tuning)"
NO_DOCUMENTS = "no per-document scores collected; rerun the group"
# What collect records about a row's training, compared across the rows of a finding: (section, key, words).
TRAINING_FIELDS = (
    ("mix", "samples", "training samples"),
    ("mix", "long_samples", "long samples"),
    ("train", "samples_used", "samples trained on"),
    ("train", "steps", "optimizer steps"),
)


@lru_cache(maxsize=1)
def paper_reference() -> dict:
    text = resources.files("ctxsynth.paper").joinpath("paper_reference.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


# --- rows: one per plan row, its experiments one per training seed ---------------------------------------------


def niah_cell(document: str) -> tuple[int, float] | None:
    """(haystack length, needle depth) of a NIAH test document, from its id `<task>:<length>:<depth>:<index>`
    (ctxsynth/prepare/benchmark.py); None for other documents."""
    parts = str(document).split(":")
    if len(parts) != 4 or not parts[0].startswith("niah_"):
        return None
    try:
        return int(parts[1]), float(parts[2])
    except ValueError:
        return None


def _mean(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def per_document(run: dict) -> dict | None:
    """An experiment's per-document scores: as collected, or, for a NIAH-only row collected without them, its
    heatmap cells when each cell is one test sample (the collected sample count per subtask equals the number of
    cells), under the benchmark's document ids; otherwise None."""
    if run.get("per_document"):
        return run["per_document"]
    counts = run.get("test_documents") or {}
    tasks = set((((run.get("eval") or {}).get("finetuned")) or {}).get("tasks") or {})
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for cell in run.get("niah") or []:
        task = f"niah_{cell['subtask']}"
        document = f"{task}:{int(cell['length'])}:{float(cell['depth'])}:0"
        scores.setdefault(cell["model"], {}).setdefault(task, {})[document] = float(cell["recall"])
    finetuned = scores.get("finetuned") or {}
    if not finetuned or set(finetuned) != tasks or any(counts.get(t) != len(d) for t, d in finetuned.items()):
        return None
    return scores


class Row:
    """A row of the plan: its collected experiments, one per training seed (one when the row has no seeds)."""

    def __init__(self, name: str, runs: list[dict]):
        self.name = name
        self.runs = sorted(runs, key=lambda run: (run.get("seed") is not None, run.get("seed") or 0))

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def score(self, model: str = "finetuned", task: str | None = None) -> float | None:
        """The mean over seeds of the collected score (overall, or one task's)."""
        values = []
        for run in self.runs:
            block = (run.get("eval") or {}).get(model) or {}
            values.append(block.get("overall") if task is None else (block.get("tasks") or {}).get(task))
        return None if any(v is None for v in values) else _mean(values)

    def tasks(self, model: str = "finetuned") -> list[str]:
        return sorted({t for run in self.runs for t in (((run.get("eval") or {}).get(model) or {}).get("tasks") or {})})

    def seed_range(self, model: str = "finetuned") -> tuple[float, float] | None:
        values = [((run.get("eval") or {}).get(model) or {}).get("overall") for run in self.runs]
        return None if None in values or len(values) < 2 else (min(values), max(values))

    @property
    def has_documents(self) -> bool:
        return all(per_document(run) for run in self.runs)

    def documents(self, model: str = "finetuned", by_length: bool = False) -> list[stats.Run] | None:
        """Per seed: {task: {document: score}} (by_length: NIAH strata `<task>@<length>`); None without them."""
        if not self.has_documents:
            return None
        runs = []
        for run in self.runs:
            tasks = (per_document(run).get(model)) or {}
            if not by_length:
                runs.append(tasks)
                continue
            split: dict[str, dict[str, float]] = {}
            for task, documents in tasks.items():
                for document, value in documents.items():
                    cell = niah_cell(document)
                    if cell is not None:
                        split.setdefault(f"{task}@{cell[0]}", {})[document] = value
            runs.append(split)
        return runs

    def test_documents(self) -> int | None:
        counts = self.runs[0].get("test_documents") or {}
        return sum(counts.values()) or None

    def niah(self, model: str) -> list[dict]:
        """The NIAH heatmap cells, recall averaged over seeds."""
        cells: dict[tuple, list[float]] = {}
        for run in self.runs:
            for cell in run.get("niah") or []:
                if cell["model"] == model:
                    key = (cell["subtask"], cell["length"], cell["depth"])
                    cells.setdefault(key, []).append(float(cell["recall"]))
        return [
            {"model": model, "subtask": s, "length": n, "depth": d, "recall": _mean(v)}
            for (s, n, d), v in sorted(cells.items())
        ]

    def cells_per_subtask(self, model: str = "finetuned") -> int:
        cells = self.niah(model)
        return len(cells) // max(1, len({cell["subtask"] for cell in cells}))

    def cell_counts(self, model: str) -> dict[tuple[str, int, float], int] | None:
        """Test samples per NIAH heatmap cell (per seed), from the per-document scores; None without them."""
        if not self.has_documents:
            return None
        counts: dict[tuple[str, int, float], int] = {}
        for task, documents in ((per_document(self.runs[0]).get(model)) or {}).items():
            for document in documents:
                cell = niah_cell(document)
                if cell is not None:
                    key = (task[len("niah_") :], cell[0], cell[1])
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def field(self, section: str, key: str) -> str | None:
        values = sorted({(run.get(section) or {}).get(key) for run in self.runs}, key=str)
        if None in values:
            return None
        return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def rows_of(results: dict, group: str, scale: str = "cpu") -> dict[str, Row]:
    """Row name -> Row (its experiments across seeds), in the plan's order."""
    found = [e for e in results["experiments"].values() if e["group"] == group and e["scale"] == scale and e["eval"]]
    grouped: dict[str, list[dict]] = {}
    for experiment in sorted(found, key=lambda e: e.get("order", 0)):
        grouped.setdefault(experiment["row"], []).append(experiment)
    return {name: Row(name, runs) for name, runs in grouped.items()}


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


# --- F1: the pilot ---------------------------------------------------------------------------------------------


def niah_by_length(cells: list[dict] | None, model: str) -> dict[int, float]:
    lengths: dict[int, list[float]] = {}
    for cell in cells or []:
        if cell["model"] == model:
            lengths.setdefault(int(cell["length"]), []).append(float(cell["recall"]))
    return {length: _mean(values) for length, values in sorted(lengths.items())}


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
            + [fmt(_mean(per_task)), interval(estimate)]
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
    base_mean = _mean([first.score("base", f"niah_{s}") for s in subtasks])
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


PILOT_ROWS = (
    ("SFT1", "sft1-general"),
    ("SFT2", "sft2-needle-only"),
    ("SFT3", "sft3-short-haystack"),
    ("SFT4", "sft4-long-haystack"),
)


def pilot_findings(rows: dict[str, Row], by_length: dict, lengths: list[int], subtasks: list[str]) -> list[str]:
    """F1a-e. Strata are NIAH subtasks, or subtasks at one haystack length (`<task>@<length>`) for claims about a
    length; the unit is one needle sample (one test document)."""
    unit = "needle samples"
    niah = [f"niah_{s}" for s in subtasks]
    sft = {key: rows.get(name) for key, name in PILOT_ROWS}

    def mean_recall(row: Row) -> float | None:
        return _mean([row.score("finetuned", task) for task in niah])

    def at(length: int, sign: float = 1.0) -> dict[str, float]:
        return {f"{task}@{length}": sign / len(niah) for task in niah}

    def finetuned(*pairs: tuple[float, Row]) -> list[tuple[float, Row, str]]:
        return [(c, row, "finetuned") for c, row in pairs]

    out = []
    shortest, longest = (lengths[0], lengths[-1]) if lengths else (None, None)
    s1 = sft["SFT1"]
    if s1 is None or len(lengths) < 2:
        out.append(not_measured("F1a", "needs sft1-general and two haystack lengths"))
    else:
        base, general = by_length.get(BASE, {}), by_length.get(s1.name, {})
        gap = {n: None if None in (base.get(n), general.get(n)) else base[n] - general[n] for n in (shortest, longest)}
        terms = [(1.0, s1, "base"), (-1.0, s1, "finetuned")]
        trend, reason = compare(terms, {**at(longest), **at(shortest, -1.0)}, by_length=True)
        at_longest, _ = compare(terms, at(longest), by_length=True)
        notes = (
            [
                f"At {longest} words alone the gap is {signed(at_longest.value)}, 95% interval "
                f"[{at_longest.low:+.2f}, {at_longest.high:+.2f}]"
            ]
            if at_longest
            else []
        )
        out.append(
            finding(
                "F1a",
                "general data alone falls further below the base model as haystacks grow (the gap widens)",
                f"base − SFT1 is {signed(gap[shortest])} at {shortest} words, "
                f"{signed(gap[longest])} at {longest} words",
                [(f"change of the gap from {shortest} to {longest} words", trend)],
                reason,
                [s1],
                unit,
                notes=notes,
            )
        )
    for code, claim, better, worse, length in (
        ("F1b", "needles without surrounding text do worse than needles in a short haystack", "SFT3", "SFT2", None),
        ("F1c", "a short training haystack generalizes to longer tests", "SFT3", "SFT1", longest),
    ):
        a, b = sft[better], sft[worse]
        if a is None or b is None or not niah:
            out.append(not_measured(code, f"needs {better} and {worse}"))
            continue
        if length is None:
            weights = task_weights(niah)
            numbers = f"{better} {fmt(mean_recall(a))} vs {worse} {fmt(mean_recall(b))} (mean recall)"
        else:
            weights = at(length)
            numbers = (
                f"at {length} words {better} {fmt(by_length.get(a.name, {}).get(length))} vs {worse} "
                f"{fmt(by_length.get(b.name, {}).get(length))} (the paper: above 90% at 32K)"
            )
        estimate, reason = compare(finetuned((1.0, a), (-1.0, b)), weights, by_length=length is not None)
        out.append(finding(code, claim, numbers, [(f"{better} − {worse}", estimate)], reason, [a, b], unit))
    s3, s4 = sft["SFT3"], sft["SFT4"]
    others = [(key, row) for key, row in sft.items() if row is not None and key != "SFT4"]
    if s4 is None or not others:
        out.append(not_measured("F1d", "needs SFT4 and another pilot row"))
    else:
        compared = [
            (f"SFT4 − {key}", compare(finetuned((1.0, s4), (-1.0, row)), task_weights(niah))) for key, row in others
        ]
        numbers = f"SFT4 {fmt(mean_recall(s4))} vs " + ", ".join(
            f"{key} {fmt(mean_recall(row))}" for key, row in others
        )
        parts = [(label, estimate) for label, (estimate, _) in compared]
        reason = next((why for _, (_, why) in compared if why), None)
        rows_compared = [s4] + [row for _, row in others]
        out.append(
            finding(
                "F1d", "the long training haystack is best (mean recall)", numbers, parts, reason, rows_compared, unit
            )
        )
    if s3 is None or s4 is None or "multivalue" not in subtasks or len(subtasks) < 2:
        out.append(not_measured("F1e", "needs SFT3, SFT4 and the multivalue subtask"))
    else:
        gains = {
            s: (s4.score("finetuned", f"niah_{s}") or 0.0) - (s3.score("finetuned", f"niah_{s}") or 0.0)
            for s in subtasks
        }
        compared = [
            (
                f"multivalue gain − {other} gain",
                compare(finetuned((1.0, s4), (-1.0, s3)), {"niah_multivalue": 1.0, f"niah_{other}": -1.0}),
            )
            for other in subtasks
            if other != "multivalue"
        ]
        parts = [(label, estimate) for label, (estimate, _) in compared]
        reason = next((why for _, (_, why) in compared if why), None)
        numbers = "gains of SFT4 over SFT3: " + ", ".join(f"{s} {g:+.2f}" for s, g in gains.items())
        out.append(
            finding("F1e", "SFT4's largest gain over SFT3 is on multi-value", numbers, parts, reason, [s4, s3], unit)
        )
    return out


# --- F2, F5: the main comparison -------------------------------------------------------------------------------


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
        body.append(
            [label]
            + [fmt(row.score(model, t)) for t in tasks]
            + [fmt(row.score(model)), interval(estimate)]
            + ([f"{row.seeds} ({fmt(spread[0])}–{fmt(spread[1])})" if spread else str(row.seeds)] if seeded else [])
            + ([fmt(v) for v in paper] if paper else ["–"] * len(reference["columns"]))
        )
    header = (
        ["training data"]
        + tasks
        + ["ours: overall", "ours: 95% interval"]
        + (["seeds (range)"] if seeded else [])
        + [f"paper: {c}" for c in reference["columns"]]
    )
    text = [table(header, body), ""]
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


def _gap(with_context: Row, without: Row) -> float | None:
    a, b = with_context.score(), without.score()
    return None if a is None or b is None else a - b


def main_findings(rows: dict[str, Row]) -> list[str]:
    cs, is_, general, human = (
        rows.get(r) for r in ("context-synthesis", "instruction-synthesis", "general-only", "human-context")
    )
    out = []
    claims = (
        ("F2a", "context synthesis beats instruction synthesis", cs, is_, 1.0),
        ("F2b", "context synthesis beats general data alone", cs, general, 1.0),
        ("F2c", "context synthesis approaches human contexts (at least 90% of human's score)", cs, human, 0.9),
    )
    for code, claim, a, b, scale in claims:
        if a is None or b is None:
            out.append(not_measured(code, "its rows have not been collected"))
            continue
        tasks = shared_tasks(a, b)
        estimate, reason = compare([(1.0, a, "finetuned"), (-scale, b, "finetuned")], task_weights(tasks))
        label = f"{a.name} − {scale:g} × {b.name}" if scale != 1.0 else "difference"
        out.append(
            finding(
                code, claim, f"{fmt(a.score())} vs {fmt(b.score())}", [(label, estimate)], reason, [a, b], tasks=tasks
            )
        )
    cf, isnc = rows.get("context-free"), rows.get("instruction-synthesis-no-context")
    for code, claim, with_context, without in (
        ("F5a", "the context-synthesis gap (with minus without context) is positive", cs, cf),
        ("F5b", "the human-context gap is positive", human, cf),
    ):
        if with_context is None or without is None:
            out.append(not_measured(code, "its rows have not been collected"))
            continue
        tasks = shared_tasks(with_context, without)
        estimate, reason = compare(
            [(1.0, with_context, "finetuned"), (-1.0, without, "finetuned")], task_weights(tasks)
        )
        numbers = f"{fmt(with_context.score())} with vs {fmt(without.score())} without"
        out.append(finding(code, claim, numbers, [("gap", estimate)], reason, [with_context, without], tasks=tasks))
    if None in (is_, isnc, cf) or (cs is None and human is None):
        out.append(not_measured("F5c", "its rows have not been collected"))
    else:
        parts, reasons, gaps = [], [], [f"instruction synthesis {signed(_gap(is_, isnc))}"]
        with_context = [(name, row) for name, row in (("context synthesis", cs), ("human context", human)) if row]
        for name, row in with_context:
            tasks = shared_tasks(row, cf, is_, isnc)
            estimate, reason = compare(
                [(1.0, row, "finetuned"), (-1.0, cf, "finetuned"), (-1.0, is_, "finetuned"), (1.0, isnc, "finetuned")],
                task_weights(tasks),
            )
            parts.append((f"{name} gap − instruction-synthesis gap", estimate))
            reasons.append(reason)
            gaps.append(f"{name} {signed(_gap(row, cf))}")
        is_gap, _ = compare([(1.0, is_, "finetuned"), (-1.0, isnc, "finetuned")], task_weights(shared_tasks(is_, isnc)))
        notes = (
            [
                f"The instruction-synthesis gap itself (the paper: about 0) is {signed(is_gap.value)}, 95% interval "
                f"[{is_gap.low:+.2f}, {is_gap.high:+.2f}]"
            ]
            if is_gap
            else []
        )
        numbers = "gaps " + ", ".join(gaps)
        out.append(
            finding(
                "F5c",
                "instructions written from a context depend on it less than seeds do (the "
                "instruction-synthesis gap is below the context-synthesis and human gaps)",
                numbers,
                parts,
                next((r for r in reasons if r), None),
                [row for _, row in with_context] + [is_, isnc, cf],
                notes=notes,
            )
        )
    return out


# --- F3, F4 ----------------------------------------------------------------------------------------------------


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
    text = [table(header, body), ""] + ([f"![per-task scores](figures/{path.name})"] if path else [])
    findings = []
    if group == "contexts":
        findings.append(contexts_finding(rows))
    if group == "generator":
        findings.append(generator_finding(rows))
    return "\n".join(text), findings


def contexts_finding(rows: dict[str, Row]) -> str:
    """F3 rests on n10 − n1 (more contexts help); the steps n1 → n5 → n10 are shown beside it, so a tie in a step
    reads as the inconclusive step it is, never as support."""
    ns = [rows[r] for r in ("n1", "n5", "n10") if r in rows]
    if len(ns) < 2:
        return not_measured("F3", "needs at least n1 and n10")
    low, high = ns[0], ns[-1]
    tasks = shared_tasks(*ns)

    def diff(a: Row, b: Row):
        return compare([(1.0, a, "finetuned"), (-1.0, b, "finetuned")], task_weights(tasks))

    estimate, reason = diff(high, low)
    notes = []
    if len(ns) == 3:
        steps = []
        for a, b in ((ns[1], ns[0]), (ns[2], ns[1])):
            step, _ = diff(a, b)
            value = None if None in (a.score(), b.score()) else a.score() - b.score()
            steps.append(
                f"{b.name} → {a.name} {signed(value)}"
                + (f" [{step.low:+.2f}, {step.high:+.2f}], {step.verdict()}" if step else "")
                + (" (a tie)" if value is not None and abs(value) < 0.005 else "")
            )
        notes.append("Steps: " + "; ".join(steps))
    numbers = "n = " + " / ".join(r.name[1:] for r in ns) + " gives " + " / ".join(fmt(r.score()) for r in ns)
    return finding(
        "F3",
        "more contexts help a little",
        numbers,
        [(f"{high.name} − {low.name}", estimate)],
        reason,
        ns,
        tasks=tasks,
        notes=notes,
    )


def generator_finding(rows: dict[str, Row]) -> str:
    """F4 is an equivalence claim (within about one point): holds when every difference's interval lies inside
    [-1, 1], contradicted when one lies wholly outside it, inconclusive otherwise."""
    if len(rows) < 2:
        return not_measured(
            "F4",
            "one generator at this scale: offline only SmolLM2 is available, so there is nothing to compare; "
            "set `synthesize.generator` to a second local model to measure it",
        )
    names = list(rows)
    first = rows[names[0]]
    parts, reason = [], None
    for name in names[1:]:
        tasks = shared_tasks(first, rows[name])
        estimate, why = compare([(1.0, rows[name], "finetuned"), (-1.0, first, "finetuned")], task_weights(tasks))
        reason = reason or why
        parts.append((f"{name} − {first.name}", estimate))

    def within_one_point(estimate: stats.Estimate) -> str:
        if -1.0 <= estimate.low and estimate.high <= 1.0:
            return stats.HOLDS
        return stats.CONTRADICTED if estimate.low > 1.0 or estimate.high < -1.0 else stats.INCONCLUSIVE

    numbers = " / ".join(f"{n} {fmt(rows[n].score())}" for n in names)
    claim = "the generator matters little (every difference within ±1 point)"
    return finding("F4", claim, numbers, parts, reason, list(rows.values()), judge=within_one_point)


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
    sections = [
        ("pilot", pilot_section),
        ("main", main_section),
        ("contexts", lambda r, d: simple_section(r, "contexts", d)),
        ("generator", lambda r, d: simple_section(r, "generator", d)),
    ]
    verdicts = []
    for group, build in sections:
        if group not in results["groups"]:
            continue
        meta = results["groups"][group]
        text, findings = build(results, figures_dir)
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
