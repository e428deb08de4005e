import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import ESSAYS, make_hotpot, make_squad

from ctxsynth.core.io import InputError
from ctxsynth.core.text import normalize_text
from ctxsynth.prepare.benchmark import build_hotpotqa_long, build_squad_long
from ctxsynth.prepare.seeds import load_paper_seeds, select_seeds


@pytest.fixture
def raw_dir(tmp_path):
    (tmp_path / "squad.json").write_text(json.dumps(make_squad()))
    (tmp_path / "hotpotqa.json").write_text(json.dumps(make_hotpot()))
    return tmp_path


def reserved_from(raw_dir):
    squad_items, squad_reserved = build_squad_long(make_squad(), count=3, target_words=60, seed=1)
    hotpot_items, hotpot_reserved = build_hotpotqa_long(make_hotpot(), count=3, target_words=60, seed=1)
    reserved = {
        "ids": squad_reserved["ids"] + hotpot_reserved["ids"],
        "questions": squad_reserved["questions"] + hotpot_reserved["questions"],
        "paragraphs": squad_reserved["paragraphs"],
    }
    return squad_items + hotpot_items, reserved


def test_squad_long_hides_gold_paragraph_among_other_articles():
    items, reserved = build_squad_long(make_squad(), count=3, target_words=120, seed=7)
    for item in items:
        article = item["_id"].split(":q")[1].split("-")[0]
        assert f"Article {article} paragraph" in item["context"] and item["answers"][0] in item["context"]
        other_paragraphs = [p for p in item["context"].split("\n\n") if not p.startswith(f"Article {article} ")]
        assert len(other_paragraphs) >= 1 and item["length"] >= 120
        assert set(item) >= {"_id", "input", "context", "answers", "length", "dataset", "language", "all_classes"}
    assert len(reserved["paragraphs"]) == 3 and len(reserved["ids"]) == 3 * 3  # every question of each paragraph


def test_seeds_are_disjoint_from_evaluation_by_id_and_question(raw_dir):
    eval_items, reserved = reserved_from(raw_dir)
    sources = [
        {"type": "squad", "task": "squad_long", "count": None},
        {"type": "hotpotqa", "task": "hotpotqa_long", "count": None},
    ]
    seeds, report = select_seeds(sources, raw_dir, reserved, seed=3)
    eval_questions = {normalize_text(i["input"]) for i in eval_items}
    eval_ids = {i["_id"] for i in eval_items}
    assert not eval_questions & {normalize_text(s["instruction"]) for s in seeds}
    assert not eval_ids & {s["id"] for s in seeds}
    assert report["squad_long"]["removed_reserved"] == 3 * 2  # answerable questions of the 3 reserved paragraphs
    assert report["hotpotqa_long"]["removed_reserved"] == 3
    # A question text reserved under another id is caught by its normalized text.
    reworded = dict(reserved, ids=[], paragraphs=[])
    seeds_by_text, _ = select_seeds(sources[1:], raw_dir, reworded, seed=3)
    assert len(seeds_by_text) == 12 - 3


def test_per_task_sampling_is_seeded(raw_dir):
    sources = [{"type": "squad", "task": "squad_long", "count": 5}]
    empty = {"ids": [], "questions": [], "paragraphs": []}
    first, _ = select_seeds(sources, raw_dir, empty, seed=1)
    again, _ = select_seeds(sources, raw_dir, empty, seed=1)
    other, _ = select_seeds(sources, raw_dir, empty, seed=2)
    assert [s["id"] for s in first] == [s["id"] for s in again] and len(first) == 5
    assert [s["id"] for s in first] != [s["id"] for s in other]


