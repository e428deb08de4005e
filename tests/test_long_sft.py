"""Prior long SFT datasets as the mix's long samples (mix.variant prior_long): LongAlpaca-12k, LongAlign-10k and LongMIT
read in their own layouts (the committed rehearsal fixtures), broken records skipped and counted, a seeded `count`,
hub provenance, the mix stage end to end, and preflight refusing a file DVC would not see."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from ctxsynth.core.io import InputError
from ctxsynth.core.settings import load_settings
from ctxsynth.mix.long_sft import layouts, load_long_sft
from ctxsynth.mix.settings import MixSettings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path("inputs/long_sft/rehearsal")
ALPACA = {"format": "longalpaca", "source": str(FIXTURES / "LongAlpaca-12k/LongAlpaca-12k.json")}
ALIGN = {"format": "longalign", "source": str(FIXTURES / "LongAlign-10k/long.jsonl")}
MIT = {"format": "longmit", "source": str(FIXTURES / "LongMIT-128K/train.jsonl")}
SHA = "0123456789abcdef0123456789abcdef01234567"


def raw_records(options: dict) -> list[dict]:
    path = ROOT / options["source"]
    if path.suffix == ".json":
        return json.loads(path.read_text(encoding="utf-8"))
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ------------------------------------------------------------------------------------------------- the layouts


def test_longalpaca_is_instruction_to_output(in_repository):
    samples, report = load_long_sft(ALPACA, seed=0)
    good = [record for record in raw_records(ALPACA) if record["output"] is not None]
    assert [s["messages"] for s in samples] == [
        [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}] for r in good
    ]
    assert {(s["task"], s["variant"], s["source"]) for s in samples} == {("longalpaca", "prior_long", ALPACA["source"])}
    assert [s["id"] for s in samples] == [
        "longalpaca:2",
        "longalpaca:8",
        "longalpaca:20",
        "longalpaca:26",
        "longalpaca:32",
    ]
    # the broken record is skipped and counted, found by the line its JSON object starts on
    assert (report["available"], report["skipped"], report["samples"]) == (6, 1, 5)
    assert report["skipped_examples"] == [{"line": 14, "field": "output", "reason": "missing, empty or not a string"}]
    assert len(report["sha256"]) == 64 and "revision" not in report


def test_longalpaca_appends_a_non_empty_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"instruction": "Read this. Why?", "input": "The document.", "output": "Because.", "file": None}]
    (tmp_path / "LongAlpaca-12k.json").write_text(json.dumps(rows), encoding="utf-8")
    samples, _ = load_long_sft({"format": "longalpaca", "source": "LongAlpaca-12k.json"}, seed=0)
    assert samples[0]["messages"][0]["content"] == "Read this. Why?\n\nThe document."


def test_longalign_keeps_its_messages_and_every_turn(in_repository):
    samples, report = load_long_sft(ALIGN, seed=0)
    good = [r for r in raw_records(ALIGN) if all(m["content"] is not None for m in r["messages"])]
    assert [s["messages"] for s in samples] == [r["messages"] for r in good]
    assert [len(s["messages"]) for s in samples] == [2, 4, 2, 4, 2]  # multi-turn conversations kept whole
    assert report["skipped_examples"] == [
        {"line": 4, "field": "messages[1].content", "reason": "missing or not a string"}
    ]


def test_longmit_is_the_cards_prompt_around_numbered_passages(in_repository):
    samples, report = load_long_sft(MIT, seed=0)
    good = [r for r in raw_records(MIT) if all("content" in doc for doc in r["all_docs"])]
    prompts = layouts()["longmit"]["prompts"]
    for sample, record in zip(samples, good, strict=True):
        passages = "\n".join(f"Passage {n}:\n{doc['content']}" for n, doc in enumerate(record["all_docs"], 1))
        kind = "reasoning" if record["type"] in ("inter_doc", "intra_doc") else "answer_only"
        user = prompts[kind]["en"].format(passages=passages, question=record["question"])
        assert sample["messages"] == [
            {"role": "user", "content": user},
            {"role": "assistant", "content": record["answer"]},
        ]
        assert user.endswith(f"\nQuestion:{record['question']}\nAnswer:")
    assert report["skipped_examples"][0]["field"] == "all_docs[0].content" and report["samples"] == 5


def test_longmit_other_types_get_the_answer_only_prompt_in_their_language(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    record = {"all_docs": [{"content": "甲"}, {"content": "乙"}], "question": "问?", "answer": "答", "type": "x"}
    (tmp_path / "train.jsonl").write_text(json.dumps({**record, "language": "zh"}) + "\n", encoding="utf-8")
    samples, _ = load_long_sft({"format": "longmit", "source": "train.jsonl"}, seed=0)
    user = samples[0]["messages"][0]["content"]
    assert "只给答案" in user and "文章 1:\n甲\n文章 2:\n乙" in user and user.endswith("问题:问?\n答案:")


# --------------------------------------------------------------------------------------- broken files, count


@pytest.mark.parametrize(
    "name, text, where",
    [
        ("long.jsonl", '{"messages": [{"role": "user", "content": "q"}]}\n{"messages": "hi"}\n', (1, "messages")),
        ("LongAlpaca-12k.json", '[\n  {"instruction": "q", "output": ""},\n  {"instruction": 3}\n]', (2, "output")),
    ],
)
def test_a_file_with_no_usable_record_is_one_line_naming_file_line_and_field(tmp_path, monkeypatch, name, text, where):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text(text, encoding="utf-8")
    layout = "longalign" if name.endswith(".jsonl") else "longalpaca"
    with pytest.raises(InputError) as error:
        load_long_sft({"format": layout, "source": name}, seed=0)
    assert (error.value.path, error.value.line, error.value.field) == (name, *where)
    assert str(error.value).startswith(f"{name}, line {where[0]}, field '{where[1]}': ")
    assert "all 2 break the" in str(error.value) and "\n" not in str(error.value)


def test_count_picks_the_same_records_whatever_the_hash_seed(in_repository):
    three, report = load_long_sft({**ALIGN, "count": 3}, seed=42)
    assert len(three) == 3 and report["count"] == 3 and report["available"] == 6
    assert [s["id"] for s in three] == sorted((s["id"] for s in three), key=lambda i: int(i.split(":")[1]))
    assert load_long_sft({**ALIGN, "count": 3}, seed=42)[0] == three
    others = {tuple(s["id"] for s in load_long_sft({**ALIGN, "count": 3}, seed=seed)[0]) for seed in range(8)}
    assert len(others) > 1  # the seed chooses
    code = (
        "from ctxsynth.mix.long_sft import load_long_sft;"
        f"print([s['id'] for s in load_long_sft({{**{ALIGN!r}, 'count': 3}}, seed=42)[0]])"
    )
    runs = {
        subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("0", "1")
    }
    assert runs == {f"{[s['id'] for s in three]}\n"}


def test_a_hub_dataset_is_read_at_its_resolved_commit(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub

    class FakeHfApi:
        def dataset_info(self, repo_id, revision=None, **kwargs):
            asked.append((repo_id, revision))
            return types.SimpleNamespace(id=repo_id, sha=SHA)

    asked, loaded = [], []
    rows = [{"messages": [{"role": "user", "content": "doc + q"}, {"role": "assistant", "content": "a"}]}]

    def load_dataset(path, split=None, revision=None, **kwargs):
        loaded.append((path, split, revision))
        return rows

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    options = {"format": "longalign", "source": "THUDM/LongAlign-10k", "revision": "main"}
    samples, report = load_long_sft(options, seed=0)
    assert asked == [("THUDM/LongAlign-10k", "main")] and loaded == [("THUDM/LongAlign-10k", "train", SHA)]
    assert report["revision"] == SHA and "sha256" not in report and samples[0]["id"] == "longalign:1"


# ------------------------------------------------------------------------------------------- settings, stage


def test_prior_long_needs_a_source_and_a_format():
    with pytest.raises(InputError) as error:
        load_settings(MixSettings, "mix", {"variant": "prior_long"})
    assert error.value.field == "mix.long_source.source"
    with pytest.raises(InputError) as error:
        load_settings(MixSettings, "mix", {"variant": "prior_long", "long_source": {"source": "x.jsonl"}})
    assert error.value.field == "mix.long_source.format"
    with pytest.raises(InputError) as error:
        load_settings(MixSettings, "mix", {"long_source": {"format": "longlora", "source": "x.jsonl"}})
    assert error.value.field == "mix.long_source.format"


def project(tmp_path: Path, mix: dict) -> Path:
    """dvc.yaml, inputs/ and a params.yaml whose mix section is `mix` (the rest as shipped)."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(
        ROOT / "inputs", tmp_path / "inputs", ignore=shutil.ignore_patterns("tiny-llama-base"), dirs_exist_ok=True
    )
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["mix"].update(mix)
    params["finetune"]["chat_template"] = "longalign"  # the rehearsal's base model has none of its own
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return tmp_path


