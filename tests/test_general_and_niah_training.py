"""General SFT data (offline SQuAD chat set, files in chat or ShareGPT format) and the pilot's training needles."""

import json
import random

import pytest
from fixtures import make_squad

from ctxsynth.core.io import InputError
from ctxsynth.mix.general_source import load_general
from ctxsynth.mix.niah_training import niah_training_samples
from ctxsynth.prepare.general_data import build_squad_chat

WORDS = [
    f"{a}{b}"
    for a in ("quartz", "meadow", "lantern", "harbor", "pepper", "violet", "cobalt", "saddle")
    for b in ("stone", "field", "light", "wind", "river")
]
ESSAYS = " ".join(
    f"The {random.Random(i).choice(WORDS)} {WORDS[i % len(WORDS)]} story goes on for a while." for i in range(600)
)


def test_squad_chat_leaves_out_evaluation_and_seed_paragraphs_and_is_deterministic():
    squad = make_squad(articles=4, paragraphs=3)
    samples, report = build_squad_chat(
        squad, exclude_question_ids={"q0-0-1"}, exclude_paragraphs={"1:2"}, count=None, seed=3, max_paragraph_words=400
    )
    used = {s["id"].split(":")[-1].rsplit("-", 1)[0] for s in samples}  # q<article>-<paragraph>
    assert "q0-0" not in used and "q1-2" not in used and len(samples) == 10 == report["samples"]
    assert report["paragraphs_excluded"] == 2
    again, _ = build_squad_chat(squad, {"q0-0-1"}, {"1:2"}, count=4, seed=3, max_paragraph_words=400)
    assert [s["id"] for s in again] == sorted(again_ids := [s["id"] for s in again]) and len(again_ids) == 4
    assert set(again_ids) <= {s["id"] for s in samples}
    user, assistant = samples[0]["messages"]
    assert user["role"] == "user" and "Question:" in user["content"] and assistant["content"].startswith("answer ")


