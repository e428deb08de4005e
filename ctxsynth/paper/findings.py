"""The paper's findings (F1 pilot, F2 and F5 main comparison, F3 contexts, F4 generator) as verdict lines."""

from __future__ import annotations

from ctxsynth.paper import stats
from ctxsynth.paper.rows import Row, mean_of
from ctxsynth.paper.verdicts import (
    compare,
    finding,
    fmt,
    not_measured,
    shared_tasks,
    signed,
    task_weights,
)

BASE = "base model (no fine-tuning)"


def niah_by_length(cells: list[dict] | None, model: str) -> dict[int, float]:
    lengths: dict[int, list[float]] = {}
    for cell in cells or []:
        if cell["model"] == model:
            lengths.setdefault(int(cell["length"]), []).append(float(cell["recall"]))
    return {length: mean_of(values) for length, values in sorted(lengths.items())}


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
        return mean_of([row.score("finetuned", task) for task in niah])

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


def generator_finding(rows: dict[str, Row], categories: dict[str, list[str]] | None = None) -> str:
    """F4 is an equivalence claim per LongBench category (within about one point): each generator against the first,
    one contrast per category (categories: category -> its tasks; None: the overall score). Holds when every
    interval lies inside [-1, 1], contradicted when one lies wholly outside it, inconclusive otherwise."""
    if len(rows) < 2:
        return not_measured(
            "F4",
            "one generator at this scale: the package registries carry one instruction model, SmolLM2-135M-Instruct "
            "(a Q4_1 GGUF), and the same weights run another way (llama.cpp, nf4) would compare arithmetic, not "
            "generators; set `synthesize.generator` to a second local model, or run the gpu rows",
        )
    names = list(rows)
    first = rows[names[0]]
    parts, reason = [], None
    for name in names[1:]:
        tasks = shared_tasks(first, rows[name])
        groups = {c: [t for t in ts if t in tasks] for c, ts in (categories or {"": tasks}).items()}
        for category, members in groups.items():
            if not members:
                continue
            terms = [(1.0, rows[name], "finetuned"), (-1.0, first, "finetuned")]
            estimate, why = compare(terms, task_weights(members))
            reason = reason or why
            parts.append((f"{name} − {first.name}" + (f" ({category})" if category else ""), estimate))

    def within_one_point(estimate: stats.Estimate) -> str:
        if -1.0 <= estimate.low and estimate.high <= 1.0:
            return stats.HOLDS
        return stats.CONTRADICTED if estimate.low > 1.0 or estimate.high < -1.0 else stats.INCONCLUSIVE

    numbers = " / ".join(f"{n} {fmt(rows[n].score())}" for n in names)
    claim = "the generator matters little (every difference within ±1 point" + (
        ", per category)" if categories else ")"
    )
    return finding("F4", claim, numbers, parts, reason, list(rows.values()), judge=within_one_point)