def test_unknown_source_and_bad_jsonl_are_located(raw_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository's dvc.yaml: a library call checks existence only
    empty = {"ids": [], "questions": [], "paragraphs": []}
    with pytest.raises(InputError, match="unknown seed source type 'web'"):
        select_seeds([{"type": "web"}], raw_dir, empty, seed=0)
    user = tmp_path / "mine.jsonl"
    user.write_text(
        '{"instruction": "q1", "answer": "a1", "task": "hotpotqa"}\n{"instruction": "q2", "task": "hotpotqa"}\n'
    )
    with pytest.raises(InputError, match=r"mine.jsonl, line 2, field 'answer'"):
        select_seeds([{"type": "jsonl", "path": str(user)}], raw_dir, empty, seed=0)
    user.write_text('{"instruction": "q1", "answer": "a1"}\n')
    with pytest.raises(InputError, match=r"line 1, field 'task'"):
        select_seeds([{"type": "jsonl", "path": str(user)}], raw_dir, empty, seed=0)
    user.write_text("")
    with pytest.raises(InputError, match="empty file"):
        select_seeds([{"type": "jsonl", "path": str(user), "task": "hotpotqa"}], raw_dir, empty, seed=0)


def test_paper_layout_with_aligned_contexts(tmp_path):
    (tmp_path / "seed_instruction").mkdir()
    (tmp_path / "seed_context").mkdir()
    (tmp_path / "seed_instruction" / "2wikiqa.jsonl").write_text('{"instruction": "q", "answer": "a"}\n' * 3)
    (tmp_path / "seed_context" / "2wikiqa.jsonl").write_text('{"context": "c"}\n' * 2)
    with pytest.raises(InputError, match="line-aligned"):
        load_paper_seeds(tmp_path, None)
    (tmp_path / "seed_context" / "2wikiqa.jsonl").write_text('{"context": "c"}\n' * 3)
    records = load_paper_seeds(tmp_path, None)
    assert [r["task"] for r in records] == ["2wikimqa"] * 3 and records[0]["context"] == "c"


def test_the_papers_own_seeds(paper_seeds_dir):
    records = load_paper_seeds(paper_seeds_dir, None)
    by_task = {}
    for record in records:
        by_task[record["task"]] = by_task.get(record["task"], 0) + 1
    assert by_task == {
        t: 200
        for t in ["2wikimqa", "gov_report", "hotpotqa", "multi_news", "musique", "narrativeqa", "qasper", "qmsum"]
    }
    with_context = {r["task"] for r in records if r["context"]}
    assert with_context == {"2wikimqa", "hotpotqa", "multi_news", "musique"}


def test_niah_params_and_reserved_keys(tmp_path):
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "squad.json").write_text(json.dumps(make_squad()))
    (tmp_path / "raw" / "hotpotqa.json").write_text(json.dumps(make_hotpot()))
    (tmp_path / "raw" / "PaulGrahamEssays.json").write_text(
        json.dumps({"text": ESSAYS + " " + "Crimson gadgets tumbling northward quietly. " * 3})
    )
    base = {
        "seed": 2,
        "squad_long": {"count": 2, "target_words": 50},
        "hotpotqa_long": {"count": 2, "target_words": 50},
    }

    def run(niah):
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"benchmark": {**base, **niah}}))
        return subprocess.run(
            [sys.executable, str(root / "stages" / "benchmark.py"), "--raw", "raw", "--out", "out"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )

    result = run(
        {
            "niah": {
                "subtasks": ["multikey", "multivalue"],
                "lengths": [30],
                "depths": [0.0, 1.0],
                "samples": 1,
                "needles": {"multikey": 3},
            }
        }
    )
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "niah_multikey.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(len(row["needle_keys"]) == 3 for row in rows)
    reserved = json.loads((tmp_path / "out" / "reserved.json").read_text())
    every_key = {
        key
        for task in ("niah_multikey", "niah_multivalue")
        for line in (tmp_path / "out" / f"{task}.jsonl").read_text().splitlines()
        for key in json.loads(line)["needle_keys"]
    }
    assert set(reserved["niah_keys"]) == every_key and len(every_key) == 2 * 3 + 2  # distractor keys included
    assert {"ids", "questions", "paragraphs"} <= set(reserved)  # the seed stage's keys still there
    assert not (tmp_path / "out" / "niah_single.jsonl").exists()

    legacy = run({"niah_single": {"lengths": [30], "depths": [0.5], "samples": 2}})  # params from before issue 5
    assert legacy.returncode == 0, legacy.stderr
    assert len((tmp_path / "out" / "niah_single.jsonl").read_text().splitlines()) == 2
    bad = run({"niah": {"subtasks": ["single", "multi"], "lengths": [30], "depths": [0.5], "samples": 1}})
    assert bad.returncode != 0 and "benchmark.niah.subtasks" in bad.stderr and "'multi'" in bad.stderr


def test_reserving_one_more_item_changes_only_that_seed(raw_dir):
    sources = [{"type": "hotpotqa", "task": "hotpotqa_long", "count": 4}]
    empty = {"ids": [], "questions": [], "paragraphs": []}
    before = [s["id"] for s in select_seeds(sources, raw_dir, empty, seed=9)[0]]
    taken = before[1].split(":", 1)[1]
    after = [s["id"] for s in select_seeds(sources, raw_dir, dict(empty, ids=[taken]), seed=9)[0]]
    assert len(after) == 4 and f"hotpotqa:{taken}" not in after
    assert len(set(before) & set(after)) == 3  # the other three seeds, and so their generations, are kept
