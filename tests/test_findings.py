"""The findings as data: ctxsynth/paper/findings.yaml is well formed against the plan, metrics/findings.json is its
evaluation on the committed metrics/results.json, and the report and the README's findings table are rendered from
that file, so no number of theirs is copied by hand (a stale copy fails here)."""

import json
from pathlib import Path

import pytest

from ctxsynth.core.tasks import get_task
from ctxsynth.paper import stats
from ctxsynth.paper.experiments import load_plan, planned_entries
from ctxsynth.paper.findings import EXPANSIONS, STRATA, evaluate_all, judge, records
from ctxsynth.paper.report import TABLE_END, TABLE_START, findings_table, render_report, with_findings_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "metrics" / "results.json"
FINDINGS = ROOT / "metrics" / "findings.json"


def _committed(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def test_the_findings_file_is_the_evaluation_of_the_committed_results():
    evaluated = evaluate_all(_committed(RESULTS))
    assert json.loads(json.dumps(evaluated)) == evaluated  # plain JSON values: the file says all the report shows
    assert _committed(FINDINGS) == evaluated, "metrics/findings.json is stale: run `ctxsynth report --from-results`"


def test_the_readme_findings_table_is_rendered_from_the_findings_file():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    between = readme.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0]
    assert between == "\n" + findings_table(_committed(FINDINGS)), (
        "the README's findings table is stale: run `ctxsynth report --from-results`"
    )


def test_the_report_is_rendered_from_the_committed_results_and_findings(tmp_path):
    report = (ROOT / "metrics" / "report.md").read_text(encoding="utf-8")
    assert report == render_report(_committed(RESULTS), _committed(FINDINGS), tmp_path), (
        "metrics/report.md is stale: run `ctxsynth report --from-results`"
    )


def test_the_readme_table_shows_each_findings_headline_interval_and_verdict():
    findings = [
        {
            "code": "F9",
            "claim": "a claim",
            "short_claim": "short",
            "estimate": -1.234,
            "low": -3.0,
            "high": 0.5,
            "verdict": "inconclusive",
        },
        {
            "code": "F8",
            "claim": "the long claim",
            "short_claim": None,
            "estimate": None,
            "low": None,
            "high": None,
            "verdict": "not measured",
        },
    ]
    rows = findings_table(findings).splitlines()[2:]
    assert rows == [
        "| F9 | short | -1.23 [-3.00, +0.50] | **inconclusive** |",
        "| F8 | the long claim | – | **not measured** |",
    ]
    readme = f"intro\n{TABLE_START}\nold table\n{TABLE_END}\nrest\n"
    assert (
        with_findings_table(readme, findings) == f"intro\n{TABLE_START}\n{findings_table(findings)}{TABLE_END}\nrest\n"
    )
    with pytest.raises(ValueError, match="markers"):
        with_findings_table("no markers here", findings)


def _rows_named(record: dict) -> list[str]:
    """The plan rows a record names outright (templates such as `{{ present[0] }}` resolve only against results)."""
    parts = record.get("parts") if isinstance(record.get("parts"), list) else []
    named = [] if record.get("rows") in (None, "all") else list(record["rows"])
    named += list((record.get("requires") or {}).get("rows", []))
    for part in parts + (record.get("asides") or []):
        named += [str(term[1]) for term in part["terms"]] + list(part.get("requires", []))
    aliases = records()["aliases"]
    return [aliases.get(name, name) for name in named if "{" not in name]


def test_every_finding_names_rows_of_its_group_and_strata_that_resolve():
    plan = load_plan(ROOT / "experiments" / "paper.yaml")
    findings = records()["findings"]
    assert len({record["code"] for record in findings}) == len(findings)
    for record in findings:
        group = record["group"]
        assert group in plan["groups"], record["code"]
        rows = {entry["row"] for scale in plan["scales"] for entry in planned_entries(plan, group, scale)}
        assert set(_rows_named(record)) <= rows, record["code"]
        if not planned_entries(plan, group, "cpu"):
            continue  # a gpu-only group: reported as not measured
        assert record["direction"] in ("positive", "negative", "equivalent"), record["code"]
        assert record["direction"] != "equivalent" or record["margin"] > 0
        assert record["missing"] and record["numbers"] and record["parts"], record["code"]
        parts = record["parts"]
        if isinstance(parts, dict):
            assert parts["expand"] in EXPANSIONS
            continue
        for part in parts + (record.get("asides") or []):
            assert all(len(term) in (2, 3) and term[2:] in ([], ["base"], ["finetuned"]) for term in part["terms"])
            for stratum in part.get("strata") or {}:
                assert stratum in STRATA or get_task(stratum), (record["code"], stratum)


def _estimate(low: float, high: float) -> stats.Estimate:
    return stats.Estimate((low + high) / 2, low, high, 8, (("t", 8),), (("a", 1), ("b", 1)), 0)


@pytest.mark.parametrize(
    ("direction", "low", "high", "expected"),
    [
        ("positive", 0.5, 2.0, stats.HOLDS),
        ("positive", -2.0, -0.5, stats.CONTRADICTED),
        ("negative", -2.0, -0.5, stats.HOLDS),
        ("negative", 0.5, 2.0, stats.CONTRADICTED),
        ("negative", -0.5, 0.5, stats.INCONCLUSIVE),
        ("equivalent", -0.9, 1.0, stats.HOLDS),
        ("equivalent", 1.5, 3.0, stats.CONTRADICTED),
        ("equivalent", -3.0, -1.5, stats.CONTRADICTED),
        ("equivalent", 0.5, 1.5, stats.INCONCLUSIVE),
    ],
)
def test_a_part_is_judged_against_the_direction_the_paper_claims(direction, low, high, expected):
    assert judge(_estimate(low, high), {"direction": direction, "margin": 1}) == expected
