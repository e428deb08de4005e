"""synthesize.backend: released. The paper's released contexts matched to the seeds by instruction and answer, the
malformed and unmatched counted, files pinned by sha256, hub reads at a resolved commit (monkeypatched: no network),
and the stage chain seed -> synthesize -> mix on the rehearsal fixture, byte-identical across hash seeds."""

from __future__ import annotations

import json
import os
import shutil
import types
from pathlib import Path

import pytest
import yaml
from helpers import run_stage

from ctxsynth.core.hub import is_local
from ctxsynth.core.io import InputError, sha256_file
from ctxsynth.core.settings import load_settings
from ctxsynth.mix.assemble import pool_for_variant
from ctxsynth.preflight.params import named_inputs, warnings
from ctxsynth.prepare.seeds import load_paper_seeds
from ctxsynth.rehearsal.release_fixtures import NOT_RELEASED, RELEASE_FILE, RESPACED, TASK_ORDER
from ctxsynth.synthesis.release_files import ReleasedRecord
from ctxsynth.synthesis.released import match_key, match_release, released_contexts
from ctxsynth.synthesis.run import run_synthesis
from ctxsynth.synthesis.settings import ReleasedSettings, SynthesizeSettings

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = "inputs/released/rehearsal"
SEEDS = "inputs/seeds/rehearsal"
SHA = "0123456789abcdef0123456789abcdef01234567"
EMPTY_RESERVED = {"ids": [], "questions": [], "paragraphs": []}


def seed(index: int, task: str, instruction: str, answer: str) -> dict:
    return {"id": f"s{index}", "task": task, "instruction": instruction, "answer": answer}


def released(line: int, task: str, instruction: str, answer: str, context: str = "some context") -> ReleasedRecord:
    return ReleasedRecord(RELEASE_FILE, line, task, instruction, answer, context)


