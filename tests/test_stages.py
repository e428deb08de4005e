"""The stage scripts chained on hand-made data and the tiny model, as DVC runs them (cwd = repository root)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import ESSAYS, make_hotpot, make_squad
from helpers import run_stage

ROOT = Path(__file__).resolve().parents[1]


def params(tmp: Path) -> dict:
    return {
        "benchmark": {
            "seed": 3,
            "squad_long": {"count": 2, "target_words": 80},
            "hotpotqa_long": {"count": 2, "target_words": 80},
            "niah_single": {"lengths": [60], "depths": [0.0, 1.0], "samples": 1},
        },
        "seed": {
            "seed": 5,
            "sources": [
                {"type": "squad", "task": "squad_long", "count": 4},
                {"type": "hotpotqa", "task": "hotpotqa_long", "count": 4},
            ],
        },
        "synthesize": {
            "method": "context_synthesis",
            "backend": "transformers",
            "target_words": 50,
            "response_prefix": "Context:",
            "seed": 0,
            "cache_dir": str(tmp / "cache"),
            "chunk_words": 30,
            "max_attempts": 2,
            "batch_size": 3,
            "device": "cpu",
            "dtype": "float32",
            "sampling": {"max_new_tokens": 6, "temperature": 0.8, "top_p": 0.9, "repetition_penalty": 1.1},
            "verify": {"enabled": True, "max_answer_words": 5, "answerability": True},
        },
        "general": {"count": 5, "seed": 2, "max_paragraph_words": 400},
        "mix": {
            "variant": "context_synthesis",
            "num_contexts": 3,
            "seed": 1,
            "summarization_distractors": True,
            "filter": {"min_support": None, "max_leakage": None, "min_answerability": None},
            "general": {"source": "data/general/train.jsonl", "split": "train", "count": 3, "ratio": None},
        },
        "lengths": {"bin_words": 20, "tasks": ["squad_long", "hotpotqa_long"]},
    }


def run_chain(workdir: Path, model: Path, hash_seed: str, settings: dict) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "params.yaml").write_text(yaml.safe_dump(settings))
    raw = workdir / "data" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "squad.json").write_text(json.dumps(make_squad(articles=5)))
    (raw / "hotpotqa.json").write_text(json.dumps(make_hotpot(14)))
    (raw / "PaulGrahamEssays.json").write_text(json.dumps({"text": ESSAYS}))
    run_stage(workdir, hash_seed, "benchmark.py")
    run_stage(workdir, hash_seed, "seed.py")
    run_stage(workdir, hash_seed, "general.py")
    run_stage(workdir, hash_seed, "synthesize.py", "--model", str(model))
    run_stage(workdir, hash_seed, "mix.py", "--model", str(model))
    run_stage(workdir, hash_seed, "lengths.py")


OUTPUTS = [
    "data/benchmark/squad_long.jsonl",
    "data/benchmark/niah_single.jsonl",
    "data/benchmark/reserved.json",
    "data/seed/squad_long.jsonl",
    "data/seed/hotpotqa_long.jsonl",
    "data/synth/contexts.jsonl",
    "data/general/train.jsonl",
    "data/mix/train.jsonl",
    "metrics/seed.json",
    "metrics/mix.json",
    "metrics/plots/context_lengths.json",
]


def test_stages_give_identical_bytes_under_different_hash_seeds(tmp_path, tiny_model_dir):
    first, second = tmp_path / "first", tmp_path / "second"
    run_chain(first, tiny_model_dir, "0", params(tmp_path / "first"))
    run_chain(second, tiny_model_dir, "4242", params(tmp_path / "second"))  # its own, empty generation cache
    for output in OUTPUTS:
        assert (first / output).read_bytes() == (second / output).read_bytes(), output
    records = [json.loads(line) for line in (first / "data/synth/contexts.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all(r["verification"] is None or "answerability" in r["verification"] for r in records)
    seeds = {
        json.loads(line)["instruction"]
        for f in ("squad_long", "hotpotqa_long")
        for line in (first / f"data/seed/{f}.jsonl").read_text().splitlines()
    }
    evaluation = {
        json.loads(line)["input"]
        for f in ("squad_long", "hotpotqa_long")
        for line in (first / f"data/benchmark/{f}.jsonl").read_text().splitlines()
    }
    assert seeds and not seeds & evaluation
    for metrics in ("seed", "synthesize", "mix"):  # a metrics file says which libraries computed its numbers
        assert "python" in json.loads((first / f"metrics/{metrics}.json").read_text())["versions"], metrics


def test_instruction_synthesis_feeds_the_mix(tmp_path, tiny_model_dir):
    settings = params(tmp_path)
    settings["synthesize"]["method"] = "instruction_synthesis"
    with pytest.raises(AssertionError) as failure:
        run_chain(tmp_path / "work", tiny_model_dir, "0", settings)
    metrics = json.loads((tmp_path / "work/metrics/synthesize.json").read_text())
    assert metrics["method"] == "instruction_synthesis" and metrics["total"] == 8
    records = [json.loads(line) for line in (tmp_path / "work/data/synth/contexts.jsonl").read_text().splitlines()]
    assert all(r["attempts"] == 2 for r in records if r["parse_status"] != "ok")
    # A tiny random model never writes "Question: ... Answer: ...": every failure is counted, none is mixed in,
    # and mix stops with a message instead of writing an empty training set.
    assert metrics["parse_failures"] == 8 and "no records usable" in str(failure.value)
    assert not (tmp_path / "work/data/mix/train.jsonl").exists()


def test_synthesis_killed_mid_run_resumes_without_regenerating_or_duplicating(tmp_path, tiny_model_dir):
    import signal
    import time

    settings = params(tmp_path)
    settings["seed"]["sources"] = [{"type": "hotpotqa", "task": "hotpotqa_long", "count": 12}]
    settings["synthesize"].update(
        batch_size=1, verify={"enabled": False, "max_answer_words": 5, "answerability": False}
    )
    settings["synthesize"]["sampling"]["max_new_tokens"] = 48
    work = tmp_path / "work"
    work.mkdir()
    (work / "params.yaml").write_text(yaml.safe_dump(settings))
    raw = work / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "squad.json").write_text(json.dumps(make_squad()))
    (raw / "hotpotqa.json").write_text(json.dumps(make_hotpot(20)))
    (raw / "PaulGrahamEssays.json").write_text(json.dumps({"text": ESSAYS}))
    run_stage(work, "0", "benchmark.py")
    run_stage(work, "0", "seed.py")
    cache = Path(settings["synthesize"]["cache_dir"])
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "stages/synthesize.py"), "--model", str(tiny_model_dir)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while len(list(cache.rglob("*.json"))) < 3 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # kill -9 mid-run
    process.wait()
    finished = len(list(cache.rglob("*.json")))
    assert 3 <= finished < 12, "the run should have been killed part way"
    assert not (work / "data/synth/contexts.jsonl").exists()  # no half-written output
    run_stage(work, "0", "synthesize.py", "--model", str(tiny_model_dir))
    run = json.loads((work / "metrics/synthesize.json").read_text())["run"]
    assert run["from_cache"] == finished and run["generated"] == 12 - finished
    records = [json.loads(line) for line in (work / "data/synth/contexts.jsonl").read_text().splitlines()]
    assert len(records) == len({r["id"] for r in records}) == 12
