"""The finetune stage on the tiny model: masking, over-length handling, training outputs, QLoRA, bad input."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
from pathlib import Path

import pytest

from ctxsynth.core.chat_encoding import IGNORE_INDEX, TemplateError, encode_chat, end_of_turn_ids
from ctxsynth.core.io import InputError, sha256_file
from ctxsynth.finetune.data import (
    PadCollator,
    fit_length,
    load_chat_records,
    prepare_examples,
)
from ctxsynth.finetune.train import FinetuneSettings, answer_only_loss, load_model, train

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "Question: which city holds the archive?"
ANSWER = "The archive is in Tartu."
SUMMARY_KEYS = {
    "final_loss",
    "mean_loss",
    "steps",
    "samples_total",
    "samples_used",
    "samples_truncated",
    "samples_dropped",
    "trained_tokens",
    "target_tokens",
    "tokens_per_second",
    "wall_time_s",
    "train_time_s",
    "peak_rss_mb",
}


def chat(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def long_prompt(words: int = 300) -> str:
    return "BEGIN of the documents. " + " ".join(f"filler{i}" for i in range(words)) + "\n\n" + QUESTION


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def end_ids(tokenizer):
    return end_of_turn_ids(tokenizer)


def tiny_params(**overrides) -> FinetuneSettings:
    values = dict(
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        epochs=1,
        batch_size=2,
        grad_accum=1,
        max_tokens=512,
        lr_scheduler="constant",
        seed=7,
    )
    values.update(overrides)
    return FinetuneSettings(**values)


# --- masking and length handling -------------------------------------------------------------------------------


def test_labels_are_exactly_the_answer_and_end_of_turn(tokenizer, end_ids):
    messages = chat("Where is the archive?\n" + QUESTION, ANSWER)
    encoded = encode_chat(tokenizer, messages, end_ids)
    prompt_ids, answer_ids = encoded.prompt_ids, encoded.answer_ids
    example = prepare_examples(
        [(1, {"id": "a", "messages": messages})], tokenizer, max_tokens=None, overlength="drop", end_ids=end_ids
    ).examples[0]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    expected_answer = tokenizer(ANSWER, add_special_tokens=False)["input_ids"] + [im_end]

    assert [t for t in example.labels if t != IGNORE_INDEX] == expected_answer
    assert example.labels[: len(prompt_ids)] == [IGNORE_INDEX] * len(prompt_ids)
    assert example.labels[len(prompt_ids) :] == expected_answer  # contiguous, at the very end
    assert example.input_ids == prompt_ids + answer_ids
    # The input is the model's own rendering of the conversation (the template's trailing newline excluded).
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False).rstrip("\n")
    assert tokenizer.decode(prompt_ids).endswith(QUESTION + "<|im_end|>\n<|im_start|>assistant\n")


def test_every_assistant_turn_of_a_conversation_is_trained(tokenizer, end_ids):
    """LongAlign's rule for multi-turn general data: loss on each assistant turn, not only the last."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And another?"},
        {"role": "assistant", "content": "Green."},
    ]
    example = prepare_examples(
        [(1, {"id": "c", "messages": messages})], tokenizer, max_tokens=None, overlength="drop", end_ids=end_ids
    ).examples[0]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    spans, current = [], []
    for token, label in zip(example.input_ids, example.labels):
        if label != IGNORE_INDEX:
            assert label == token  # labels are the tokens at their own positions
            current.append(label)
        elif current:
            spans.append(current)
            current = []
    spans.append(current)
    words = [tokenizer(text, add_special_tokens=False)["input_ids"] + [im_end] for text in ("Blue.", "Green.")]
    assert spans == words
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(messages, tokenize=False).rstrip("\n")

    # Cut in the middle, the labels stay on their tokens; the last answer is never cut.
    cut = prepare_examples(
        [(1, {"id": "c", "messages": messages})],
        tokenizer,
        max_tokens=len(example) - 20,
        overlength="truncate_middle",
        end_ids=end_ids,
    ).examples[0]
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(cut.input_ids, cut.labels))
    assert cut.labels[-len(words[1]) :] == words[1]


