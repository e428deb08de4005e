"""The README's findings table says what metrics/report.md says: the same findings, the same verdicts, the same
differences and intervals. Both are committed; the report is generated, the README is written by hand, so this is
where a regenerated report that the README no longer matches is caught."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# "- **F2a** ...; difference +1.43, 95% interval [-6.26, +9.30] (...) → **inconclusive**"
# and "- **F4**: **not measured** (...)"
REPORT_VERDICT = re.compile(r"^- \*\*(?P<finding>F[^*]+)\*\*(?P<body>.*?)(?:→ |: )\*\*(?P<verdict>[a-z ]+)\*\*", re.M)
INTERVAL = re.compile(r"([+-]\d+\.\d+), 95% interval \[([+-]\d+\.\d+), ([+-]\d+\.\d+)\]")
README_ROW = re.compile(
    r"^\| (?P<finding>F[^|]+?) \| [^|]+ \| (?P<ours>[^|]+) \| \*\*(?P<verdict>[a-z ]+)\*\* \|$", re.M
)


def report_findings() -> dict[str, tuple[str, str]]:
    text = (ROOT / "metrics" / "report.md").read_text(encoding="utf-8")
    found = {}
    for match in REPORT_VERDICT.finditer(text):
        interval = INTERVAL.search(match["body"])
        ours = f"{interval[1]} [{interval[2]}, {interval[3]}]" if interval else "–"
        found[match["finding"].strip()] = (match["verdict"], ours)
    return found


def readme_findings() -> dict[str, tuple[str, str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return {m["finding"].strip(): (m["verdict"], m["ours"].strip()) for m in README_ROW.finditer(text)}


def test_the_report_lists_verdicts_for_every_finding():
    findings = report_findings()
    assert {"F1a", "F2a", "F2b", "F3", "F4", "F5a"} <= set(findings), sorted(findings)
    assert {verdict for verdict, _ in findings.values()} <= {"holds", "contradicted", "inconclusive", "not measured"}


def test_the_readme_findings_table_agrees_with_the_report():
    assert readme_findings() == report_findings()
