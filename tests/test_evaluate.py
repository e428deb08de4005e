"""The evaluate stage: scoring through lm-eval's own loader, middle truncation, input errors, end to end runs."""

import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import yaml

from ctxsynth.core.io import InputError
from ctxsynth.core.scoring import delta, niah_recall, score_prediction, summarize
from ctxsynth.core.tasks import get_task
from ctxsynth.evaluate.lm_eval_runner import LmEvalTask, base_task_yaml, render_task_dir
from ctxsynth.evaluate.run import evaluate, find_sources, load_benchmark, middle_truncate
from ctxsynth.evaluate.settings import EvalSettings


@pytest.fixture(scope="module")
def process_results():
    """The process_results function exactly as lm-eval resolves `!function utils.process_results`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(base_task_yaml())["process_results"]


def score(process_results, metric, prediction, answers):
    return process_results({"metric": metric, "answers": answers}, [prediction])["score"]


# ---- scoring -----------------------------------------------------------------------------------------------------


def test_qa_f1_hand_computed(process_results):
    # "The cat sat" -> normalized tokens [cat, sat]; "a cat" -> [cat]: P = 1/2, R = 1, F1 = 2PR/(P+R) = 2/3
    assert score(process_results, "qa_f1", "The cat sat", ["a cat"]) == pytest.approx(2 / 3)
    # "New York City." -> [new, york, city] vs [york]: P = 1/3, R = 1, F1 = 1/2; best over answers
    assert score(process_results, "qa_f1", "New York City.", ["Boston", "York"]) == pytest.approx(0.5)
    # punctuation, case and articles are ignored: exact match after normalization
    assert score(process_results, "qa_f1", "  The Eiffel Tower!\n", ["eiffel tower"]) == pytest.approx(1.0)
    # [cat, sat, on, mat] vs [dog, sat, on, rug]: 2 common, P = R = 1/2, F1 = 1/2
    assert score(process_results, "qa_f1", "the cat sat on the mat", ["a dog sat on a rug"]) == pytest.approx(0.5)
    assert score(process_results, "qa_f1", "Paris", ["London"]) == 0.0


def test_rouge_l_hand_computed(process_results):
    # LCS of "the cat sat on a mat" / "the cat is on a mat" = "the cat on a mat": 5 of 6 words each side,
    # P = R = 5/6, so ROUGE-L F = 5/6
    assert score(process_results, "rouge_l", "the cat sat on a mat", ["the cat is on a mat"]) == pytest.approx(
        5 / 6, abs=1e-6
    )
    # The `rouge` package (LongBench's choice) counts DISTINCT words (exclusive n-grams): with "the" twice, both
    # sides have 5 distinct words and the LCS "the cat on the mat" has 4 distinct ones: P = R = F = 4/5, not 5/6
    assert score(process_results, "rouge_l", "the cat sat on the mat", ["the cat is on the mat"]) == pytest.approx(
        4 / 5, abs=1e-6
    )
    assert score(process_results, "rouge_l", "", ["a summary"]) == 0.0  # empty prediction scores 0, no crash


def thudm_rouge_score(prediction: str, ground_truth: str) -> float:
    """THUDM LongBench metrics.py `rouge_score`: the `rouge` package on the strings exactly as given."""
    from rouge import Rouge

    try:
        return Rouge().get_scores([prediction], [ground_truth], avg=True)["rouge-l"]["f"]
    except ValueError:  # THUDM catches everything here: an empty hypothesis scores 0
        return 0.0


def test_rouge_l_scores_the_prediction_as_generated_like_thudm(process_results):
    # THUDM's eval.py: max over answers of rouge_score(prediction, answer), with no strip of the prediction. A model
    # that ends its summary with blank lines scores 10/13 here, not the 5/6 of the stripped text.
    prediction, answers = "The report says costs rose.\n\n", ["The report says the costs rose sharply.", "Costs fell."]
    expected = max(thudm_rouge_score(prediction, answer) for answer in answers)
    stripped = max(thudm_rouge_score(prediction.strip(), answer) for answer in answers)
    assert expected == pytest.approx(10 / 13) and stripped == pytest.approx(5 / 6)
    assert score(process_results, "rouge_l", prediction, answers) == pytest.approx(expected, abs=1e-12)
    assert score(process_results, "rouge_l", "\n", answers) == 0.0
    assert score(process_results, "rouge_l", "anything", []) == 0.0  # THUDM starts from 0 when no answer is given


def test_niah_recall(process_results):
    assert score(
        process_results, "niah_recall", "The numbers are 123 and 456.", ["123", "456", "789"]
    ) == pytest.approx(2 / 3)
    assert niah_recall("ANSWER: Key-ABC", ["key-abc"]) == 1.0  # case-insensitive substring
    assert niah_recall("nothing here", ["4821"]) == 0.0
    with pytest.raises(ValueError):
        niah_recall("x", [])
    with pytest.raises(ValueError, match="unknown metric"):
        score_prediction("bleu", "x", ["x"])


def test_summary_categories_overall_and_delta():
    names = ("squad_long", "narrativeqa", "hotpotqa_long", "niah_single")
    categories = {name: get_task(name).category for name in names}
    base = summarize(dict(zip(names, (50.0, 30.0, 20.0, 80.0))), categories)
    assert base["categories"] == {"single_doc_qa": 40.0, "multi_doc_qa": 20.0, "retrieval": 80.0}
    assert base["overall"] == 45.0  # unweighted mean of the 4 tasks, not of the 3 categories (46.67)
    tuned = summarize(dict(zip(names, (60.0, 30.0, 10.0, 100.0))), categories)
    assert delta(base, tuned) == {
        "overall": 5.0,
        "tasks": {"squad_long": 10.0, "narrativeqa": 0.0, "hotpotqa_long": -10.0, "niah_single": 20.0},
    }
    assert delta(base, None) is None and summarize({}, {})["overall"] is None


# ---- middle truncation -------------------------------------------------------------------------------------------


def test_middle_truncation_keeps_first_and_last_halves(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "".join(chr(ord("a") + i % 26) for i in range(100))  # byte-level tokenizer: one token per letter
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == 100
    for max_length in (10, 11):
        kept, original, truncated = middle_truncate(tokenizer, text, max_length)
        head, tail = max_length // 2, max_length - max_length // 2
        assert (original, truncated) == (100, True)
        assert tokenizer(kept, add_special_tokens=False)["input_ids"] == ids[:head] + ids[-tail:]
        assert kept == text[:head] + text[-tail:]
    assert middle_truncate(tokenizer, text, 100) == (text, 100, False)


# ---- input validation --------------------------------------------------------------------------------------------


def longbench_doc(task, index, context, question, answers):
    return {
        "_id": f"{task}-{index}",
        "input": question,
        "context": context,
        "answers": answers,
        "length": len(context.split()),
        "dataset": task,
        "language": "en",
        "all_classes": None,
    }


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_missing_answers_names_file_line_field(tmp_path):
    good = json.dumps(longbench_doc("squad_long", 0, "ctx", "q?", ["a"]))
    bad = longbench_doc("squad_long", 1, "ctx", "q?", ["a"])
    del bad["answers"]
    path = write_lines(tmp_path / "squad_long.jsonl", [good, json.dumps(bad)])
    with pytest.raises(InputError) as error:
        load_benchmark(path, "squad_long")
    assert (error.value.line, error.value.field) == (2, "answers")
    assert str(path) in str(error.value)


def test_malformed_line_and_bad_fields(tmp_path):
    good = json.dumps(longbench_doc("squad_long", 0, "ctx", "q?", ["a"]))
    path = write_lines(tmp_path / "squad_long.jsonl", [good, "", good, '{"_id": "x", "input": '])
    with pytest.raises(InputError, match="line 4") as error:
        load_benchmark(path, "squad_long")
    assert "malformed JSON" in str(error.value)

    empty = json.dumps(longbench_doc("squad_long", 1, "ctx", "q?", []))
    with pytest.raises(InputError) as error:  # a blank line before it: the message still gives the file's line
        load_benchmark(write_lines(tmp_path / "b.jsonl", [good, "", empty]), "squad_long")
    assert (error.value.line, error.value.field) == (3, "answers")

    other = json.dumps(longbench_doc("niah_single", 1, "ctx", "q?", ["a"]))
    with pytest.raises(InputError) as error:
        load_benchmark(write_lines(tmp_path / "c.jsonl", [good, other]), "squad_long")
    assert (error.value.line, error.value.field) == (2, "dataset")

    with pytest.raises(InputError, match="unknown key"):
        EvalSettings.from_params({"max_len": 100})
    with pytest.raises(InputError, match="unknown task"):
        EvalSettings.from_params({"tasks": ["nope"]})


def test_longbench_tasks_are_read_from_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # outside the repository's dvc.yaml: a library call checks existence only
    settings = EvalSettings(
        tasks=["squad_long"], longbench_dir=str(tmp_path / "LongBench"), longbench_tasks=["hotpotqa", "qasper"]
    )
    (tmp_path / "LongBench" / "data").mkdir(parents=True)
    write_lines(tmp_path / "LongBench" / "data" / "hotpotqa.jsonl", ["{}"])
    write_lines(tmp_path / "LongBench" / "qasper.jsonl", ["{}"])  # the flat layout is read too
    assert find_sources(tmp_path / "bench", settings) == [
        ("squad_long", tmp_path / "bench" / "squad_long.jsonl"),
        ("hotpotqa", tmp_path / "LongBench" / "data" / "hotpotqa.jsonl"),
        ("qasper", tmp_path / "LongBench" / "qasper.jsonl"),
    ]


def test_a_missing_longbench_task_file_is_an_error_not_a_skip(tmp_path, monkeypatch):
    """Before: the task was left out with a warning, and the scores averaged fewer tasks than asked for."""
    monkeypatch.chdir(tmp_path)
    settings = EvalSettings(
        tasks=["squad_long"], longbench_dir=str(tmp_path / "LongBench"), longbench_tasks=["hotpotqa", "qasper"]
    )
    (tmp_path / "LongBench" / "data").mkdir(parents=True)
    write_lines(tmp_path / "LongBench" / "data" / "hotpotqa.jsonl", ["{}"])
    with pytest.raises(InputError) as error:
        find_sources(tmp_path / "bench", settings)
    assert error.value.path == str(tmp_path / "LongBench" / "data" / "qasper.jsonl")
    assert error.value.field == "evaluate.longbench_tasks[1]"
    assert "data.zip" in str(error.value) and "\n" not in str(error.value)


def test_a_missing_longbench_dir_is_an_error_not_a_skip(tmp_path, monkeypatch):
    """Before: a warning, and the LongBench tasks were silently missing from eval.json."""
    monkeypatch.chdir(tmp_path)
    settings = EvalSettings(tasks=["squad_long"], longbench_dir=str(tmp_path / "nowhere"))
    with pytest.raises(InputError) as error:
        find_sources(tmp_path, settings)
    assert (error.value.path, error.value.field) == ("params.yaml", "evaluate.longbench_dir")
    message = str(error.value)
    assert "nowhere" in message and "data.zip" in message and "lm_eval --tasks longbench_" in message


def test_a_missing_longbench_dir_stops_evaluate_before_the_model_is_read(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = EvalSettings(tasks=["squad_long"], longbench_dir="inputs/longbench/none")
    # The model directory does not exist either: the settings error comes first, before anything is loaded.
    with pytest.raises(InputError, match="evaluate.longbench_dir"):
        evaluate(tmp_path / "no-model", None, tmp_path, tmp_path / "e.json", tmp_path / "p.jsonl", settings)


def test_task_yaml_has_absolute_data_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    directory = render_task_dir([LmEvalTask("squad_long", Path("rel/data.jsonl"), 32)], Path("tasks"), 1)
    config = yaml.safe_load((directory / "ctxsynth_squad_long.yaml").read_text())
    assert Path(config["dataset_kwargs"]["data_files"]["test"]) == tmp_path / "rel" / "data.jsonl"
    assert Path(config["include"]).is_absolute() and config["generation_kwargs"]["max_gen_toks"] == 32


# ---- end to end through lm-eval with the tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def benchmark_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("benchmark")
    filler = "The quick brown fox jumps over the lazy dog. " * 12  # ~540 bytes = tokens (byte-level tokenizer)
    squad = [
        longbench_doc("squad_long", 0, "Paris is the capital of France.", "What is the capital?", ["Paris"]),
        longbench_doc(
            "squad_long",
            1,
            filler + "Mount Everest is 8848 m high." + filler,
            "How high is Everest?",
            ["8848 m", "8,848 metres"],
        ),
        longbench_doc("squad_long", 2, "Water boils at 100 C.", "When does water boil?", ["100 C"]),
    ]
    niah = [
        dict(
            longbench_doc(
                "niah_single",
                i,
                filler[: 100 * (i + 1)] + f"The magic number is {4000 + i}.",
                "What is the magic number?",
                [str(4000 + i)],
            ),
            niah_length=100 * (1 + i // 2),
            niah_depth=1.0,
        )
        for i in range(3)
    ]
    for task, docs in (("squad_long", squad), ("niah_single", niah)):
        write_lines(directory / f"{task}.jsonl", [json.dumps(doc) for doc in docs])
    return directory


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    # init_lora_weights=False: random A and B, so the adapter really changes the outputs
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj", "down_proj"], init_lora_weights=False)
    )
    directory = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(directory)
    return directory


def test_end_to_end_base_and_adapter(tiny_model_dir, adapter_dir, benchmark_dir, tmp_path):
    settings = EvalSettings(tasks=["squad_long", "niah_single"], max_length=512, batch_size=2, device="cpu")
    metrics, predictions = tmp_path / "metrics" / "eval.json", tmp_path / "eval" / "predictions.jsonl"
    plot = tmp_path / "plots" / "niah.json"
    report = evaluate(tiny_model_dir, adapter_dir, benchmark_dir, metrics, predictions, settings, niah_plot_path=plot)

    written = json.loads(metrics.read_text())
    assert written == report
    assert set(written) == {"base", "finetuned", "delta", "versions"}
    assert {"python", "torch", "transformers", "lm_eval"} <= set(written["versions"])
    for variant in ("base", "finetuned"):
        assert set(written[variant]) == {"tasks", "categories", "overall"}
        assert set(written[variant]["tasks"]) == {"squad_long", "niah_single"}
        assert set(written[variant]["categories"]) == {"single_doc_qa", "retrieval"}
    assert set(written["delta"]) == {"overall", "tasks"}

    records = [json.loads(line) for line in predictions.read_text().splitlines()]
    assert len(records) == 12
    assert {(r["variant"], r["task"]) for r in records} == {
        (v, t) for v in ("base", "finetuned") for t in ("squad_long", "niah_single")
    }
    assert {r["_id"] for r in records} == {f"{t}-{i}" for t in ("squad_long", "niah_single") for i in range(3)}
    for record in records:  # every per-sample score is recomputable from the saved prediction
        expected = 100 * score_prediction(get_task(record["task"]).metric, record["prediction"], record["answers"])
        assert record["score"] == pytest.approx(expected, abs=1e-3)
        assert record["prompt_tokens"] <= 512
    long_doc = next(r for r in records if r["_id"] == "squad_long-1")
    assert long_doc["truncated"] and long_doc["original_tokens"] > 1000 and long_doc["prompt_tokens"] >= 500

    for variant in ("base", "finetuned"):  # task score = mean of its samples; overall = mean of tasks
        tasks = written[variant]["tasks"]
        for task in tasks:
            scores = [r["score"] for r in records if r["variant"] == variant and r["task"] == task]
            assert tasks[task] == pytest.approx(sum(scores) / 3, abs=1e-3)
        assert written[variant]["overall"] == pytest.approx(sum(tasks.values()) / 2, abs=1e-3)
        assert written[variant]["categories"]["retrieval"] == tasks["niah_single"]
    assert written["delta"]["overall"] == pytest.approx(
        written["finetuned"]["overall"] - written["base"]["overall"], abs=1e-3
    )
    base = [r["prediction"] for r in records if r["variant"] == "base"]
    tuned = [r["prediction"] for r in records if r["variant"] == "finetuned"]
    assert base != tuned, "the adapter was not applied: identical predictions"

    heatmap = json.loads(plot.read_text())  # docs 0 and 1 share the (100 words, depth 1.0) cell, doc 2 is alone
    assert [(row["model"], row["subtask"], row["length"], row["depth"]) for row in heatmap] == [
        (variant, "single", length, 1.0) for variant in ("base", "finetuned") for length in (100, 200)
    ]
    for row in heatmap:
        ids = ["niah_single-0", "niah_single-1"] if row["length"] == 100 else ["niah_single-2"]
        scores = [r["score"] for r in records if r["variant"] == row["model"] and r["_id"] in ids]
        assert row["recall"] == pytest.approx(sum(scores) / len(scores), abs=1e-3)


def test_a_merged_adapter_generates_what_the_unmerged_one_does(
    tiny_model_dir, adapter_dir, benchmark_dir, tmp_path, monkeypatch
):
    """merge_adapter folds LoRA into the weights (faster decoding): the model that generates is a plain model, not a
    PeftModel, and its greedy predictions are the unmerged adapter's. Each path has its own cache, so the second run
    generates again instead of reading the first one's."""
    from lm_eval.models import huggingface

    merged_models = []
    original = huggingface.HFLM.generate_until

    def record(self, requests, disable_tqdm=False):
        merged_models.append(type(self.model).__name__)
        return original(self, requests, disable_tqdm=disable_tqdm)

    monkeypatch.setattr(huggingface.HFLM, "generate_until", record)
    outputs = {}
    for merge in (True, False):
        settings = EvalSettings(
            tasks=["squad_long", "niah_single"], max_length=256, device="cpu", score_base=False, merge_adapter=merge
        )
        predictions, metrics = tmp_path / f"merge-{merge}.jsonl", tmp_path / "e.json"
        outputs[merge] = evaluate(tiny_model_dir, adapter_dir, benchmark_dir, metrics, predictions, settings)
    assert merged_models == ["LlamaForCausalLM", "PeftModel"]
    assert outputs[True] == outputs[False]
    assert (tmp_path / "merge-True.jsonl").read_bytes() == (tmp_path / "merge-False.jsonl").read_bytes()