def test_template_whose_prompt_is_not_a_prefix_is_refused(tokenizer, end_ids):
    broken = tokenizer.__class__.from_pretrained(tokenizer.name_or_path)
    broken.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>model\n{% endif %}"
    )
    with pytest.raises(TemplateError, match="generation prompt is not what it writes before the answer"):
        encode_chat(broken, chat("hi", "hello"), end_ids)


class _WordTokenizer:
    """A newline is a token of its own unless spaces follow it: then it merges with the next word (like BPE)."""

    eos_token_id = 0

    def __init__(self):
        self.vocab = {"<eos>": 0}

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"[{m['role']}]\n{m['content']}<eos>" for m in messages)
        return text + ("[assistant]\n" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        pieces = re.findall(r"<eos>|\n(?! )|[ \n]*[^\s<]+|\s+", text)
        return {"input_ids": [self.vocab.setdefault(piece, len(self.vocab)) for piece in pieces]}

    def convert_ids_to_tokens(self, ids):
        tokens = {index: piece for piece, index in self.vocab.items()}
        return [tokens[index] for index in ids]


def test_an_answer_that_merges_with_its_prompt_keeps_its_own_tokens():
    """Tokenized whole, `\n` + `  hello` would merge across the prompt/answer boundary (as BPE merges `[/INST]` with a
    quote or a newline); encoded by segments, the answer's tokens are its own and the prompt's are the prompt's."""
    tokenizer = _WordTokenizer()
    for answer in ("hello", "  hello", " hello"):
        encoded = encode_chat(tokenizer, chat("hi", answer), {0})
        prompt = tokenizer.apply_chat_template(chat("hi", answer)[:1], add_generation_prompt=True)
        assert encoded.prompt_ids == tokenizer(prompt)["input_ids"]  # as evaluation tokenizes the prompt
        assert encoded.answer_ids == tokenizer(answer)["input_ids"] + [0]
    data = prepare_examples(
        [(3, {"id": "x", "messages": chat("hi", " hello")})],
        tokenizer,
        max_tokens=None,
        overlength="drop",
        end_ids={0},
        path="mix.jsonl",
    )
    assert [label for label in data.examples[0].labels if label != IGNORE_INDEX] == tokenizer(" hello")["input_ids"] + [
        0
    ]


def test_truncate_middle_keeps_prompt_ends_and_whole_answer(tokenizer, end_ids):
    long_messages = chat(long_prompt(), ANSWER)
    encoded = encode_chat(tokenizer, long_messages, end_ids)
    prompt_ids, answer_ids = encoded.prompt_ids, encoded.answer_ids
    max_tokens = 400
    assert len(prompt_ids) + len(answer_ids) > max_tokens  # the fixture really is over-long
    records = [(1, {"id": "long", "messages": long_messages}), (2, {"id": "short", "messages": chat("hi", "yo")})]
    data = prepare_examples(records, tokenizer, max_tokens=max_tokens, overlength="truncate_middle", end_ids=end_ids)

    long_example, short_example = data.examples
    assert len(long_example.input_ids) <= max_tokens
    assert long_example.input_ids[-len(answer_ids) :] == answer_ids
    assert [t for t in long_example.labels if t != IGNORE_INDEX] == answer_ids
    text = tokenizer.decode(long_example.input_ids)
    assert text.startswith("<|im_start|>system\n")
    assert "BEGIN of the documents." in text
    assert text.endswith(QUESTION + "<|im_end|>\n<|im_start|>assistant\n" + ANSWER + "<|im_end|>")
    assert "filler150 " not in text  # the middle is gone
    assert long_example.removed_tokens == len(prompt_ids) + len(answer_ids) - len(long_example.input_ids) > 0
    assert data.truncated == ["long"] and data.dropped == []
    assert short_example.removed_tokens == 0
    counts = data.counts()
    assert (counts["samples_truncated"], counts["samples_dropped"], counts["samples_used"]) == (1, 0, 2)
    assert counts["prompt_tokens_removed"] == long_example.removed_tokens


def test_truncate_middle_never_cuts_the_answer():
    prompt, answer = list(range(100)), list(range(1000, 1090))
    assert fit_length(prompt, answer, 100, "truncate_middle") is None  # only 10 prompt tokens would remain
    kept, removed = fit_length(prompt, answer, 150, "truncate_middle")
    assert kept == prompt[:30] + prompt[-30:] and removed == 40
    assert fit_length(prompt, answer, 190, "truncate_middle") == (prompt, 0)


def test_drop_skips_overlong_samples(tokenizer, end_ids):
    records = [
        (1, {"id": "long", "messages": chat(long_prompt(), ANSWER)}),
        (2, {"id": "short", "messages": chat("hi", "yo")}),
    ]
    data = prepare_examples(records, tokenizer, max_tokens=400, overlength="drop", end_ids=end_ids)
    assert [example.id for example in data.examples] == ["short"]
    assert data.dropped == ["long"] and data.truncated == []
    assert data.counts()["samples_dropped"] == 1
    with pytest.raises(InputError, match="all 1 samples"):
        prepare_examples(records[:1], tokenizer, max_tokens=400, overlength="drop", end_ids=end_ids)


def test_collator_pads_labels_with_ignore_index():
    batch = PadCollator(pad_token_id=9)(
        [{"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}, {"input_ids": [4], "labels": [4]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3], [4, 9, 9]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 2, 3], [4, -100, -100]]


# --- bad input -------------------------------------------------------------------------------------------------

GOOD = {"id": "ok", "task": "qa", "messages": chat("q", "a")}


@pytest.mark.parametrize(
    "rows, pattern",
    [
        ([GOOD, {"id": "b", "task": "qa"}], r"line 2, field 'messages': missing"),
        (
            [
                GOOD,
                "",
                {"id": "c", "messages": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "q"}]},
            ],
            r"line 3, field 'messages\[0\]\.role': expected role 'user', got 'assistant'",
        ),
        (
            [{"id": "d", "messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q"}]}],
            r"line 1, field 'messages\[1\]\.role'",
        ),
        (
            [{"id": "e", "messages": [{"role": "user", "content": "q"}, {"role": "assistant"}]}],
            r"line 1, field 'messages\[1\]\.content'",
        ),
        ([{"id": "f", "messages": chat("q", "  ")}], r"line 1, field 'messages\[1\]\.content': empty answer"),
        ([{"id": "g", "messages": [{"role": "user", "content": "q"}]}], r"line 1, field 'messages'"),
        ([], r"empty"),
    ],
)
def test_bad_input_names_file_line_and_field(tmp_path, rows, pattern):
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(InputError, match=pattern) as caught:
        load_chat_records(path)
    assert str(path) in str(caught.value)


