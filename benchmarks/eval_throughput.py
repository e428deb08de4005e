"""Evaluation throughput: the evaluate stage's own path (lm-eval) against a bare `model.generate` loop.

Both score the same prepared prompts (task template, middle truncation, chat template) with the same max new
tokens, greedy, batch 1, base model; the bare loop is the ceiling on this machine. Prints both and their ratio.

    .venv/bin/python benchmarks/eval_throughput.py --model data/model --benchmark-dir data/benchmark --limit 4

With `--adapter data/adapter` it times the fine-tuned row instead: the stage path with the LoRA adapter merged into
the weights (evaluate.merge_adapter, the default) against the same path unmerged, and counts the prompts whose
greedy predictions differ between the two.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ctxsynth.core.io import write_jsonl
from ctxsynth.core.tasks import get_task, templates_version
from ctxsynth.evaluate.lm_eval_runner import LmEvalRunner, LmEvalTask, render_task_dir
from ctxsynth.evaluate.run import load_benchmark, prepare_document


def bare_loop(model_dir: str, prepared: dict[str, list[dict]]) -> float:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()  # loading counts on both sides: the stage path loads its model too
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    for task, docs in prepared.items():
        for doc in docs:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": doc["prompt"]}], tokenize=False, add_generation_prompt=True
            )
            encoded = tokenizer(text, return_tensors="pt", add_special_tokens=False)
            with torch.inference_mode():
                model.generate(
                    **encoded,
                    max_new_tokens=get_task(task).max_new_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model")
    parser.add_argument("--benchmark-dir", default="data/benchmark", type=Path)
    parser.add_argument("--tasks", nargs="+", default=["squad_long", "hotpotqa_long", "niah_single"])
    parser.add_argument("--limit", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--adapter", type=Path, help="time the adapter merged against unmerged instead")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    prepared = {
        task: [
            prepare_document(doc, get_task(task), tokenizer, args.max_length)
            for doc in load_benchmark(args.benchmark_dir / f"{task}.jsonl", task)[: args.limit]
        ]
        for task in args.tasks
    }
    docs = sum(len(d) for d in prepared.values())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tasks = []
        for task, rows in prepared.items():
            write_jsonl(tmp / f"{task}.jsonl", rows)
            tasks.append(LmEvalTask(task, tmp / f"{task}.jsonl", get_task(task).max_new_tokens))
        runner = LmEvalRunner(render_task_dir(tasks, tmp / "tasks", templates_version(), cache_dir=tmp / "hf"))
        if args.adapter:
            return compare_merged(runner, tasks, Path(args.model), args.adapter, docs, args)
        started = time.perf_counter()
        runner.run(
            Path(args.model), tasks, batch_size=1, device="cpu", dtype="auto", max_length=8192, apply_chat_template=True
        )
        stage_seconds = time.perf_counter() - started
    bare_seconds = bare_loop(args.model, prepared)
    print(f"{docs} docs ({', '.join(args.tasks)}), prompts up to {args.max_length} tokens, greedy, batch 1")
    print(f"{'path':<36}{'seconds':>10}{'s/doc':>8}")
    print(f"{'evaluate stage path (lm-eval)':<36}{stage_seconds:>10.1f}{stage_seconds / docs:>8.2f}")
    print(f"{'bare model.generate loop':<36}{bare_seconds:>10.1f}{bare_seconds / docs:>8.2f}")
    print(f"{'ratio (stage / bare)':<36}{stage_seconds / bare_seconds:>18.2f}x")


def compare_merged(runner: LmEvalRunner, tasks: list, model: Path, adapter: Path, docs: int, args) -> None:
    seconds, predictions = {}, {}
    for merge in (False, True):  # unmerged first: any warm-up of the machine favours the reference, not the change
        started = time.perf_counter()
        outputs = runner.run(
            model,
            tasks,
            adapter_dir=adapter,
            batch_size=1,
            device="cpu",
            dtype="auto",
            max_length=8192,
            apply_chat_template=True,
            merge_adapter=merge,
        )
        seconds[merge] = time.perf_counter() - started
        predictions[merge] = [sample["prediction"] for task in outputs.values() for sample in task["samples"]]
    differ = sum(a != b for a, b in zip(predictions[False], predictions[True]))
    print(f"{docs} docs ({', '.join(args.tasks)}), prompts up to {args.max_length} tokens, greedy, batch 1, {adapter}")
    print(f"{'path':<36}{'seconds':>10}{'s/doc':>8}")
    for merge, name in ((False, "adapter unmerged (PEFT)"), (True, "adapter merged (merge_adapter)")):
        print(f"{name:<36}{seconds[merge]:>10.1f}{seconds[merge] / docs:>8.2f}")
    print(f"{'speed-up (unmerged / merged)':<36}{seconds[False] / seconds[True]:>18.2f}x")
    print(f"{'predictions that differ':<36}{differ:>10} of {docs}")


if __name__ == "__main__":
    main()
