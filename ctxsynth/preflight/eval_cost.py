"""Hours one evaluation pass of a row takes on one GPU, from the model's shapes and the row's evaluate settings: with
the hf backend (the evaluate stage's default: batch 1, one device), or with vLLM, which decodes as many sequences at
once as the KV cache holds. An estimate from published device figures, not a measurement: no GPU has run it yet.

    prefill   documents x (2 P x prompt tokens + 2 x layers x hidden x prompt tokens^2, causal attention) FLOPs
              at H100_BF16_FLOPS x PREFILL_UTILIZATION
    decode    documents x generation budget x (2 P bytes of weights + the prompt's KV cache) read per token at
              H100_HBM_BYTES_PER_S: at batch 1 decoding is bound by memory, and the budget is taken in full (a base
              model often writes until it runs out)

The fine-tuned model is one pass per row; the base model one more, once per group (its generations are cached by
model content, evaluate.cache).
"""

from __future__ import annotations

from ctxsynth.core.tasks import get_task

H100_BF16_FLOPS = 989e12  # dense bf16, SXM
H100_HBM_BYTES_PER_S = 3.35e12
PREFILL_UTILIZATION = 0.4
VLLM_MEMORY_GIB = 0.9 * 80  # vLLM's default gpu_memory_utilization of an 80 GB GPU
LONGBENCH_DOCUMENTS = 200  # each of LongBench v1's 8 English tasks the paper reports


def documents(task: str, benchmark) -> int:
    """Test documents of `task`: LongBench's 200, or the size of the benchmark stage's own sets."""
    if task.startswith("niah_"):
        grid = benchmark.niah
        return len(grid.lengths) * len(grid.depths) * grid.samples
    own = getattr(benchmark, task, None)
    return own.count if own is not None else LONGBENCH_DOCUMENTS


def test_documents(task: str, evaluate, benchmark) -> int:
    """Documents of `task` one pass scores: all of them, or the first evaluate.limit."""
    return min(evaluate.limit or documents(task, benchmark), documents(task, benchmark))


def concurrent_sequences(facts: dict, evaluate, prompt: int) -> int:
    """Sequences decoded together: one with the hf backend; with vLLM as many as the KV cache holds."""
    if getattr(evaluate, "backend", "hf") == "hf":  # auto: the GPU machine the estimate is for runs vLLM
        return 1
    kv_bytes = 2 * facts["layers"] * facts["kv"] * 2 * prompt
    return max(1, int((VLLM_MEMORY_GIB * 2**30 - 2 * facts["parameters"]) // kv_bytes))


def evaluation_hours(facts: dict, evaluate, benchmark, tasks: list[str]) -> float:
    """Hours of one pass (one model) over `tasks` at evaluate.max_length prompt tokens."""
    prompt = evaluate.max_length or facts["window"]
    parameters, layers, hidden = facts["parameters"], facts["layers"], facts["hidden"]
    kv_bytes_per_token = 2 * layers * facts["kv"] * 2  # keys and values, bf16
    batch = concurrent_sequences(facts, evaluate, prompt)
    seconds = 0.0
    for name in tasks:
        count = test_documents(name, evaluate, benchmark)
        budget = get_task(name).max_new_tokens
        flops = 2 * parameters * prompt + 2 * layers * hidden * prompt**2
        prefill = flops / (H100_BF16_FLOPS * PREFILL_UTILIZATION)
        decode = budget * (2 * parameters / batch + kv_bytes_per_token * prompt) / H100_HBM_BYTES_PER_S
        seconds += count * (prefill + decode)
    return seconds / 3600