def write_release(directory: Path, lines: list[str | dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    (directory / RELEASE_FILE).write_text(text, encoding="utf-8")
    return directory


def row(task: str, instruction: str, answer: str, context: str = "A context.") -> dict:
    return {"synthesis_task": task, "instruction": instruction, "answer": answer, "synthesized_context": context}


# ---------------------------------------------------------------------------------------------------- matching


def test_matching_ignores_case_and_whitespace_but_not_punctuation():
    assert match_key("Who  wrote\tIt?", " The Author ") == match_key("who wrote it?", "the author")
    assert match_key("Who wrote it?", "x") != match_key("Who wrote it", "x")


def test_duplicate_pairs_match_in_file_order_and_a_seeds_own_task_comes_first():
    seeds = [seed(0, "hotpotqa", "Q?", "A"), seed(1, "hotpotqa", "Q?", "A"), seed(2, "musique", "Q?", "A")]
    records = [
        released(1, "musique", "q?", "a"),
        released(2, "hotpotqa", "Q?", "A"),
        released(3, "hotpotqa", "Q?", "A"),
        released(4, "hotpotqa", "Q?", "A"),
        released(5, "qasper", "Other?", "B"),
    ]
    matches, unmatched = match_release(seeds, records)
    assert {index: record.line for index, record in matches.items()} == {0: 2, 1: 3, 2: 1}
    assert [records[i].line for i in unmatched] == [4, 5]
    # a seed whose task has no record left takes another task's record with the same pair
    matches, _ = match_release([seed(0, "qmsum", "Q?", "A")], records[1:2])
    assert matches[0].line == 2


def test_the_rehearsal_release_matches_the_rehearsal_seeds(in_repository):
    seeds = load_paper_seeds(Path(SEEDS), None)
    records, report = released_contexts(seeds, ReleasedSettings(source=FIXTURE))
    assert [r["id"] for r in records] == [s["id"] for s in seeds]  # one record per seed, in seed order
    task, index = NOT_RELEASED
    missing = [r for r in records if r["parse_status"] != "ok"]
    assert [r["id"] for r in missing] == [f"paper:{task}:{index + 1}"] and missing[0]["parse_status"] == "not_released"
    assert missing[0]["context"] is None and missing[0]["provenance"]["release"]["source"] == FIXTURE
    respaced = next(r for r in records if r["id"] == f"paper:{RESPACED[0]}:{RESPACED[1] + 1}")
    assert respaced["parse_status"] == "ok"

    def holds_answer(record: dict) -> bool:
        return " ".join(record["answer"].split()).lower() in " ".join(record["context"].split()).lower()

    assert all(holds_answer(r) for r in records if r["context"])  # each context holds its own seed's answer
    assert report["matched"] == len(seeds) - 1 and report["matched_across_tasks"] == 0
    assert report["unmatched_seeds"] == {"count": 1, "examples": [{"id": missing[0]["id"], "task": missing[0]["task"]}]}
    assert report["unmatched_released"]["count"] == 1
    assert report["unmatched_released"]["examples"][0]["task"] == "hotpotqa"
    lines = (Path(FIXTURE) / RELEASE_FILE).read_text(encoding="utf-8").splitlines()
    truncated_line = next(number for number, text in enumerate(lines, start=1) if not text.endswith("}"))
    assert lines[truncated_line - 2].startswith(lines[truncated_line - 1])  # the record after TRUNCATED_AFTER's
    assert report["malformed"]["count"] == 1
    assert report["malformed"]["examples"] == [{"file": RELEASE_FILE, "line": truncated_line, "field": None}]
    assert report["files"] == {RELEASE_FILE: sha256_file(Path(FIXTURE) / RELEASE_FILE)}
    assert report["resolved_revision"] is None and report["layout"] == "context_synthesis"
    assert len(pool_for_variant("context_synthesis", seeds, records)) == len(seeds) - 1  # what the mix stage takes


# -------------------------------------------------------------------------------------- malformed and pinned files


def test_malformed_records_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_release(
        tmp_path / "release",
        [
            row("hotpotqa", "Q1?", "A1"),
            '{"synthesis_task": "hotpotqa", "instruction": "Q2?"',  # cut short
            '["not", "an", "object"]',
            {"synthesis_task": "hotpotqa", "instruction": "Q3?", "answer": "A3"},  # no context
            row("hotpotqa", "Q4?", "A4", context="   "),  # empty once stripped: kept, status empty
        ],
    )
    seeds = [seed(i, "hotpotqa", f"Q{i}?", f"A{i}") for i in (1, 3, 4)]
    records, report = released_contexts(seeds, ReleasedSettings(source=str(source)))
    assert [r["parse_status"] for r in records] == ["ok", "not_released", "empty"]
    assert report["malformed"]["count"] == 3
    assert report["malformed"]["reasons"] == {
        "expected a JSON object, got list": 1,
        "malformed JSON": 1,
        "synthesized_context: missing": 1,
    }
    assert [m["line"] for m in report["malformed"]["examples"]] == [2, 3, 4]


def test_a_release_with_nothing_usable_is_one_line_naming_file_line_and_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_release(tmp_path / "release", [{"synthesis_task": "hotpotqa", "instruction": "Q?", "answer": 3}])
    with pytest.raises(InputError) as error:
        released_contexts([seed(0, "hotpotqa", "Q?", "3")], ReleasedSettings(source=str(source)))
    assert (error.value.path, error.value.line, error.value.field) == (str(source / RELEASE_FILE), 1, "answer")
    assert "expected a string, got int" in str(error.value) and "\n" not in str(error.value)


def test_a_sha256_mismatch_stops_before_reading_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_release(tmp_path / "release", [row("hotpotqa", "Q?", "A")])
    digest = sha256_file(source / RELEASE_FILE)
    records, report = released_contexts([seed(0, "hotpotqa", "Q?", "A")], ReleasedSettings(str(source), sha256={}))
    assert report["files"][RELEASE_FILE] == digest
    ReleasedSettings(str(source), sha256={RELEASE_FILE: digest})  # the pinned digest passes
    with pytest.raises(InputError) as error:
        released_contexts([], ReleasedSettings(str(source), sha256={RELEASE_FILE: "0" * 64}))
    message = str(error.value)
    assert error.value.path == str(source / RELEASE_FILE) and "\n" not in message
    assert digest in message and "synthesize.released.sha256" in message


# ---------------------------------------------------------------------------------------------------- the hub


def test_a_hub_release_is_read_at_its_resolved_commit(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.chdir(tmp_path)
    write_release(tmp_path / "hub", [row("2wikiqa", "Q?", "A")])
    calls = []

    class FakeHfApi:
        def dataset_info(self, repo_id, revision=None, **kwargs):
            calls.append(("info", repo_id, revision))
            return types.SimpleNamespace(id=repo_id, sha=SHA)

    def hf_hub_download(repo_id, filename, repo_type=None, revision=None, **kwargs):
        calls.append(("download", repo_id, filename, repo_type, revision))
        return str(tmp_path / "hub" / filename)

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    settings = ReleasedSettings(source="Wenhao97/gpt4o-mini-context-synthesis", revision="main")
    assert not is_local(settings.source)
    records, report = released_contexts([seed(0, "2wikimqa", "Q?", "A")], settings)
    assert calls == [
        ("info", settings.source, "main"),
        ("download", settings.source, RELEASE_FILE, "dataset", SHA),  # every file at the one resolved commit
    ]
    assert report["revision"] == "main" and report["resolved_revision"] == SHA
    assert records[0]["parse_status"] == "ok" and records[0]["provenance"]["release"]["revision"] == SHA
    assert records[0]["provenance"]["release"]["sha256"] == sha256_file(tmp_path / "hub" / RELEASE_FILE)

    class Offline:
        def dataset_info(self, *args, **kwargs):
            raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(InputError, match="no network") as error:
        released_contexts([], settings)
    assert error.value.field == "synthesize.released.source"


# ------------------------------------------------------------------------------------------ settings and inputs


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"backend": "released", "method": "instruction_synthesis"}, "synthesize.method"),
        ({"backend": "released", "verify": {"answerability": True}}, "synthesize.verify.answerability"),
        ({"released": {"sha256": {"other.jsonl": "0" * 64}}}, "synthesize.released.sha256.other.jsonl"),
        ({"released": {"sha256": {RELEASE_FILE: "ABC"}}}, f"synthesize.released.sha256.{RELEASE_FILE}"),
        ({"released": {"layout": "chat"}}, "synthesize.released.layout"),
        ({"released": {"files": []}}, "synthesize.released.files"),
    ],
)
def test_bad_released_settings_name_the_key(params, field):
    with pytest.raises(InputError) as error:
        load_settings(SynthesizeSettings, "synthesize", params)
    assert error.value.field == field