def test_no_adapter_scores_base_only(tiny_model_dir, benchmark_dir, tmp_path, caplog):
    settings = EvalSettings(tasks=["niah_single"], max_length=128, limit=2, device="cpu")
    with caplog.at_level(logging.WARNING):
        report = evaluate(
            tiny_model_dir,
            tmp_path / "no-adapter",
            benchmark_dir,
            tmp_path / "eval.json",
            tmp_path / "predictions.jsonl",
            settings,
        )
    assert "scoring the base model only" in caplog.text
    assert report["finetuned"] is None and report["delta"] is None
    assert not math.isnan(report["base"]["overall"])
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 2


def test_model_problems_are_reported_before_loading(tiny_model_dir, benchmark_dir, tmp_path):
    import shutil

    stale = tmp_path / "stale-gguf"
    shutil.copytree(tiny_model_dir, stale)
    config = json.loads((stale / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gguf", "gguf_file": "model.gguf", "dequantize": False}
    (stale / "config.json").write_text(json.dumps(config))
    settings = EvalSettings(tasks=["niah_single"], device="cpu")
    with pytest.raises(InputError) as error:
        evaluate(stale, None, benchmark_dir, tmp_path / "e.json", tmp_path / "p.jsonl", settings)
    assert error.value.field == "quantization_config" and "config.json" in str(error.value)

    too_long = EvalSettings(tasks=["niah_single"], max_length=8190, device="cpu")  # window 8192
    with pytest.raises(InputError) as error:
        evaluate(tiny_model_dir, None, benchmark_dir, tmp_path / "e.json", tmp_path / "p.jsonl", too_long)
    assert error.value.field == "evaluate.max_length"
    assert not (tmp_path / "e.json").exists()


def test_generations_are_cached_per_model_content(tiny_model_dir, adapter_dir, benchmark_dir, tmp_path, monkeypatch):
    from lm_eval.models.huggingface import HFLM

    settings = EvalSettings(tasks=["niah_single"], max_length=128, limit=2, device="cpu")
    first = evaluate(tiny_model_dir, adapter_dir, benchmark_dir, tmp_path / "a.json", tmp_path / "a.jsonl", settings)

    def no_generation(self, *args, **kwargs):
        raise AssertionError("generated again although the cache holds every request")

    monkeypatch.setattr(HFLM, "generate_until", no_generation)
    again = evaluate(tiny_model_dir, adapter_dir, benchmark_dir, tmp_path / "b.json", tmp_path / "b.jsonl", settings)
    assert again == first and (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    # Other adapter weights are other content: they must generate.
    other = tmp_path / "other-adapter"
    shutil.copytree(adapter_dir, other)
    config = json.loads((other / "adapter_config.json").read_text())
    config["lora_dropout"] = 0.5  # inert at inference, but other content: a different cache
    (other / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(AssertionError, match="generated again"):
        evaluate(
            tiny_model_dir,
            other,
            benchmark_dir,
            tmp_path / "c.json",
            tmp_path / "c.jsonl",
            EvalSettings(tasks=["niah_single"], max_length=128, limit=2, device="cpu", score_base=False),
        )


def test_longbench_layout_fixture_end_to_end(tiny_model_dir, benchmark_dir, tmp_path, monkeypatch):
    """A hand-written directory in THUDM's release layout: its tasks run through lm-eval beside the offline ones,
    with the paper's per-task budgets (hotpotqa 32, gov_report 512 new tokens) and the chat template."""
    from ctxsynth.evaluate.lm_eval_runner import LmEvalRunner

    monkeypatch.chdir(tmp_path)  # outside the repository's dvc.yaml: a library call checks existence only
    data = tmp_path / "LongBench" / "data"
    data.mkdir(parents=True)
    hotpot = [
        {
            "input": "Which city hosts the tower?",
            "context": "Passage 1:\nThe tower stands in Paris.",
            "answers": ["Paris"],
            "length": 6,
            "dataset": "hotpotqa",
            "language": "en",
            "all_classes": None,
            "_id": "hp-a",
        },
        {
            "input": "Who wrote it?",
            "context": "Passage 1:\nIt was written by Ann.",
            "answers": ["Ann"],
            "length": 6,
            "dataset": "hotpotqa",
            "language": "en",
            "all_classes": None,
            "_id": "hp-b",
        },
    ]
    report = [
        {
            "input": "",
            "context": "The agency reviewed its budget and found savings.",
            "answers": ["The agency found savings in its budget."],
            "length": 8,
            "dataset": "gov_report",
            "language": "en",
            "all_classes": None,
            "_id": "gr-a",
        }
    ]
    write_lines(data / "hotpotqa.jsonl", [json.dumps(doc) for doc in hotpot])
    write_lines(data / "gov_report.jsonl", [json.dumps(doc) for doc in report])

    calls = []
    original_run = LmEvalRunner.run

    def spy(self, model_dir, tasks, settings, **kwargs):
        calls.append(({task.name: task.max_gen_toks for task in tasks}, settings.apply_chat_template))
        return original_run(self, model_dir, tasks, settings, **kwargs)

    monkeypatch.setattr(LmEvalRunner, "run", spy)
    settings = EvalSettings(
        tasks=["niah_single"],
        longbench_dir=str(tmp_path / "LongBench"),
        longbench_tasks=["hotpotqa", "gov_report"],
        max_length=256,
        device="cpu",
        cache=False,
    )
    result = evaluate(tiny_model_dir, None, benchmark_dir, tmp_path / "eval.json", tmp_path / "p.jsonl", settings)
    assert calls == [({"niah_single": 32, "hotpotqa": 32, "gov_report": 512}, True)]
    base = json.loads((tmp_path / "eval.json").read_text())["base"]
    assert base == result["base"]
    assert set(base["tasks"]) == {"niah_single", "hotpotqa", "gov_report"}
    assert set(base["categories"]) == {"retrieval", "multi_doc_qa", "summarization"}
    assert base["categories"]["summarization"] == base["tasks"]["gov_report"]
    assert base["overall"] == pytest.approx(sum(base["tasks"].values()) / 3, abs=1e-3)
    records = [json.loads(line) for line in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert sorted(r["_id"] for r in records if r["task"] != "niah_single") == ["gr-a", "hp-a", "hp-b"]
    for record in records:
        expected = 100 * score_prediction(get_task(record["task"]).metric, record["prediction"], record["answers"])
        assert record["score"] == pytest.approx(expected, abs=1e-3)


def test_a_fully_fine_tuned_model_is_scored_as_the_finetuned_row_with_its_own_cache(
    tiny_model_dir, benchmark_dir, tmp_path, monkeypatch
):
    """finetune.method: full writes a whole model to data/adapter (no adapter_config.json)."""
    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM

    full = tmp_path / "full-model"
    shutil.copytree(tiny_model_dir, full)
    settings = EvalSettings(tasks=["niah_single"], max_length=128, limit=2, device="cpu")
    same = evaluate(tiny_model_dir, full, benchmark_dir, tmp_path / "a.json", tmp_path / "a.jsonl", settings)
    assert same["finetuned"] == same["base"]  # the same weights score the same
    model = AutoModelForCausalLM.from_pretrained(full)
    with torch.no_grad():
        model.lm_head.weight.mul_(-1.0)  # other weights, same provenance: must not be served from the base cache
    model.save_pretrained(full)
    calls = []
    real = HFLM.generate_until

    def counting(self, requests, *args, **kwargs):
        calls.append(len(requests))
        return real(self, requests, *args, **kwargs)

    monkeypatch.setattr(HFLM, "generate_until", counting)
    evaluate(tiny_model_dir, full, benchmark_dir, tmp_path / "b.json", tmp_path / "b.jsonl", settings)
    assert calls == [2]  # the base row came from the cache, the changed full model generated


def test_progress_bar_counts_generations_and_leaves_scores_unchanged(
    tiny_model_dir, benchmark_dir, tmp_path, monkeypatch
):
    import io

    from rich.console import Console
    from rich.progress import Progress

    from ctxsynth.evaluate import lm_eval_runner

    settings = EvalSettings(tasks=["niah_single"], max_length=128, limit=2, device="cpu", cache=False)

    def run(name: str) -> dict:
        return evaluate(
            tiny_model_dir, None, benchmark_dir, tmp_path / f"{name}.json", tmp_path / f"{name}.jsonl", settings
        )

    plain = run("plain")
    bars: list[Progress] = []
    columns = lm_eval_runner.stage_progress().columns

    def recording_progress(**_):
        bars.append(Progress(*columns, console=Console(file=io.StringIO(), width=160)))
        return bars[-1]

    monkeypatch.setattr(lm_eval_runner, "interactive", lambda: True)
    monkeypatch.setattr(lm_eval_runner, "stage_progress", recording_progress)
    shown = run("shown")
    (task,) = bars[0].tasks
    assert task.description.startswith("evaluate") and task.total == 2 and task.completed == 2
    assert shown == plain
    assert (tmp_path / "shown.jsonl").read_bytes() == (tmp_path / "plain.jsonl").read_bytes()


def test_a_base_model_is_asked_in_its_named_chat_format(tiny_model_dir, benchmark_dir, tmp_path, monkeypatch):
    import shutil

    from lm_eval.models.huggingface import HFLM

    base = tmp_path / "base-model"
    shutil.copytree(tiny_model_dir, base)
    (base / "chat_template.jinja").unlink()  # a base checkpoint ships no chat template
    settings = EvalSettings(tasks=["niah_single"], max_length=128, limit=1, device="cpu", cache=False)
    with pytest.raises(InputError) as error:
        evaluate(base, None, benchmark_dir, tmp_path / "e.json", tmp_path / "p.jsonl", settings)
    assert error.value.field == "evaluate.chat_template" and "longalign" in str(error.value)

    seen = []
    original = HFLM.apply_chat_template

    def recording(self, chat_history, add_generation_prompt=True):
        seen.append(original(self, chat_history, add_generation_prompt))
        return seen[-1]

    monkeypatch.setattr(HFLM, "apply_chat_template", recording)
    settings = EvalSettings(
        tasks=["niah_single"], max_length=128, limit=1, device="cpu", cache=False, chat_template="longalign"
    )
    evaluate(base, None, benchmark_dir, tmp_path / "e.json", tmp_path / "p.jsonl", settings)
    assert seen and all(prompt.startswith("<|im_start|>[INST]") and prompt.endswith("[/INST]") for prompt in seen)
