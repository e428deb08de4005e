"""The paper's findings as data. ctxsynth/paper/findings.yaml holds one record per finding (its claim, the contrasts
it rests on, their strata and the direction the paper claims); evaluate() turns a record into estimates, 95%
intervals (ctxsynth/paper/stats.py) and a verdict against the collected rows. The results are plain JSON values:
`ctxsynth report` writes them to metrics/findings.json and renders the report's verdicts and the README's findings
table from that file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from ctxsynth.paper import stats
from ctxsynth.paper.rows import Row, mean_of, rows_of
from ctxsynth.paper.sections import labelled_categories, measured_subtasks, niah_by_length
from ctxsynth.paper.templates import phrase
from ctxsynth.paper.verdicts import compare, flat_tasks, inequalities, shared_tasks, task_weights

NOT_MEASURED = "not measured"
GPU_ONLY = "gpu rows only; not run at this scale"


@lru_cache(maxsize=1)
def records() -> dict:
    """findings.yaml: aliases, group_labels and the findings, in the report's order within each group."""
    text = resources.files("ctxsynth.paper").joinpath("findings.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@dataclass(frozen=True)
class Scope:
    """One plan group's collected rows, and what the findings' strata and phrases read of them."""

    rows: dict[str, Row]
    subtasks: list[str]  # the NIAH subtasks some row scored
    lengths: list[int]  # the NIAH haystack lengths, from the first row's base model
    categories: dict[str, list[str]]  # LongBench category (the paper's label) -> the tasks scored in it

    def row(self, key: str) -> Row | None:
        return self.rows.get(records()["aliases"].get(key, key))

    @property
    def tasks(self) -> set[str]:
        return {task for row in self.rows.values() for task in row.tasks()}


def scope_of(rows: dict[str, Row]) -> Scope:
    first = next(iter(rows.values()), None)
    lengths = sorted(niah_by_length(first.niah("base"), "base")) if first else []
    return Scope(rows, measured_subtasks(rows), lengths, labelled_categories(rows) if rows else {})


@dataclass(frozen=True)
class Contrast:
    label: str
    terms: list[tuple[float, Row, str]]  # (coefficient, row, model variant)
    weights: dict[str, float]  # stratum -> weight


# --- strata and parts the records name, resolved from the collected rows ------------------------------------------


def _niah_at(scope: Scope, index: int) -> list[str]:
    return [f"niah_{s}@{scope.lengths[index]}" for s in scope.subtasks] if scope.lengths else []


# name -> (scope, the part's rows, the finding's rows) -> strata; an empty list makes the part impossible, except for
# the task intersections, whose emptiness the comparison itself reports ("no test document was scored by every ...").
STRATA: dict[str, Callable[[Scope, list[Row], list[Row]], list[str]]] = {
    "shared": lambda scope, part, finding: shared_tasks(*part),
    "finding": lambda scope, part, finding: shared_tasks(*finding),
    "niah": lambda scope, part, finding: [f"niah_{s}" for s in scope.subtasks],
    "niah@longest": lambda scope, part, finding: _niah_at(scope, -1),
    "niah@shortest": lambda scope, part, finding: _niah_at(scope, 0),
}
MAY_BE_EMPTY = {"shared", "finding"}


def strata_weights(spec: dict, scope: Scope, part: list[Row], finding: list[Row]) -> dict[str, float] | None:
    """{stratum: weight} from a part's strata spec (a resolver's weight is shared equally among its strata); None when
    a stratum the part needs was not measured."""
    weights: dict[str, float] = {}
    for key, weight in spec.items():
        if key in STRATA:
            strata = STRATA[key](scope, part, finding)
            if not strata and key not in MAY_BE_EMPTY:
                return None
            weights.update({stratum: weight / len(strata) for stratum in strata})
        elif key in scope.tasks:
            weights[key] = float(weight)
        else:
            return None
    return weights


def each_against_the_first_by_category(scope: Scope, present: list[str]) -> list[Contrast]:
    """F4: every row against the first, one contrast per category of the tasks both scored."""
    first = scope.rows[present[0]]
    found = []
    for name in present[1:]:
        tasks = shared_tasks(first, scope.rows[name])
        for category, members in (scope.categories or {"": tasks}).items():
            members = [task for task in members if task in tasks]
            if members:
                terms = [(1.0, scope.rows[name], "finetuned"), (-1.0, first, "finetuned")]
                label = f"{name} − {first.name}" + (f" ({category})" if category else "")
                found.append(Contrast(label, terms, task_weights(members)))
    return found


EXPANSIONS = {"each_against_the_first_by_category": each_against_the_first_by_category}


def contrast_of(spec: dict, scope: Scope, context: dict) -> Contrast | None:
    """A part or aside of a record as a contrast of collected rows; None when a row or a stratum is missing."""
    terms = []
    for coefficient, key, *variant in spec["terms"]:
        row = scope.row(phrase(str(key), context))
        if row is None:
            return None
        terms.append((float(coefficient), row, variant[0] if variant else "finetuned"))
    finding = [scope.row(key) for key in context["present"]]
    weights = strata_weights(spec.get("strata") or {"shared": 1}, scope, [row for _, row, _ in terms], finding)
    return None if weights is None else Contrast(phrase(spec["label"], context), terms, weights)


def contrasts_of(record: dict, scope: Scope, context: dict) -> list[Contrast] | None:
    """The parts a verdict rests on; None when a part that is not optional cannot be formed."""
    specs = record.get("parts") or []
    if isinstance(specs, dict):
        return EXPANSIONS[specs["expand"]](scope, context["present"])
    found = []
    for spec in specs:
        contrast = contrast_of(spec, scope, context)
        if contrast is None and not spec.get("optional"):
            return None
        found += [contrast] if contrast else []
    return found


# --- evaluation ---------------------------------------------------------------------------------------------------


def judge(estimate: stats.Estimate, record: dict) -> str:
    """The verdict of one part: the interval against the direction the paper claims."""
    if record.get("direction") == "equivalent":
        margin = record["margin"]
        if -margin <= estimate.low and estimate.high <= margin:
            return stats.HOLDS
        return stats.CONTRADICTED if estimate.low > margin or estimate.high < -margin else stats.INCONCLUSIVE
    return estimate.verdict(-1 if record.get("direction") == "negative" else 1)


def judged(contrast: Contrast, record: dict) -> tuple[dict, stats.Estimate | None, str | None]:
    estimate, reason = compare(contrast.terms, contrast.weights)
    part = {
        "label": contrast.label,
        "terms": [[c, row.name, variant] for c, row, variant in contrast.terms],
        "strata": contrast.weights,
        "estimate": estimate.value if estimate else None,
        "low": estimate.low if estimate else None,
        "high": estimate.high if estimate else None,
        "verdict": judge(estimate, record) if estimate else None,
    }
    return part, estimate, reason


def template_context(scope: Scope, present: list[str]) -> dict:
    """What a record's phrases read: the rows present, the group's NIAH layout and categories, the collected means."""

    def row_value(key: str, value: Callable[[Row], float | None]) -> float | None:
        row = scope.row(key)
        return None if row is None else value(row)

    def recall_at(key: str, length: int, variant: str = "finetuned") -> float | None:
        return row_value(key, lambda row: niah_by_length(row.niah(variant), variant).get(length))

    niah = [f"niah_{s}" for s in scope.subtasks]
    return {
        "present": present,
        "row_names": list(scope.rows),
        "subtasks": scope.subtasks,
        "lengths": scope.lengths,
        "shortest": scope.lengths[0] if scope.lengths else None,
        "longest": scope.lengths[-1] if scope.lengths else None,
        "categories": scope.categories,
        "overall": lambda key: row_value(key, Row.score),
        "task_score": lambda key, task, variant="finetuned": row_value(key, lambda row: row.score(variant, task)),
        "mean_recall": lambda key: row_value(key, lambda row: mean_of([row.score("finetuned", t) for t in niah])),
        "recall_at": recall_at,
        "minus": lambda a, b: None if a is None or b is None else a - b,
        "parts": [],
        "asides": [],
    }


def blank(record: dict, context: dict | None) -> dict:
    """Every field of a finding, as for one not measured (context None: the record's strings are not templates)."""

    def text(key: str) -> str | None:
        value = record.get(key)
        return value if value is None or context is None else phrase(value, context)

    return {
        "code": record["code"],
        "group": record["group"],
        "claim": text("claim"),
        "short_claim": text("short"),
        "direction": record.get("direction"),
        "what": record.get("what"),
        "verdict": NOT_MEASURED,
        "reason": None,
        "estimate": None,
        "low": None,
        "high": None,
        "parts": [],
        "asides": [],
        "numbers": None,
        "notes": [],
        "unit": record.get("unit", "test documents"),
        "rows": [],
        "documents": None,
        "task_count": None,
        "unpaired": None,
        "seeds": [],
        "test_documents": None,
        "cells_per_subtask": None,
        "flat_tasks": [],
        "scored_tasks": [],
        "unequal": [],
    }


def requirements_met(record: dict, scope: Scope, present: list[str]) -> bool:
    rows = record.get("rows") or []
    needs = record.get("requires") or {"rows": [] if rows == "all" else rows}
    return (
        all(scope.row(key) is not None for key in needs.get("rows", []))
        and len(present) >= needs.get("present", 0)
        and len(scope.lengths) >= needs.get("lengths", 0)
        and all(subtask in scope.subtasks for subtask in needs.get("subtasks", []))
    )


def evidence(estimate: stats.Estimate) -> dict:
    """How many paired documents, tasks and seeds an interval rests on."""
    return {
        "documents": estimate.documents,
        "task_count": len({stratum.split("@")[0] for stratum, _ in estimate.strata}),
        "seeds": [[name, count] for name, count in estimate.seeds],
        "unpaired": estimate.unpaired,
    }


def collected_size(rows: list[Row]) -> dict:
    """What the rows were scored on, for a finding without an interval."""
    documents = [row.test_documents() for row in rows if row.test_documents()]
    cells = None
    if not documents and any(row.niah("finetuned") for row in rows):
        cells = min(row.cells_per_subtask() for row in rows if row.niah("finetuned"))
    return {
        "test_documents": min(documents) if documents else None,
        "cells_per_subtask": cells,
        "seeds": [[row.name, row.seeds] for row in rows],
    }


def asides_of(record: dict, scope: Scope, context: dict) -> list[dict]:
    """The contrasts shown beside a verdict; one whose rows were not all collected is left out."""
    shown = []
    for spec in record.get("asides") or []:
        collected = all(scope.row(key) is not None for key in spec.get("requires", []))
        aside = contrast_of(spec, scope, context) if collected else None
        if aside is not None:
            shown.append(judged(aside, record)[0])
    return shown


def evaluate(record: dict, scope: Scope) -> dict:
    """A record against one group's collected rows: its parts' estimates and intervals, the verdict (every part
    combined: stats.combine), the evidence, and what else differs between the compared rows."""
    rows_spec = record.get("rows") or []
    present = list(scope.rows) if rows_spec == "all" else [key for key in rows_spec if scope.row(key) is not None]
    context = template_context(scope, present)
    contrasts = contrasts_of(record, scope, context) if requirements_met(record, scope, present) else None
    result = blank(record, context)
    if not contrasts:
        return {**result, "reason": phrase(record.get("missing", "no part of it can be compared"), context)}
    parts = [judged(contrast, record) for contrast in contrasts]
    asides = asides_of(record, scope, context)
    context.update(parts=[part for part, _, _ in parts], asides=asides)
    rows = [scope.row(key) for key in present]
    reason = next((why for _, _, why in parts if why), None)
    if reason is None:
        first = parts[0][0]
        verdict = stats.combine([part["verdict"] for part, _, _ in parts])
        result.update(verdict=verdict, estimate=first["estimate"], low=first["low"], high=first["high"])
        result.update(evidence(parts[0][1]))
    else:
        result.update(verdict=stats.INCONCLUSIVE, reason=reason, **collected_size(rows))
    scored = shared_tasks(*rows) if record.get("flat_tasks") else []
    notes = [phrase(note, context) for note in record.get("notes") or []]
    result.update(
        parts=context["parts"],
        asides=asides,
        numbers=phrase(record["numbers"], context),
        notes=[note for note in notes if note],
        rows=[row.name for row in rows],
        flat_tasks=flat_tasks(rows, scored),
        scored_tasks=scored,
        unequal=inequalities(rows),
    )
    return result


def group_findings(results: dict, group: str, meta: dict) -> list[dict]:
    """The findings of one plan group: evaluated, or not measured (a gpu-only group, or one not run yet)."""
    listed = [record for record in records()["findings"] if record["group"] == group]
    if meta.get("cpu_rows") == 0:
        code = (meta.get("finding") or "").split(",")[0].strip() or group
        unmeasured = listed or [{"code": f"{code} ({group})", "group": group}]
        context = template_context(scope_of({}), [])
        return [{**blank(record, context), "reason": GPU_ONLY} for record in unmeasured]
    rows = rows_of(results, group)
    if not rows:
        what = records()["group_labels"].get(group, group)
        code = (meta.get("finding") or group).replace(", ", " / ")
        record = {"code": code, "group": group, "claim": meta.get("title"), "what": what}
        return [{**blank(record, None), "reason": f"run `make paper-{group}`"}]
    scope = scope_of(rows)
    return [evaluate(record, scope) for record in listed]


def evaluate_all(results: dict) -> list[dict]:
    """Every finding, groups in the plan's order (the results file is written with sorted keys)."""
    groups = sorted(results["groups"].items(), key=lambda item: item[1].get("order", 0))
    return [finding for group, meta in groups for finding in group_findings(results, group, meta)]
