"""metrics/report.md: every finding of the paper, our numbers beside the paper's, from the DVC experiments.

    ctxsynth report                  # collect from `dvc exp show --json`, then render
    ctxsynth report --from-results   # render from the committed metrics/results.json only

Verdicts are computed from the collected numbers each time; nothing here knows what the result "should" be.
"""

from __future__ import annotations

import argparse
import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from ctxsynth.core.io import write_json
from ctxsynth.paper import figures
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


@lru_cache(maxsize=1)
def paper_reference() -> dict:
    text = resources.files("ctxsynth.paper").joinpath("paper_reference.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def rows_of(results: dict, group: str, scale: str = "cpu") -> dict[str, dict]:
    """Row name -> experiment, in the plan's order."""
    found = [e for e in results["experiments"].values() if e["group"] == group and e["scale"] == scale and e["eval"]]
    return {e["row"]: e for e in sorted(found, key=lambda e: e.get("order", 0))}


def score(experiment: dict | None, model: str = "finetuned", task: str | None = None) -> float | None:
    block = ((experiment or {}).get("eval") or {}).get(model) or {}
    return block.get("overall") if task is None else (block.get("tasks") or {}).get(task)


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def verdict(holds: bool | None) -> str:
    return {True: "**holds**", False: "**does not hold**", None: "**not measured**"}[holds]


def document_weight(*experiments: dict | None) -> float | None:
    """How far one test document can move an overall score (F1 in [0, 100], mean of the tasks): 100 / (tasks x
    documents per task), for the smallest test set among the experiments; None where the sizes were not collected."""
    sizes = [sum((e or {}).get("test_documents", {}).values()) for e in experiments]
    return 100 / min(sizes) if sizes and min(sizes) else None


def resolution(difference: float | None, weight: float | None) -> str:
    """A plain-words caveat when a difference is smaller than one test document can make it."""
    if difference is None or weight is None or abs(difference) >= weight:
        return ""
    return (
        f" (a margin of {abs(difference):.2f} points, less than the {weight:.2f} that one test document can "
        "move the overall score: within this test set's resolution)"
    )


def _mean(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


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
        return "", ["- **F1 (pilot)**: " + verdict(None) + " (run `make paper-pilot`)."]
    subtasks = [
        s for s in figures.SUBTASK_ORDER if any(score(e, "finetuned", f"niah_{s}") is not None for e in rows.values())
    ]
    first = next(iter(rows.values()))
    models = [("base model (no fine-tuning)", first, "base")] + [(name, e, "finetuned") for name, e in rows.items()]
    lengths = sorted(niah_by_length(first["niah"], "base"))
    body, by_length = [], {}
    for label, experiment, model in models:
        per_length = niah_by_length(experiment["niah"], model)
        by_length[label] = per_length
        per_task = [score(experiment, model, f"niah_{s}") for s in subtasks]
        body.append(
            [label] + [fmt(v) for v in per_task] + [fmt(_mean(per_task))] + [fmt(per_length.get(n)) for n in lengths]
        )
    text = [table(["training data"] + subtasks + ["mean"] + [f"{n} words" for n in lengths], body), ""]
    base_mean = _mean([score(first, "base", f"niah_{s}") for s in subtasks])
    if base_mean is not None and base_mean >= 90:
        text += [
            f"The base model already retrieves at these lengths (mean recall {base_mean:.2f}), so here a "
            "training set can mostly preserve retrieval, not teach it (the paper tested haystacks up to 32K tokens).",
            "",
        ]
    for label, experiment, model in models:
        slug = "base" if model == "base" else label
        path = figures.niah_heatmaps(
            experiment["niah"] or [], model, f"NIAH recall, {label}", figures_dir / f"niah_{slug}.png"
        )
        if path:
            text.append(f"![NIAH heatmap, {label}](figures/{path.name})")
    return "\n".join(text), pilot_findings(rows, by_length, lengths, subtasks)


def pilot_findings(rows: dict, by_length: dict, lengths: list[int], subtasks: list[str]) -> list[str]:
    def mean_of(row):
        return _mean([score(rows.get(row), "finetuned", f"niah_{s}") for s in subtasks]) if row in rows else None

    longest = lengths[-1] if lengths else None
    at_longest = {label: values.get(longest) for label, values in by_length.items()}
    base_long = at_longest.get("base model (no fine-tuning)")
    sft = {
        row: mean_of(row) for row in ("sft1-general", "sft2-needle-only", "sft3-short-haystack", "sft4-long-haystack")
    }
    out = []
    s1 = at_longest.get("sft1-general")
    out.append(
        f"- **F1a** general data alone falls below the base model on long haystacks: at {longest} words "
        f"SFT1 {fmt(s1)} vs base {fmt(base_long)} → "
        + verdict(None if s1 is None or base_long is None else s1 < base_long)
    )
    s2, s3 = sft["sft2-needle-only"], sft["sft3-short-haystack"]
    out.append(
        f"- **F1b** needles without surrounding text do worse than needles in a short haystack: "
        f"SFT2 {fmt(s2)} vs SFT3 {fmt(s3)} (mean recall) → " + verdict(None if None in (s2, s3) else s2 < s3)
    )
    s3_long = at_longest.get("sft3-short-haystack")
    out.append(
        f"- **F1c** a short training haystack generalizes to longer tests: at {longest} words SFT3 "
        f"{fmt(s3_long)} vs SFT1 {fmt(s1)} (the paper: above 90% at 32K) → "
        + verdict(None if None in (s3_long, s1) else s3_long > s1)
    )
    known = {row: v for row, v in sft.items() if v is not None}
    s4 = sft["sft4-long-haystack"]
    out.append(
        f"- **F1d** the long training haystack is best: SFT4 {fmt(s4)} vs "
        + ", ".join(f"{row.split('-')[0].upper()} {fmt(v)}" for row, v in known.items() if row != "sft4-long-haystack")
        + " → "
        + verdict(None if s4 is None else s4 >= max(known.values()))
    )
    if "sft4-long-haystack" in rows and "sft3-short-haystack" in rows:
        gains = {
            s: (score(rows["sft4-long-haystack"], "finetuned", f"niah_{s}") or 0.0)
            - (score(rows["sft3-short-haystack"], "finetuned", f"niah_{s}") or 0.0)
            for s in subtasks
        }
        largest = max(gains, key=gains.get)
        out.append(
            "- **F1e** SFT4's largest gain over SFT3 is on multi-value: gains "
            + ", ".join(f"{s} {g:+.2f}" for s, g in gains.items())
            + " → "
            + verdict("multivalue" in gains and largest == "multivalue")
        )
    return out


# --- F2, F5: the main comparison -------------------------------------------------------------------------------


def main_section(results: dict, figures_dir: Path) -> tuple[str, list[str]]:
    rows = rows_of(results, "main")
    if not rows:
        return "", ["- **F2 / F5 (main comparison)**: " + verdict(None) + " (run `make paper-main`)."]
    reference = paper_reference()["main"]
    tasks = sorted({t for e in rows.values() for t in ((e["eval"].get("finetuned") or {}).get("tasks") or {})})
    first = next(iter(rows.values()))
    body = [
        ["base model (no fine-tuning)"]
        + [fmt(score(first, "base", t)) for t in tasks]
        + [fmt(score(first, "base"))]
        + ["–"] * len(reference["columns"])
    ]
    for row, experiment in rows.items():
        paper = reference["rows"].get(row)
        body.append(
            [MAIN_LABELS.get(row, row)]
            + [fmt(score(experiment, "finetuned", t)) for t in tasks]
            + [fmt(score(experiment))]
            + ([fmt(v) for v in paper] if paper else ["–"] * len(reference["columns"]))
        )
    header = ["training data"] + tasks + ["ours: overall"] + [f"paper: {c}" for c in reference["columns"]]
    text = [table(header, body), ""]
    gaps = []
    for label, with_context, without in COHERENCE:
        a, b = score(rows.get(with_context)), score(rows.get(without))
        gaps.append((label, a, b, None if None in (a, b) else a - b))
    text += [
        "Coherence (F5): the same pairs fine-tuned with and without their context.",
        "",
        table(
            ["data", "with context", "without context", "gap"],
            [[label, fmt(a), fmt(b), fmt(g)] for label, a, b, g in gaps],
        ),
        "",
    ]
    series = {"base": (first["eval"].get("base") or {}).get("tasks") or {}}
    series.update(
        {MAIN_LABELS.get(r, r): (e["eval"].get("finetuned") or {}).get("tasks") or {} for r, e in rows.items()}
    )
    path = figures.task_bars(series, "Per-task scores, main comparison (CPU scale)", figures_dir / "tasks_main.png")
    if path:
        text.append(f"![per-task scores](figures/{path.name})")
    return "\n".join(text), main_findings(rows, gaps)


def main_findings(rows: dict, gaps: list) -> list[str]:
    cs, is_, general, human = (
        score(rows.get(r)) for r in ("context-synthesis", "instruction-synthesis", "general-only", "human-context")
    )
    weight = document_weight(*rows.values())

    def compared(a, b) -> str:
        return "" if None in (a, b) else resolution(a - b, weight)

    out = [
        f"- **F2a** context synthesis beats instruction synthesis: {fmt(cs)} vs {fmt(is_)} → "
        + verdict(None if None in (cs, is_) else cs > is_)
        + compared(cs, is_),
        f"- **F2b** context synthesis beats general data alone: {fmt(cs)} vs {fmt(general)} → "
        + verdict(None if None in (cs, general) else cs > general)
        + compared(cs, general),
        f"- **F2c** context synthesis approaches human contexts (within 10% of human's score, or above): "
        f"{fmt(cs)} vs {fmt(human)} → "
        + verdict(None if None in (cs, human) else cs >= 0.9 * human)
        + compared(cs, human),
    ]
    gap = {label: g for label, _, _, g in gaps}
    is_gap, cs_gap, human_gap = gap["instruction synthesis"], gap["context synthesis"], gap["human context"]
    out.append(
        f"- **F5** instructions written from a context depend on it less than seeds do (gap IS "
        f"{fmt(is_gap)} < CS {fmt(cs_gap)} and human {fmt(human_gap)}; CS and human gaps positive) → "
        + verdict(
            None
            if None in (is_gap, cs_gap, human_gap)
            else is_gap < min(cs_gap, human_gap) and cs_gap > 0 and human_gap > 0
        )
    )
    return out


# --- F3, F4 ----------------------------------------------------------------------------------------------------


def simple_section(results: dict, group: str, figures_dir: Path) -> tuple[str, list[str]]:
    rows = rows_of(results, group)
    reference = paper_reference().get(group) or {}
    finding = results["groups"][group]["finding"]
    if not rows:
        return "", [f"- **{finding}** ({group}): " + verdict(None) + f" (run `make paper-{group}`)."]
    body = [
        [row, fmt(score(e)), fmt(score(e, "base"))]
        + [fmt(v) for v in (reference.get("rows") or {}).get(row, [None] * len(reference.get("columns", [])))]
        for row, e in rows.items()
    ]
    header = ["row", "ours: overall", "ours: base"] + [f"paper: {c}" for c in reference.get("columns", [])]
    series = {row: (e["eval"].get("finetuned") or {}).get("tasks") or {} for row, e in rows.items()}
    path = figures.task_bars(series, f"Per-task scores, {group}", figures_dir / f"tasks_{group}.png")
    text = [table(header, body), ""] + ([f"![per-task scores](figures/{path.name})"] if path else [])
    findings = []
    if group == "contexts":
        values = [score(rows[r]) for r in ("n1", "n5", "n10") if r in rows]
        findings.append(
            "- **F3** more contexts help a little: n = 1 / 5 / 10 gives "
            + " / ".join(fmt(v) for v in values)
            + " → "
            + verdict(None if len(values) < 3 else values[0] <= values[1] <= values[2])
            + (resolution(values[-1] - values[0], document_weight(*rows.values())) if len(values) == 3 else "")
        )
    return "\n".join(text), findings


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
        "Each line compares the numbers above; a verdict at 135M parameters and a few dozen test documents "
        "is weak evidence either way (the test sets' sizes are under Scales; a line whose margin is smaller "
        "than one test document can move the score says so).",
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
