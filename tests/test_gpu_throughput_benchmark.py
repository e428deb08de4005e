"""benchmarks/gpu_throughput.py at its tiny CPU shape: every case row has numbers, the JSON has the rows; its FLOPs,
memory, budget and OOM bookkeeping on the real shapes without a GPU."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_throughput.py"
NUMBER = r"[\d,]+"


@pytest.fixture(scope="module")
def bench_module():
    with pytest.MonkeyPatch.context() as patch:  # the script sets these two at import: keep them out of the session
        for name in ("HF_HUB_OFFLINE", "PYTORCH_CUDA_ALLOC_CONF"):
            patch.setenv(name, os.environ.get(name, "1" if name == "HF_HUB_OFFLINE" else ""))
        spec = importlib.util.spec_from_file_location("gpu_throughput", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        patch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up while it runs
        spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-bench") / "rows.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, str(SCRIPT), "--steps", "1", "--warmup", "0", "--json", str(out)]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(out.read_text(encoding="utf-8"))


def test_cpu_run_prints_every_case_with_numbers(cpu_run):
    stdout, _ = cpu_run
    assert stdout.startswith("device: CPU")
    rows = [line for line in stdout.splitlines() if re.match(r"\| \d+ \|", line)]
    seen = set()
    nf4 = importlib.util.find_spec("bitsandbytes") is not None
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        _, model, method, tokens, padded, packed, ratio, mfu, peak = cells
        seen.add((method, tokens))
        assert model == "tiny"
        if method == "qlora" and not nf4:
            assert padded == packed == "skipped"
            continue
        assert re.fullmatch(NUMBER, padded) and re.fullmatch(NUMBER, packed), row
        assert re.fullmatch(r"\d+\.\d\dx", ratio), row
        assert mfu == "–" and peak == "– / –", row  # no known peak, no CUDA allocator on CPU
    assert seen == {(method, tokens) for method in ("full", "lora", "qlora") for tokens in ("256", "512", "1,024")}
    synthesis = [line for line in stdout.splitlines() if line.startswith(("| static", "| continuous"))]
    assert len(synthesis) == 2 and all(re.search(r"\| [\d,]+\.\d \| \d\.\d\dx \|$", line) for line in synthesis)


def test_cpu_run_json_has_the_rows(cpu_run):
    _, report = cpu_run
    assert report["device"]["kind"] == "cpu" and report["timed_steps"] == 1
    assert len(report["training"]) == 9
    for case in report["training"]:
        if case["method"] == "qlora" and report["versions"]["bitsandbytes"] is None:
            continue
        packed, padded = case["packed"], case["padded"]
        assert packed["status"] == padded["status"] == "ok", case
        assert packed["real_tokens"] == padded["real_tokens"] == packed["computed_tokens"] == case["tokens"]
        assert padded["computed_tokens"] > case["tokens"]  # the same samples, padded to the longest
        assert packed["tokens_per_s"] > 0 and padded["tokens_per_s"] > 0 and case["model_tflop_per_step"] > 0
    assert [row["tokens"] > 0 for row in report["synthesis"]] == [True, True]


def test_shapes_are_the_published_ones(bench_module):
    facts = yaml.safe_load((ROOT / "ctxsynth" / "preflight" / "model_facts.yaml").read_text(encoding="utf-8"))
    llama8b = facts["models"]["meta-llama/Llama-3.1-8B"]
    shape = bench_module.LLAMA_3_1_8B
    shared = [key for key in llama8b if key in shape]
    assert len(shared) == 8 and {key: shape[key] for key in shared} == {key: llama8b[key] for key in shared}
    for config, parameters in ((shape, llama8b["parameters"]), (bench_module.LLAMA_3_2_1B, 1_235_814_400)):
        linear, embeddings = bench_module.shape_params(config)
        norms = (2 * config["num_hidden_layers"] + 1) * config["hidden_size"]
        assert linear + embeddings + norms == parameters


def test_model_flops_formula(bench_module):
    config = bench_module.LLAMA_3_1_8B
    linear, _ = bench_module.shape_params(config)
    h, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    full = bench_module.model_flops(config, "full", 0, [1000, 3000], 1000)
    assert full == 6 * linear * 4000 + 6 * h * vocab * 1000 + 12 * layers * h * (1000**2 + 3000**2)
    lora = bench_module.model_flops(config, "lora", 10**6, [4000], 1000)
    assert lora == 4 * linear * 4000 + 4 * h * vocab * 1000 + 6 * 10**6 * 4000 + 12 * layers * h * 4000**2


def test_samples_fill_one_packed_row(bench_module):
    for tokens in (256, 4096, 32768):
        samples = bench_module.make_samples(tokens, 128256, seed=tokens)
        assert sum(len(sample) for sample in samples) == tokens and len(samples) > 1
        for sample in samples:
            answer = [label for label in sample.labels if label != -100]
            assert answer == sample.input_ids[-len(answer) :] and len(answer) == max(len(sample) // 4, 2)
        batches = bench_module.layouts(samples, tokens, "token")
        assert batches["packed"]["input_ids"].shape == (1, tokens)
        assert batches["padded"]["input_ids"].shape == (len(samples), max(len(sample) for sample in samples))


def h100(bench_module, budget: float = 420.0):
    device = bench_module.Device("cuda", "NVIDIA H100 80GB HBM3", 989e12, 79.1)
    return bench_module.Bench(device, "sdpa", 1, 2, budget, None)


def test_memory_and_budget_skips(bench_module):
    bench = h100(bench_module)
    assert "skipped: memory" in bench_module.unavailable(bench_module.LLAMA_3_1_8B, "full", bench)
    assert bench_module.unavailable(bench_module.LLAMA_3_1_8B, "lora", bench) is None
    assert bench_module.unavailable(bench_module.LLAMA_3_2_1B, "full", bench) is None
    late = h100(bench_module, budget=5.0)
    case = bench_module.Case("llama-3.1-8b", "lora", 32768)
    params = bench_module.settings_for("lora", "sdpa")
    bench_module.run_case(case, bench_module.LLAMA_3_1_8B, (None, None, None), params, None, late)
    assert case.packed["status"].startswith("skipped: budget") and case.padded == case.packed


def test_out_of_memory_is_recorded_not_raised(bench_module, monkeypatch):
    import torch

    def out_of_memory(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    class Optimizer:
        zeroed = False

        def zero_grad(self, set_to_none: bool = True):
            self.zeroed = set_to_none

    monkeypatch.setattr(bench_module, "time_layout", out_of_memory)
    optimizer = Optimizer()
    result = bench_module.measure(None, {}, optimizer, [], None, None, h100(bench_module))
    assert result == {"status": "OOM", "detail": "CUDA out of memory"} and optimizer.zeroed
