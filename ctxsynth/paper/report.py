"""metrics/report.md: every finding of the paper, our numbers beside the paper's, from the DVC experiments.

    ctxsynth report                  # collect from `dvc exp show --json`, then render
    ctxsynth report --from-results   # render from the committed metrics/results.json only

Verdicts are computed from the collected numbers each time; nothing here knows what the result "should" be. Each one
follows a 95% interval from ctxsynth/paper/stats.py (a paired bootstrap over test documents within each task, and over
training seeds where a row has several): holds, contradicted or inconclusive. A comparison that involves a row
collected without per-document scores is inconclusive, whatever its means say.

The findings (ctxsynth/paper/findings.yaml, evaluated by ctxsynth/paper/findings.py) are written to
metrics/findings.json; the report's verdicts and the README's findings table (between its findings markers) are
rendered from that file, the report's text from the template ctxsynth/paper/report.md.j2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ctxsynth.core.io import write_json
from ctxsynth.paper import figures, stats, templates
from ctxsynth.paper.experiments import SCALES, run_history
from ctxsynth.paper.findings import evaluate_all
from ctxsynth.paper.rows import per_document, rows_of
from ctxsynth.paper.sections import (
    gpu_only_section,
    main_section,
    paper_reference,
    pilot_section,
    simple_section,
)

__all__ = ["main", "paper_reference", "render", "rows_of"]

RESULTS = Path("metrics/results.json")
REPORT = Path("metrics/report.md")
FINDINGS = Path("metrics/findings.json")
FIGURES = Path("metrics/figures")
README = Path("README.md")
TABLE_START, TABLE_END = "<!-- findings:start -->", "<!-- findings:end -->"


def _scale_order(scale: str) -> int:
    """The plan's order of scales, also when rendered from the file (written with sorted keys)."""
    return SCALES.index(scale) if scale in SCALES else len(SCALES)


def section_of(results: dict, group: str, meta: dict, figures_dir: Path) -> dict:
    """A plan group's section: its heading, the paper's claims, how long it ran here, and what it shows."""
    claims = paper_reference()["claims"]
    codes = (meta["finding"] or "").replace(" ", "").split(",")
    runs = results.get("runs", {}).get(group)
    heading = {
        "finding": meta["finding"],
        "title": meta["title"],
        "claims": [claims[code] for code in codes if code in claims],
        "took": run_history(runs) if runs else [],
    }
    if meta.get("cpu_rows") == 0:
        return {**heading, **gpu_only_section(group)}
    rows = rows_of(results, group)
    if not rows:
        return {**heading, "kind": "not_run"}
    if group == "pilot":
        return {**heading, **pilot_section(rows, figures_dir)}
    if group == "main":
        return {**heading, **main_section(rows, figures_dir)}
    return {**heading, **simple_section(rows, group, figures_dir)}


def render_report(results: dict, findings: list[dict], figures_dir: Path = FIGURES) -> str:
    """The report from the collected results (its tables and figures) and the evaluated findings (its verdicts)."""
    # Sections in the plan's order, also when rendered from the file (written with sorted keys).
    groups = sorted(results["groups"].items(), key=lambda item: item[1].get("order", 0))
    sections = [section_of(results, group, meta, figures_dir) for group, meta in groups]
    lengths = results.get("context_lengths")
    histogram = figures.length_histogram(lengths, figures_dir / "context_lengths.png") if lengths else None
    return templates.render(
        "report.md.j2",
        source=paper_reference()["source"],
        scales=dict(sorted(results["scales"].items(), key=lambda item: _scale_order(item[0]))),
        without=sorted({e["group"] for e in results["experiments"].values() if not per_document(e)}),
        sections=sections,
        context_lengths=histogram.name if histogram else None,
        replicates=stats.REPLICATES,
        findings=findings,
    )


def render(results: dict, figures_dir: Path = FIGURES) -> str:
    return render_report(results, evaluate_all(results), figures_dir)


def findings_table(findings: list[dict]) -> str:
    """The README's findings table (what goes between its markers)."""
    return templates.render("findings_table.md.j2", findings=findings)


def with_findings_table(readme: str, findings: list[dict]) -> str:
    """The README with the table between its findings markers rendered anew from the findings."""
    head, start, rest = readme.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"the README has no {TABLE_START} ... {TABLE_END} markers")
    return head + start + "\n" + findings_table(findings) + end + tail


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
    write_json(FINDINGS, evaluate_all(results))
    findings = json.loads(FINDINGS.read_text(encoding="utf-8"))  # what the report and the README show: the file
    REPORT.write_text(render_report(results, findings), encoding="utf-8")
    if README.is_file():
        README.write_text(with_findings_table(README.read_text(encoding="utf-8"), findings), encoding="utf-8")
    print(
        f"report: {REPORT}, {FINDINGS} and the findings table of {README} ({len(results['experiments'])} experiments)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
