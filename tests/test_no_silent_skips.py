"""Silent skips are errors, raised before any expensive work and naming the file or key (issue 12, item 5).

Before: a `seed.sources[].tasks` name without a file was ignored when another name matched, a source that yielded
nothing added no seeds without a word, and a `mix.filter` threshold on a score that was never computed passed
every record. (The LongBench cases are in tests/test_evaluate.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import make_hotpot, make_squad
from helpers import write_jsonl

from ctxsynth.core.io import InputError
from ctxsynth.core.settings import load_settings
from ctxsynth.mix.run import build_mix
from ctxsynth.mix.settings import MixSettings
from ctxsynth.prepare.seeds import load_paper_seeds, select_seeds

EMPTY_RESERVED = {"ids": [], "questions": [], "paragraphs": []}


@pytest.fixture(autouse=True)
def outside_the_pipeline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no dvc.yaml here: a library call checks that named files exist only


def paper_dir(root: Path) -> Path:
    for task in ("hotpotqa", "qasper"):
        write_jsonl(root / "seed_instruction" / f"{task}.jsonl", [{"instruction": f"{task}?", "answer": "a"}])
    return root


def test_a_paper_task_name_without_a_file_is_an_error(tmp_path):
    directory = paper_dir(tmp_path / "paper")
    sources = [{"type": "paper", "path": str(directory), "tasks": ["hotpotqa", "musique"]}]
    with pytest.raises(InputError) as error:
        select_seeds(sources, tmp_path, EMPTY_RESERVED, seed=0)
    assert (error.value.path, error.value.field) == ("params.yaml", "seed.sources[0].tasks[1]")
    assert "musique.jsonl" in str(error.value) and "hotpotqa, qasper" in str(error.value)
    assert len(load_paper_seeds(directory, ["hotpotqa", "qasper"])) == 2


@pytest.mark.parametrize("kind", ["squad", "hotpotqa"])
def test_a_source_that_yields_nothing_is_an_error(tmp_path, kind):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "squad.json").write_text(json.dumps(make_squad(questions=0) if kind == "squad" else make_squad()))
    (raw / "hotpotqa.json").write_text(json.dumps([] if kind == "hotpotqa" else make_hotpot(3)))
    sources = [{"type": "squad" if kind == "hotpotqa" else "hotpotqa", "count": 2}, {"type": kind}]
    with pytest.raises(InputError) as error:
        select_seeds(sources, raw, EMPTY_RESERVED, seed=0)
    assert (error.value.path, error.value.field) == ("params.yaml", "seed.sources[1]")
    assert "yields no seeds" in str(error.value)


def test_a_source_whose_items_are_all_reserved_for_evaluation_is_an_error(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "hotpotqa.json").write_text(json.dumps(make_hotpot(3)))
    reserved = {**EMPTY_RESERVED, "ids": ["h0", "h1", "h2"]}
    with pytest.raises(InputError, match="all 3 are reserved for evaluation") as error:
        select_seeds([{"type": "hotpotqa"}], raw, reserved, seed=0)
    assert error.value.field == "seed.sources[0]"
    assert len(select_seeds([{"type": "hotpotqa"}], raw, {**reserved, "ids": ["h0"]}, seed=0)[0]) == 2


def synthesized(verification: dict | None) -> list[dict]:
    return [
        {
            "id": f"s{i}",
            "task": "hotpotqa",
            "instruction": f"Question {i}?",
            "answer": f"answer {i}",
            "context": f"A context that holds answer {i}.",
            "parse_status": "ok",
            **({"verification": verification} if verification is not None else {}),
        }
        for i in range(3)
    ]


def mix_inputs(tmp_path: Path, records: list[dict]) -> dict:
    seeds = tmp_path / "seed"
    write_jsonl(seeds / "hotpotqa.jsonl", [{k: r[k] for k in ("id", "task", "instruction", "answer")} for r in records])
    contexts = write_jsonl(tmp_path / "synth" / "contexts.jsonl", records)
    return {"raw_dir": tmp_path, "reserved_path": tmp_path, "seeds_dir": seeds, "contexts_path": contexts}


@pytest.mark.parametrize(
    "key, verification, setting",
    [
        # synthesize.verify.answerability was false: the score is null on every record.
        ("min_answerability", {"support": 1.0, "leakage": 0.2, "answerability": None}, "verify.answerability"),
        # synthesize.verify.enabled was false: the records carry no verification at all.
        ("min_support", None, "verify.enabled"),
        ("max_leakage", None, "verify.enabled"),
    ],
)
def test_a_filter_threshold_on_a_score_never_computed_is_an_error(tmp_path, key, verification, setting):
    inputs = mix_inputs(tmp_path, synthesized(verification))
    settings = load_settings(MixSettings, "mix", {"filter": {key: 0.5}})
    with pytest.raises(InputError) as error:
        build_mix(settings, **inputs)
    assert (error.value.path, error.value.field) == (str(inputs["contexts_path"]), f"mix.filter.{key}")
    assert f"synthesize.{setting}: true" in str(error.value) and "3 of 3 records" in str(error.value)


def test_a_filter_on_computed_scores_still_filters(tmp_path):
    records = synthesized({"support": None, "leakage": 0.2, "answerability": 0.0})
    records[0]["verification"] = {"support": 1.0, "leakage": 0.2, "answerability": 1.0}
    inputs = mix_inputs(tmp_path, records)
    # Support is null where it does not apply (long or yes/no answers): computed, and never failing.
    settings = load_settings(MixSettings, "mix", {"filter": {"min_support": 1.0, "min_answerability": 0.5}})
    samples, _, report = build_mix(settings, **inputs)
    assert [s["id"] for s in samples] == ["s0"]
    assert report["filter"] == {"hotpotqa": {"kept": 1, "dropped": 2}}