def test_a_local_release_must_be_a_dependency_of_the_synthesize_stage(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "inputs" / "released").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    write_release(tmp_path / "elsewhere", [row("hotpotqa", "Q?", "A")])
    settings = load_settings(
        SynthesizeSettings, "synthesize", {"backend": "released", "released": {"source": "elsewhere"}}
    )
    with pytest.raises(InputError) as error:  # refused before anything is read; no model directory is looked at
        run_synthesis([seed(0, "hotpotqa", "Q?", "A")], tmp_path / "no-model", settings)
    assert error.value.field == "synthesize.released.source" and "inputs/released" in str(error.value)
    shutil.move(tmp_path / "elsewhere", tmp_path / "inputs" / "released" / "mine")
    settings = load_settings(
        SynthesizeSettings, "synthesize", {"backend": "released", "released": {"source": "inputs/released/mine"}}
    )
    records, metrics = run_synthesis([seed(0, "hotpotqa", "Q?", "A")], tmp_path / "no-model", settings)
    assert set(records[0]["verification"]) == {"support", "leakage", "answerability"}  # verified without a model
    assert metrics["release"]["matched"] == 1 and metrics["run"]["generated"] == 0


def test_preflight_checks_a_local_release_and_its_files(in_repository):
    settings = {
        "seed": types.SimpleNamespace(sources=[]),
        "fetch": types.SimpleNamespace(model=types.SimpleNamespace(source="registry")),
        "mix": types.SimpleNamespace(variant="context_synthesis", general=types.SimpleNamespace(source=None)),
        "synthesize": load_settings(
            SynthesizeSettings, "synthesize", {"backend": "released", "released": {"source": FIXTURE}}
        ),
    }
    assert list(named_inputs(settings)) == [
        ("synthesize", "synthesize.released.source", FIXTURE),
        ("synthesize", "synthesize.released.files[0]", os.path.join(FIXTURE, RELEASE_FILE)),
    ]
    settings["synthesize"] = load_settings(SynthesizeSettings, "synthesize", {"backend": "released"})
    assert list(named_inputs(settings)) == []  # a hub id is read online, by the stage


