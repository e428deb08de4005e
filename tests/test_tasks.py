from pathlib import Path

import pytest
import yaml

from ctxsynth.core.tasks import get_task

PAPER_TASKS = ["narrativeqa", "qasper", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum", "multi_news"]
PAPER_BUDGETS = {
    "narrativeqa": 128,
    "qasper": 128,
    "hotpotqa": 32,
    "2wikimqa": 32,
    "musique": 32,
    "gov_report": 512,
    "qmsum": 512,
    "multi_news": 512,
}


def lm_eval_longbench_dir() -> Path:
    lm_eval = pytest.importorskip("lm_eval")
    return Path(lm_eval.__file__).parent / "tasks" / "longbench"


@pytest.mark.parametrize("task", PAPER_TASKS)
def test_templates_are_lm_evals_longbench_templates_character_for_character(task):
    text = (lm_eval_longbench_dir() / f"{task}.yaml").read_text(encoding="utf-8")
    line = next(row for row in text.splitlines() if row.startswith("doc_to_text:"))
    theirs = yaml.safe_load(line)["doc_to_text"].replace("{{context}}", "{context}").replace("{{question}}", "{input}")
    assert get_task(task).template == theirs
    assert get_task(task).max_new_tokens == PAPER_BUDGETS[task]


def test_paper_seed_names_map_to_longbench_names():
    assert [get_task(n).name for n in ("2wikiqa", "govreport", "multinews")] == ["2wikimqa", "gov_report", "multi_news"]
    with pytest.raises(KeyError, match="unknown task"):
        get_task("nonsense")
