"""The rehearsal's committed stand-ins (inputs/*/rehearsal, inputs/models/tiny-llama-base) are exactly what their
builders write, and they load through the paper-scale code paths they stand in for: the paper's seed release,
LongBench v1 from a local copy, UltraChat / ShareGPT general data and a LLaMA base model without a chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxsynth.core.io import InputError
from ctxsynth.core.scoring import score_prediction
from ctxsynth.core.tasks import get_task
from ctxsynth.core.text import count_words, normalize_text
from ctxsynth.evaluate.run import find_sources, load_benchmark
from ctxsynth.evaluate.settings import PAPER_TASKS, EvalSettings
from ctxsynth.finetune.train import load_tokenizer
from ctxsynth.mix.general_source import load_general
from ctxsynth.prepare.model_convert import materialize_model
from ctxsynth.prepare.seeds import load_paper_seeds, select_seeds
from ctxsynth.rehearsal.fixtures import COMMAND, write_fixtures
from ctxsynth.rehearsal.long_sft_fixtures import write_long_sft_fixtures
from ctxsynth.rehearsal.release_fixtures import write_release_fixtures
from ctxsynth.rehearsal.tiny_model import build_tiny_base_llama

ROOT = Path(__file__).resolve().parents[1]
FIXTURE_KINDS = ("seeds", "longbench", "general")
MODEL = Path("inputs/models/tiny-llama-base")  # as the rehearsal rows name it (fetch.model.path)
THUDM_FIELDS = ["input", "context", "answers", "length", "dataset", "language", "all_classes", "_id"]
EMPTY_RESERVED = {"ids": [], "questions": [], "paragraphs": []}


def files(directory: Path) -> dict[str, bytes]:
    paths = [path for path in directory.rglob("*") if path.is_file()]
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in paths}


def assert_same_files(committed: Path, fresh: Path, command: str) -> None:
    old, new = files(committed), files(fresh)
    assert sorted(old) == sorted(new), f"{committed}: other files than a fresh build; rerun `{command}`"
    changed = [name for name in new if old[name] != new[name]]
    assert not changed, f"{committed}: {changed} differ from a fresh build; rerun `{command}` and commit the result"


def contains(text: str, answer: str) -> bool:
    return f" {normalize_text(answer)} " in f" {normalize_text(text)} "


# ---------------------------------------------------------------------------------------------- fresh builds


def test_the_committed_fixtures_are_a_fresh_build(tmp_path):
    write_fixtures(tmp_path)
    write_release_fixtures(tmp_path)
    write_long_sft_fixtures(tmp_path)
    for kind in (*FIXTURE_KINDS, "released", "long_sft"):
        assert_same_files(ROOT / "inputs" / kind / "rehearsal", tmp_path / kind / "rehearsal", COMMAND)


def test_the_committed_model_is_a_fresh_build(tmp_path):
    """Byte for byte, weights included. transformers writes its version into config.json and
    generation_config.json, so upgrading it fails this test until the model is rebuilt."""
    build_tiny_base_llama(tmp_path / "model")
    assert_same_files(ROOT / MODEL, tmp_path / "model", f"python -m ctxsynth.rehearsal.tiny_model {MODEL}")


# ---------------------------------------------------------------------------------------------------- seeds


def test_the_seeds_load_as_the_papers_release(in_repository):
    seeds = load_paper_seeds(Path("inputs/seeds/rehearsal"), None)
    assert len(seeds) == 32
    tasks = {get_task(name).name for name in PAPER_TASKS}
    assert {task: sum(s["task"] == task for s in seeds) for task in tasks} == dict.fromkeys(tasks, 4)
    with_context = [s for s in seeds if s["context"]]
    assert len(with_context) == 16
    assert {s["task"] for s in with_context} == {"2wikimqa", "hotpotqa", "multi_news", "musique"}
    for seed in with_context:
        assert contains(seed["context"], seed["answer"]), seed["id"]
    # As the rehearsal rows' seed.sources names them: a dependency of the seed stage, 4 per task.
    source = {"type": "paper", "path": "inputs/seeds/rehearsal", "tasks": None, "count": 4}
    selected, report = select_seeds([source], ROOT / "data" / "raw", EMPTY_RESERVED, seed=0)
    assert len(selected) == 32 and all(entry["selected"] == 4 for entry in report.values())


# ------------------------------------------------------------------------------------------------ LongBench


def test_every_longbench_fixture_loads_and_its_answer_scores_in_full(in_repository):
    settings = EvalSettings(tasks=[], longbench_dir="inputs/longbench/rehearsal")
    sources = find_sources(ROOT / "data" / "benchmark", settings)
    assert [task for task, _ in sources] == list(PAPER_TASKS)
    for task, path in sources:
        docs = load_benchmark(path, task)
        assert len(docs) == 3, task
        metric = get_task(task).metric
        for doc in docs:
            assert list(doc) == THUDM_FIELDS
            assert (doc["dataset"], doc["language"], doc["all_classes"]) == (task, "en", None)
            assert doc["length"] == count_words(doc["context"]) and 300 <= doc["length"] <= 600
            assert (doc["input"] == "") == (task in ("gov_report", "multi_news"))  # LongBench's summaries: no input
            (answer,) = doc["answers"]
            assert contains(doc["context"], answer), (task, doc["_id"])
            assert score_prediction(metric, answer, doc["answers"]) == pytest.approx(1.0), (task, doc["_id"])


# --------------------------------------------------------------------------------------------- general data


def test_the_ultrachat_fixture_loads_whole(in_repository):
    source = "inputs/general/rehearsal/ultrachat.jsonl"
    rows = [json.loads(line) for line in (ROOT / source).read_text(encoding="utf-8").splitlines()]
    assert all(list(row) == ["prompt", "prompt_id", "messages"] for row in rows)
    samples, report = load_general({"source": source}, long_samples=0, seed=0)
    assert report == {"source": source, "available": 12, "samples": 12}
    assert all(len(sample["messages"]) >= 4 for sample in samples)  # multi-turn


def test_the_sharegpt_fixture_skips_and_counts_its_broken_conversation(in_repository):
    source = "inputs/general/rehearsal/sharegpt.jsonl"
    samples, report = load_general({"source": source}, long_samples=0, seed=0)
    assert (report["available"], report["samples"], report["skipped"]) == (15, 14, 1)
    assert report["trailing_user_turns_dropped"] == 1
    (skipped,) = report["skipped_examples"]
    assert (skipped["line"], skipped["field"]) == (8, "messages[2].role")
    assert "expected role 'user', got 'assistant'" in skipped["reason"]
    assert all(sample["messages"][-1]["role"] == "assistant" for sample in samples)


# ---------------------------------------------------------------------------------------------------- model


def test_the_tiny_model_is_a_sharded_bf16_llama_base_model(in_repository, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    index = json.loads((MODEL / "model.safetensors.index.json").read_text(encoding="utf-8"))
    shards = sorted(path.name for path in MODEL.glob("*.safetensors"))
    assert len(shards) == 2 and sorted(set(index["weight_map"].values())) == shards
    model = AutoModelForCausalLM.from_pretrained(MODEL)
    assert model.dtype == torch.bfloat16 and model.config.model_type == "llama"
    # fetch_model takes a local directory as it is: dtype and shards kept, nothing rebuilt.
    materialize_model({"source": "path", "path": str(MODEL)}, tmp_path / "model")
    for name in shards + ["model.safetensors.index.json", "config.json", "tokenizer.json"]:
        assert (tmp_path / "model" / name).read_bytes() == (MODEL / name).read_bytes()


def test_the_tiny_model_needs_a_named_chat_format(in_repository):
    assert not (MODEL / "chat_template.jinja").exists()
    assert "chat_template" not in json.loads((MODEL / "tokenizer_config.json").read_text(encoding="utf-8"))
    with pytest.raises(InputError) as error:
        load_tokenizer(MODEL, "model")
    assert error.value.field == "finetune.chat_template" and "no chat template" in str(error.value)

    tokenizer, used = load_tokenizer(MODEL, "longalign")
    assert used.startswith("longalign@v")
    messages = [{"role": "user", "content": "Where is Ostrevik?"}, {"role": "assistant", "content": "On the Tamsel."}]
    rendered = tokenizer.apply_chat_template(messages, tokenize=False)
    assert rendered == "<s>[INST]Where is Ostrevik?[/INST]On the Tamsel.</s>"
    ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert ids.count(tokenizer.bos_token_id) == 1
    # Like LLaMA's own tokenizers, a plain encode prepends BOS: the pipeline must not add a second one.
    assert tokenizer("Ostrevik")["input_ids"][0] == tokenizer.bos_token_id