def _stage_main():
    spec = importlib.util.spec_from_file_location("finetune_stage", ROOT / "stages" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def test_stage_stops_on_bad_input_before_loading_the_model(tmp_path, tiny_model_dir, capsys):
    train_path = write_jsonl(tmp_path / "train.jsonl", [GOOD, {"id": "x", "messages": [{"role": "user"}]}])
    params = tmp_path / "params.yaml"
    params.write_text("finetune:\n  max_steps: 1\n", encoding="utf-8")
    code = _stage_main()(
        [
            "--model",
            str(tiny_model_dir),
            "--train",
            str(train_path),
            "--adapter",
            str(tmp_path / "adapter"),
            "--metrics",
            str(tmp_path / "train.json"),
            "--live-dir",
            str(tmp_path / "live"),
            "--checkpoints",
            str(tmp_path / "checkpoints"),
            "--params",
            str(params),
        ]
    )
    assert code == 2
    assert f"{train_path}, line 2, field 'messages" in capsys.readouterr().err
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "train.json").exists()


def test_stage_runs_from_params_file(tmp_path, tiny_model_dir, capsys):
    train_path = write_jsonl(tmp_path / "train.jsonl", [GOOD, {**GOOD, "id": "ok2"}])
    params = tmp_path / "params.yaml"
    # Another stage's section, invalid for that stage: the finetune stage reads its own only.
    other = "mix: {variant: not-a-variant}\n"
    params.write_text(other + "finetune:\n  max_steps: 2\n  batch_size: 1\n  grad_accum: 1\n  lora_r: 2\n")
    out = tmp_path / "out"
    code = _stage_main()(
        [
            "--model",
            str(tiny_model_dir),
            "--train",
            str(train_path),
            "--adapter",
            str(out / "adapter"),
            "--metrics",
            str(out / "train.json"),
            "--live-dir",
            str(out / "live"),
            "--checkpoints",
            str(out / "checkpoints"),
            "--params",
            str(params),
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "finetune (cpu, lora): 2 steps" in capsys.readouterr().out
    assert list((out / "checkpoints").iterdir()) == []  # the persistent output exists, emptied by a finished run
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 2
    summary = json.loads((out / "train.json").read_text())
    assert summary["steps"] == 2 and {"python", "torch", "transformers", "peft"} <= set(summary["versions"])
    assert (out / "live" / "plots" / "metrics" / "loss.tsv").is_file()


def test_params_are_validated(tmp_path):
    with pytest.raises(InputError, match=r"field 'finetune.lora_rank'"):
        FinetuneSettings.from_mapping({"lora_rank": 8})
    with pytest.raises(InputError, match=r"field 'finetune.overlength'"):
        FinetuneSettings.from_mapping({"overlength": "truncate_left"})
    with pytest.raises(InputError, match=r"field 'finetune.batch_size'"):
        FinetuneSettings.from_mapping({"batch_size": 1.5})
    params = FinetuneSettings.from_mapping({"target_modules": ["q_proj", "v_proj"], "epochs": 2, "max_tokens": 64})
    assert params.target_modules == ("q_proj", "v_proj") and params.epochs == 2.0
    assert params.as_dict()["target_modules"] == ["q_proj", "v_proj"]


# --- training --------------------------------------------------------------------------------------------------


def test_answer_only_loss_equals_the_models_own_loss(tiny_model_dir, tokenizer, end_ids):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    records = [
        (1, {"id": "a", "messages": chat("Where is it?", ANSWER)}),
        (2, {"id": "b", "messages": chat(long_prompt(20), "Tartu, in Estonia, by the river.")}),
    ]
    examples = prepare_examples(records, tokenizer, max_tokens=None, overlength="drop", end_ids=end_ids).examples
    batch = PadCollator(tokenizer.pad_token_id)(examples)
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # really padded
    with torch.no_grad():
        reference = model(**batch).loss
        loss, outputs = answer_only_loss(model, batch)
        summed, _ = answer_only_loss(model, batch, num_items_in_batch=torch.tensor(100))
    answer_tokens = sum(example.target_tokens for example in examples)
    assert outputs.logits.shape == (answer_tokens, model.config.vocab_size)  # only the answer positions
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert summed.item() == pytest.approx(reference.item() * answer_tokens / 100, rel=1e-5)


def _logits(model, tokenizer, text):
    import torch

    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_training_writes_adapter_metrics_and_live_logs(tmp_path, tiny_model_dir, tokenizer):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train_path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": f"s{i}", "task": "qa", "messages": chat(long_prompt(40 + 30 * i), f"Answer number {i}.")}
            for i in range(6)
        ],
    )
    adapter, metrics, live = tmp_path / "adapter", tmp_path / "metrics" / "train.json", tmp_path / "live"
    summary = train(
        tiny_model_dir, train_path, adapter, metrics, tiny_params(max_tokens=300, max_steps=3), live_dir=live
    )

    assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    modules = json.loads((adapter / "adapter_config.json").read_text())["target_modules"]
    assert modules == sorted(modules) and len(modules) > 1  # not in set (hash) order: byte-identical adapters
    assert not list(tmp_path.glob(".adapter*"))  # no temporary left behind
    umask = os.umask(0)
    os.umask(umask)
    assert adapter.stat().st_mode & 0o777 == 0o777 & ~umask  # the usual mode, not mkdtemp's 0700
    written = json.loads(metrics.read_text())
    assert SUMMARY_KEYS <= set(written)
    assert written["steps"] == 3 and written["samples_total"] == 6 and written["samples_used"] == 6
    assert written["samples_truncated"] >= 1 and written["max_sample_tokens"] <= 300
    assert written["samples_seen"] == 6 and 0 < written["target_tokens"] < written["trained_tokens"]
    assert math.isfinite(written["final_loss"]) and written["tokens_per_second"] > 0
    assert written["final_loss"] == summary["final_loss"]

    provenance = json.loads((adapter / "provenance.json").read_text())
    assert provenance["train_data_sha256"] == sha256_file(train_path)
    assert provenance["base_model"] == str(tiny_model_dir)
    assert provenance["params"]["max_steps"] == 3 and provenance["counts"]["samples_used"] == 6
    assert provenance["base_model_sha256"]["model.safetensors"] == sha256_file(tiny_model_dir / "model.safetensors")

    rows = (live / "plots" / "metrics" / "loss.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["step", "loss"] and [r.split("\t")[0] for r in rows[1:]] == ["1", "2", "3"]
    for name in ("learning_rate", "tokens_per_second", "peak_memory_mb"):
        assert len((live / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()) == 4
    assert sorted(p.relative_to(live).as_posix() for p in live.rglob("*") if p.is_file()) == [
        f"plots/metrics/{name}.tsv"
        for name in ("grad_norm", "learning_rate", "loss", "peak_memory_mb", "tokens_per_second")
    ]

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    text = tokenizer.apply_chat_template(chat("hi", "Answer number 1."), tokenize=False)
    before = _logits(base, tokenizer, text)
    tuned = PeftModel.from_pretrained(base, adapter).eval()
    assert (_logits(tuned, tokenizer, text) - before).abs().max().item() > 1e-3
    with tuned.disable_adapter():
        assert torch.allclose(_logits(tuned, tokenizer, text), before)


def test_live_log_matches_dvclive_layout(tmp_path, monkeypatch):
    from ctxsynth.finetune.train import LiveLog

    pytest.importorskip("dvclive", reason="dvclive is not installed: nothing to compare the layout with")
    from dvclive import Live

    monkeypatch.chdir(tmp_path)  # outside any git/DVC repository: dvclive leaves the project alone
    reference = Live(dir="ref", dvcyaml=None, save_dvc_exp=False, report=None)
    ours = LiveLog(tmp_path / "ours")
    for step, (loss, rate) in enumerate([(2.5, 1e-4), (1.25, 2e-4), (0.1 + 0.2, 3e-5)], start=1):
        reference.step = step
        reference.log_metric("loss", loss)
        reference.log_metric("learning_rate", rate)
        reference.next_step()
        ours.log(step, {"loss": loss, "learning_rate": rate})
    reference.end()
    for name in ("loss", "learning_rate"):
        expected = (tmp_path / "ref" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines()
        assert (tmp_path / "ours" / "plots" / "metrics" / f"{name}.tsv").read_text().splitlines() == expected


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`", "ignore:Setting `save_embedding_layers`")
def test_loss_falls_when_overfitting_two_samples(tmp_path, tiny_model_dir):
    train_path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": "a", "task": "qa", "messages": chat("Where is the archive?", ANSWER)},
            {"id": "b", "task": "qa", "messages": chat("What is the code?", "The code is 4821.")},
        ],
    )
    # The tiny model's tied embeddings are ~0.02 and its final norm is frozen, which caps its logits below 1: only an
    # adapter on lm_head can move the loss far from ln(vocab). This also exercises an explicit target_modules list.
    modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    summary = train(
        tiny_model_dir,
        train_path,
        tmp_path / "adapter",
        None,
        tiny_params(max_steps=20, learning_rate=1e-2, lora_r=8, lora_alpha=16, target_modules=modules),
    )
    assert summary["steps"] == 20 and summary["samples_seen"] == 40
    assert summary["first_loss"] > 5.0  # near ln(259): the untrained model knows nothing
    assert summary["final_loss"] < 0.5 * summary["first_loss"], summary


def test_runs_are_deterministic_and_checkpointing_does_not_change_the_math(tmp_path, tiny_model_dir):
    train_path = write_jsonl(
        tmp_path / "train.jsonl",
        [
            {"id": f"s{i}", "task": "qa", "messages": chat(f"Question {i}: " + "why? " * i, f"Answer {i}.")}
            for i in range(4)
        ],
    )

    def losses(name, **overrides):
        train(
            tiny_model_dir,
            train_path,
            tmp_path / name,
            None,
            tiny_params(max_steps=3, lora_dropout=0.1, **overrides),
            live_dir=None,
        )
        return json.loads((tmp_path / name / "provenance.json").read_text())["final_loss"]

    first, again = losses("a"), losses("b")
    assert first == again
    assert losses("full-logits", answer_logits_only=False) == pytest.approx(first, rel=1e-4)
    assert losses("gc", gradient_checkpointing=True) == pytest.approx(first, rel=1e-4)
    assert losses("other-seed", seed=8) != first


def test_stale_gguf_quantization_config_does_not_block_training(tmp_path, tiny_model_dir):
    import shutil

    model_dir = shutil.copytree(tiny_model_dir, tmp_path / "model")
    config = json.loads((model_dir / "config.json").read_text())
    config["quantization_config"] = {"dequantize": False, "gguf_file": "model.Q4_1.gguf", "quant_method": "gguf"}
    (model_dir / "config.json").write_text(json.dumps(config))
    train_path = write_jsonl(tmp_path / "train.jsonl", [{"id": "a", "task": "qa", "messages": chat("q", "a")}])
    summary = train(model_dir, train_path, tmp_path / "adapter", None, tiny_params(max_steps=1))
    assert summary["steps"] == 1 and summary["quantization"] == "none"


def test_nf4_qlora_runs_on_cpu(tmp_path, tiny_model_dir):
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        pytest.skip("bitsandbytes is not installed: the nf4 (QLoRA) path cannot run (pip install 'ctxsynth[quant]')")
    params = tiny_params(quantization="nf4", max_steps=2)
    model = load_model(tiny_model_dir, params, "cpu")
    quantized = [
        name
        for name, module in model.named_modules()
        if type(module).__module__.startswith("bitsandbytes") and type(module).__name__ == "Linear4bit"
    ]
    assert len(quantized) == 14  # 7 linear layers x 2 blocks, all wrapped by LoRA
    assert all(".base_layer" in name for name in quantized)

    train_path = write_jsonl(
        tmp_path / "train.jsonl",
        [{"id": f"s{i}", "task": "qa", "messages": chat(f"Question {i}?", f"Answer {i}.")} for i in range(4)],
    )
    summary = train(tiny_model_dir, train_path, tmp_path / "adapter", tmp_path / "train.json", params)
    assert summary["steps"] == 2 and summary["quantization"] == "nf4" and math.isfinite(summary["final_loss"])
    assert summary["compute_dtype"] == "float32"
    assert (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size > 0


def test_training_draws_a_progress_bar_with_loss_and_speed(tmp_path, tiny_model_dir, monkeypatch):
    import io

    from rich.console import Console
    from rich.progress import Progress

    from ctxsynth.finetune import trainer

    bars: list[Progress] = []
    columns = trainer.stage_progress().columns

    def recording_progress(**_):
        bars.append(Progress(*columns, console=Console(file=io.StringIO(), width=160)))
        return bars[-1]

    monkeypatch.setattr(trainer, "interactive", lambda: True)
    monkeypatch.setattr(trainer, "stage_progress", recording_progress)
    train_path = write_jsonl(
        tmp_path / "train.jsonl", [{"id": f"s{i}", "messages": chat(f"question {i}", f"answer {i}")} for i in range(4)]
    )
    train(tiny_model_dir, train_path, tmp_path / "adapter", None, tiny_params(max_steps=2, logging_steps=1))
    (task,) = bars[0].tasks
    assert task.description == "finetune" and task.total == 2 and task.completed == 2 and task.finished
    assert re.fullmatch(r"loss \d+\.\d{4}  lr \S+  [\d,]+ tok/s", task.fields["stats"])


@pytest.fixture(scope="module")
def base_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model as a base checkpoint: no chat template of its own (as Llama-3.1-8B base, LLaMA-2-7B-64K)."""
    import shutil

    directory = tmp_path_factory.mktemp("tiny-base")
    shutil.copytree(tiny_model_dir, directory, dirs_exist_ok=True)
    (directory / "chat_template.jinja").unlink()
    return directory


def test_a_base_model_needs_a_named_chat_template(tmp_path, base_model_dir):
    train_path = write_jsonl(tmp_path / "train.jsonl", [{"id": "s0", "messages": chat("question", "answer")}])
    with pytest.raises(InputError) as error:
        train(base_model_dir, train_path, tmp_path / "adapter", None, tiny_params(max_steps=1))
    assert error.value.field == "finetune.chat_template" and "longalign" in str(error.value)
    with pytest.raises(InputError, match="unknown chat template 'vicuna'"):
        train(base_model_dir, train_path, tmp_path / "adapter", None, tiny_params(max_steps=1, chat_template="vicuna"))


def test_base_model_trains_in_the_longalign_format(tmp_path, base_model_dir):
    from transformers import AutoTokenizer

    from ctxsynth.core.chat import apply_chat_template_choice

    tokenizer = AutoTokenizer.from_pretrained(base_model_dir)
    assert apply_chat_template_choice(tokenizer, "longalign", "finetune.chat_template") == "longalign@v1"
    messages = [{"role": "system", "content": "Be brief."}] + chat("Q1", "A1") + chat("Q2", "A2")
    bos, eos = tokenizer.bos_token or "", tokenizer.eos_token
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        f"{bos}[INST]Be brief.\n\nQ1[/INST]A1{eos}\n\n[INST]Q2[/INST]A2{eos}"
    )
    assert tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True).endswith(
        "[INST]Q2[/INST]"
    )
    train_path = write_jsonl(
        tmp_path / "train.jsonl", [{"id": f"s{i}", "messages": chat(f"question {i}", f"answer {i}")} for i in range(2)]
    )
    train(base_model_dir, train_path, tmp_path / "adapter", None, tiny_params(max_steps=1, chat_template="longalign"))
    provenance = json.loads((tmp_path / "adapter" / "provenance.json").read_text())
    assert provenance["chat_template"] == "longalign@v1" and provenance["params"]["chat_template"] == "longalign"


def test_only_the_main_process_clears_and_writes_the_live_log(tmp_path, monkeypatch):
    """Every rank building the log cleared its directory while another recreated it: rank 1 died with FileExistsError
    (CI of 0fb2cb3, the pilot's distributed rehearsal row). Other ranks open none."""
    from ctxsynth.finetune.train import main_process_live_log

    earlier = tmp_path / "live" / "plots" / "metrics" / "loss.tsv"
    earlier.parent.mkdir(parents=True)
    earlier.write_text("step\tloss\n0\t1.0\n", encoding="utf-8")
    monkeypatch.setenv("RANK", "1")
    assert main_process_live_log(tmp_path / "live") is None and earlier.exists()
    monkeypatch.setenv("RANK", "0")
    assert main_process_live_log(tmp_path / "live") is not None and not earlier.exists()
    assert main_process_live_log(None) is None