def test_the_mix_stage_builds_prior_long_samples_plus_general_data(tmp_path):
    general = {"source": "inputs/general/rehearsal/ultrachat.jsonl", "count": 4}
    workdir = project(tmp_path, {"variant": "prior_long", "long_source": MIT, "general": general})
    model = ROOT / "inputs" / "models" / "tiny-llama-base"
    # Nothing of data/ is read for prior_long: no seeds, contexts, essays or reserved items are needed.
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "mix.py"), "--model", str(model)],
        cwd=workdir,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    lines = (workdir / "data" / "mix" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    samples = [json.loads(line) for line in lines]
    assert [s["task"] for s in samples] == ["longmit"] * 5 + ["general"] * 4
    metrics = json.loads((workdir / "metrics" / "mix.json").read_text(encoding="utf-8"))
    provenance = metrics["long_source"]
    assert metrics["variant"] == "prior_long" and metrics["long_samples"] == 5 and metrics["samples"] == 9
    assert {key: provenance[key] for key in ("format", "source", "available", "skipped", "samples")} == {
        "format": "longmit",
        "source": MIT["source"],
        "available": 6,
        "skipped": 1,
        "samples": 5,
    }
    assert provenance["lengths"]["samples"] == 5 and provenance["lengths"]["tasks"].keys() == {"longmit"}
    assert len(provenance["sha256"]) == 64


def test_preflight_refuses_a_long_source_outside_inputs_long_sft(tmp_path):
    outside = {"format": "longalign", "source": "elsewhere/long.jsonl"}
    workdir = project(tmp_path, {"variant": "prior_long", "long_source": outside})
    (workdir / "elsewhere").mkdir()
    shutil.copy(ROOT / ALIGN["source"], workdir / "elsewhere" / "long.jsonl")
    preflight = [sys.executable, "-m", "ctxsynth.cli", "preflight"]
    done = subprocess.run(preflight, cwd=workdir, capture_output=True, text=True)
    (line,) = done.stderr.splitlines()
    assert done.returncode == 2 and line.startswith("error: params.yaml, field 'mix.long_source.source': ")
    assert "is not a dependency of stage 'mix'" in line and "inputs/long_sft" in line
    project(tmp_path, {"variant": "prior_long", "long_source": ALIGN})  # the rehearsal fixture: declared
    done = subprocess.run(preflight, cwd=workdir, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