def test_preflight_warns_about_a_hub_release_not_pinned_to_a_commit(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["synthesize"]["backend"] = "released"
    for revision, warned in (("main", True), (SHA, False)):
        params["synthesize"]["released"]["revision"] = revision
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
        found = [line for line in warnings(tmp_path / "params.yaml") if "synthesize.released.revision" in line]
        assert bool(found) == warned, found


# ---------------------------------------------------------------------------------------------- the stage chain


def run_chain(workdir: Path, model: Path, hash_seed: str) -> None:
    for directory in (SEEDS, FIXTURE):
        shutil.copytree(ROOT / directory, workdir / directory)
    params = {
        "seed": {"seed": 0, "sources": [{"type": "paper", "path": SEEDS, "count": None}]},
        "synthesize": {"backend": "released", "released": {"source": FIXTURE}, "cache_dir": str(workdir / "cache")},
        "mix": {"variant": "context_synthesis", "num_contexts": 3, "seed": 1},
    }
    (workdir / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    (workdir / "data" / "benchmark").mkdir(parents=True)
    (workdir / "data" / "benchmark" / "reserved.json").write_text(json.dumps(EMPTY_RESERVED), encoding="utf-8")
    run_stage(workdir, hash_seed, "seed.py")
    run_stage(workdir, hash_seed, "synthesize.py", "--model", "no-model")  # the released backend loads no model
    run_stage(workdir, hash_seed, "mix.py", "--model", str(model))


def test_the_synthesize_stage_on_the_rehearsal_release_feeds_the_mix_identically_across_hash_seeds(
    tmp_path, tiny_model_dir
):
    run_chain(tmp_path / "first", tiny_model_dir, "0")
    run_chain(tmp_path / "second", tiny_model_dir, "4242")
    for output in ("data/synth/contexts.jsonl", "metrics/synthesize.json", "data/mix/train.jsonl", "metrics/mix.json"):
        assert (tmp_path / "first" / output).read_bytes() == (tmp_path / "second" / output).read_bytes(), output
    metrics = json.loads((tmp_path / "first" / "metrics/synthesize.json").read_text())
    assert metrics["total"] == 32 and metrics["parse_failures"] == 0 and metrics["run"]["released"] == 31
    assert metrics["release"]["unmatched_seeds"]["count"] == 1 and metrics["release"]["malformed"]["count"] == 1
    assert metrics["tasks"]["qasper"]["not_released"] == 1
    mix = json.loads((tmp_path / "first" / "metrics/mix.json").read_text())
    train = (tmp_path / "first" / "data/mix/train.jsonl").read_text().splitlines()
    assert len(train) == 31, mix  # every released context, none for the seed the release left out


# ---------------------------------------------------------------------------------- the paper's 1,600 seeds


def test_a_release_built_from_the_papers_seeds_matches_all_1600(paper_seeds_dir, tmp_path, monkeypatch):
    """A synthetic release in the authors' layout (their script's task order, fields, json.dump) with invented
    contexts, built from the shared copy of the paper's seeds (never committed): every seed finds its record."""
    monkeypatch.chdir(tmp_path)
    lines = []
    for task in TASK_ORDER:
        for number, text in enumerate(
            (paper_seeds_dir / "seed_instruction" / f"{task}.jsonl").read_text().splitlines()
        ):
            pair = json.loads(text)
            lines.append(row(task, pair["instruction"], pair["answer"], f"Invented context number {number}."))
    source = write_release(tmp_path / "release", lines)
    seeds = load_paper_seeds(paper_seeds_dir, None)
    records, report = released_contexts(seeds, ReleasedSettings(source=str(source)))
    assert len(seeds) == 1600 and report["matched"] == 1600 and report["matched_across_tasks"] == 0
    assert report["unmatched_seeds"]["count"] == 0 and report["unmatched_released"]["count"] == 0
    assert all(r["parse_status"] == "ok" for r in records)
    # line-aligned: each seed got the record written for its own line, duplicates included
    assert all(r["context"] == f"Invented context number {int(r['id'].rsplit(':', 1)[1]) - 1}." for r in records)