def test_load_general_reads_chat_and_sharegpt_files_and_takes_a_count_or_ratio(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository's dvc.yaml: a library call checks existence only
    path = tmp_path / "general.jsonl"
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
        for i in range(6)
    ]
    rows.append({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    everything, report = load_general({"source": str(path)}, long_samples=10, seed=0)
    assert len(everything) == 7 and report["available"] == 7
    assert everything[-1]["messages"] == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert len(load_general({"source": str(path), "count": 3}, 10, seed=0)[0]) == 3
    half, _ = load_general({"source": str(path), "ratio": 0.5}, long_samples=4, seed=0)
    assert len(half) == 2 and half == load_general({"source": str(path), "ratio": 0.5}, 4, seed=0)[0]
    assert load_general({"source": None}, 4, 0) == ([], {})


def test_general_data_errors_name_the_file_line_and_field(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository's dvc.yaml: a library call checks existence only
    path = tmp_path / "bad.jsonl"
    path.write_text(
        json.dumps({"messages": []}) + "\n" + json.dumps({"conversations": [{"from": "robot", "value": "x"}]}) + "\n"
    )
    with pytest.raises(InputError) as error:
        load_general({"source": str(path)}, 1, 0)
    assert str(path) in str(error.value) and "line 1" in str(error.value) and "messages" in str(error.value)
    path.write_text(json.dumps({"conversations": [{"from": "robot", "value": "x"}]}) + "\n")
    with pytest.raises(InputError, match=r"line 1, field .conversations\[0\].from.: unknown speaker"):
        load_general({"source": str(path)}, 1, 0)
    with pytest.raises(InputError, match="count or mix.general.ratio"):
        load_general({"source": str(path), "count": 1, "ratio": 1.0}, 1, 0)
    with pytest.raises(InputError, match="no such file"):
        load_general({"source": str(tmp_path / "missing.jsonl")}, 1, 0)


@pytest.mark.parametrize("variant, words", [("niah_needle_only", 0), ("niah_short", 120), ("niah_long", 400)])
def test_training_needles_follow_the_variant_and_never_use_a_test_key_word(variant, words):
    options = {
        "subtasks": ["single", "multikey", "multiquery", "multivalue"],
        "per_subtask": 3,
        "short_words": 120,
        "long_words": 400,
    }
    reserved = ["quartzstone-meadowfield", "lanternlight-harborwind"]
    samples = niah_training_samples(ESSAYS, reserved, variant, options, seed=1)
    assert len(samples) == 12 and len({s["id"] for s in samples}) == 12
    reserved_words = {w for key in reserved for w in key.split("-")}
    for sample in samples:
        prompt, answer = sample["messages"][0]["content"], sample["messages"][1]["content"]
        assert all(value in prompt for value in answer.split(", "))  # every answer is in the context
        assert not reserved_words & {w for key in sample["needle_keys"] for w in key.split("-")}
        if words == 0:
            assert "story goes on" not in prompt
        else:
            assert "story goes on" in prompt and sample["haystack_words"] == words
    assert samples == niah_training_samples(ESSAYS, reserved, variant, options, seed=1)
    assert samples != niah_training_samples(ESSAYS, reserved, variant, options, seed=2)


def test_mix_stage_builds_general_only_and_pilot_variants(tmp_path, tiny_model_dir):
    """benchmark -> general -> mix as DVC runs them: the pilot's variants need no seeds or synthesis."""
    import yaml
    from fixtures import make_hotpot
    from test_stages import params, run_stage

    settings = params(tmp_path)
    settings["mix"]["niah"] = {
        "subtasks": ["single", "multivalue"],
        "per_subtask": 2,
        "short_words": 80,
        "long_words": 200,
    }
    raw = tmp_path / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "squad.json").write_text(json.dumps(make_squad(articles=5)))
    (raw / "hotpotqa.json").write_text(json.dumps(make_hotpot(14)))
    (raw / "PaulGrahamEssays.json").write_text(json.dumps({"text": ESSAYS}))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
    for stage in ("benchmark.py", "seed.py", "general.py"):
        run_stage(tmp_path, "0", stage)
    counts = {}
    for variant in ("none", "niah_needle_only", "niah_long"):
        settings["mix"]["variant"] = variant
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(settings))
        run_stage(tmp_path, "0", "mix.py", "--model", str(tiny_model_dir))
        samples = [json.loads(line) for line in (tmp_path / "data/mix/train.jsonl").read_text().splitlines()]
        metrics = json.loads((tmp_path / "metrics/mix.json").read_text())
        counts[variant] = (metrics["long_samples"], metrics["general"]["samples"], len(samples))
        assert {"python", "tokenizers", "transformers"} <= set(metrics["versions"])  # lengths are the tokenizer's
        assert sum(s["task"] == "general" for s in samples) == 3
    assert counts == {"none": (0, 3, 3), "niah_needle_only": (4, 3, 7), "niah_long": (4, 3, 7)}
    test_keys = json.loads((tmp_path / "data/benchmark/reserved.json").read_text())["niah_keys"]
    assert test_keys and not any(key in (tmp_path / "data/mix/train.jsonl").read_text() for key in test_keys)


def test_broken_conversations_are_skipped_and_counted_like_longalign(tmp_path, monkeypatch):
    """ShareGPT-style dumps hold broken conversations: one must not abort the mix stage."""
    monkeypatch.chdir(tmp_path)
    good = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}
    robot = {"conversations": [{"from": "robot", "value": "x"}, {"from": "gpt", "value": "y"}]}
    unanswered = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                               {"role": "user", "content": "and then?"}]}  # fmt: skip
    empty = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": " "}]}
    path = tmp_path / "sharegpt.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in (good, robot, unanswered, empty)))
    samples, report = load_general({"source": str(path)}, long_samples=0, seed=0)
    assert [len(s["messages"]) for s in samples] == [2, 2]  # the unanswered last turn is dropped, the rest kept
    assert report["available"] == 4 and report["samples"] == 2 and report["skipped"] == 2
    assert report["trailing_user_turns_dropped"] == 1
    assert [(e["line"], e["field"]) for e in report["skipped_examples"]] == [
        (2, "conversations[0].from"),
        (4, "messages[1].content"),
    ]
    assert report["skipped_examples"][0]["reason"] == "unknown speaker 'robot'"
