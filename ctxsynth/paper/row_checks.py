"""The per-row preflight of an experiment group: each row's resolved params checked against what its run will need,
before anything is queued (`ctxsynth experiments preflight main --scale gpu --gpu-memory-gib 80`).

Per row: every section and every named input (ctxsynth/preflight.py, on params.yaml with the row's overrides); the
model window against the evaluation prompt plus chat markup plus the largest generation budget, and against the
training length; a chat template for a base model, the same in training and evaluation; a distributed launcher for
full fine-tuning of a large model; and the memory per device, estimated (not measured) in bf16:

    full fine-tuning   16 bytes x parameters (bf16 weights and grads, fp32 master weights and two Adam moments),
                       divided by the devices when ZeRO-3 or FSDP shards them
    LoRA / QLoRA       2 (0.55 for nf4) bytes x parameters, the frozen base
    activations        layers x tokens x hidden x 2 bytes (checkpoints) + one recomputed layer, tokens x (4 hidden
                       + 3 intermediate) x 2 bytes; x 2 without gradient checkpointing
    logits             answer positions (4,096 at most with answer_logits_only, else every token) x vocab x 8 bytes
    + 3 GiB            CUDA context and allocator fragmentation

Hub models are described by model_facts.yaml (no download here); local models by their own config.json.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

from ctxsynth.core.tasks import get_task

FACTS = Path(__file__).with_name("model_facts.yaml")
ACCELERATE_CONFIGS = Path("configs/accelerate")
GIB = 2**30
OVERHEAD_GIB = 3.0
ANSWER_TOKENS = 4096
CHAT_TOKENS = 64  # what a chat template adds around one prompt, generously (LongAlign's [INST] adds about 10)
SHARDED = {"DEEPSPEED", "FSDP"}
DISTRIBUTED = SHARDED | {"MULTI_GPU", "MULTI_CPU"}
LARGE = 1e9  # parameters above which full fine-tuning in one process is a mistake


@dataclass
class RowCheck:
    name: str
    window: str = "–"
    chat: str = "–"
    launcher: str = "–"
    memory: str = "–"
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@cache
def model_facts() -> dict:
    return yaml.safe_load(FACTS.read_text(encoding="utf-8"))


def with_overrides(params: dict, overrides: dict) -> dict:
    resolved = copy.deepcopy(params)
    for key, value in overrides.items():
        node = resolved
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return resolved


def local_facts(directory: Path) -> dict | None:
    config_path = directory / "config.json"
    if not config_path.is_file():
        return None
    config = json.loads(config_path.read_text(encoding="utf-8"))
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    intermediate, vocab = config.get("intermediate_size", 4 * hidden), config["vocab_size"]
    kv = hidden * config.get("num_key_value_heads", config["num_attention_heads"]) / config["num_attention_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * intermediate
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    tokenizer_config = directory / "tokenizer_config.json"
    own_template = (directory / "chat_template.jinja").is_file() or (
        tokenizer_config.is_file() and "chat_template" in json.loads(tokenizer_config.read_text(encoding="utf-8"))
    )
    return {
        "window": config.get("max_position_embeddings"),
        "parameters": layers * per_layer + embeddings,
        "layers": layers,
        "hidden": hidden,
        "intermediate": intermediate,
        "vocab": vocab,
        "chat_template": own_template,
    }


def facts_for(model: dict) -> tuple[dict | None, str]:
    """(facts, what the model is called); None with the reason as the name when nothing is known."""
    if model.get("source") == "hub":
        known = model_facts().get(model.get("id"))
        return known, str(model.get("id"))
    directory = Path(model.get("path") or "") if model.get("source") == "path" else Path("data/model")
    return local_facts(directory), str(directory)


def generation_budget(evaluate: dict) -> int:
    names = list(evaluate.get("tasks") or [])
    if evaluate.get("longbench_dir"):
        names += list(evaluate.get("longbench_tasks") or [])
    budgets = []
    for name in names:
        try:
            budgets.append(get_task(name).max_new_tokens)
        except Exception:  # noqa: BLE001 - an unknown task is the settings check's problem, reported there
            continue
    return max(budgets, default=0)


def memory_gib(facts: dict, finetune, devices: int, sharded: bool) -> float:
    parameters, tokens = facts["parameters"], finetune.max_tokens or 0
    if finetune.method == "full":
        states = 16 * parameters / (devices if sharded else 1)
    else:
        states = (0.55 if finetune.quantization == "nf4" else 2) * parameters
    layer = tokens * (4 * facts["hidden"] + 3 * facts["intermediate"]) * 2
    activations = facts["layers"] * tokens * facts["hidden"] * 2 + layer
    if not finetune.gradient_checkpointing:
        activations = 2 * facts["layers"] * layer
    logits = min(tokens, ANSWER_TOKENS if finetune.answer_logits_only else tokens) * facts["vocab"] * 8
    return (states + activations + logits) / GIB + OVERHEAD_GIB


def check_row(name: str, params: dict, gpu_memory_gib: float) -> RowCheck:
    from ctxsynth.finetune.settings import FinetuneSettings, accelerate_config_file
    from ctxsynth.preflight import collect_problems, warnings

    result = RowCheck(name)
    with tempfile.TemporaryDirectory(prefix="ctxsynth-row-") as scratch:
        path = Path(scratch) / "params.yaml"
        path.write_text(yaml.safe_dump(params), encoding="utf-8")
        problems, _ = collect_problems(path)
        result.problems += [
            f"{name}: " + line.removeprefix("error: ").replace(str(path), "params.yaml") for line in problems
        ]
        if problems:
            return result
        result.warnings += [f"{name}: {line.removeprefix('warning: ')}" for line in warnings(path)]
    evaluate, finetune = params["evaluate"], FinetuneSettings.from_mapping(params["finetune"])
    if not evaluate.get("tasks") and not evaluate.get("longbench_dir"):
        result.problems.append(f"{name}: evaluate.tasks is empty and evaluate.longbench_dir unset: nothing to score")
    facts, model = facts_for(params["fetch"]["model"])
    if facts is None:
        result.problems.append(f"{name}: fetch.model: nothing known about {model}; add it to {FACTS.name}")
        return result
    window = facts.get("window")
    if evaluate.get("max_length"):
        needed = int(evaluate["max_length"]) + CHAT_TOKENS + generation_budget(evaluate)
        result.window = f"{needed:,} / {window:,}"
        if window and needed > window:
            result.problems.append(
                f"{name}: evaluate.max_length: {evaluate['max_length']:,} + chat markup + a generation budget of "
                f"{generation_budget(evaluate)} needs {needed:,} positions; {model} has {window:,}"
            )
    if window and finetune.max_tokens and finetune.max_tokens > window:
        result.problems.append(
            f"{name}: finetune.max_tokens: {finetune.max_tokens:,} tokens per row; {model} has {window:,} positions"
        )
    templates = {key: params[key.split(".")[0]].get("chat_template") or "model" for key in CHAT_KEYS}
    result.chat = ", ".join(sorted(set(templates.values())))
    for key, template in templates.items():
        if template == "model" and not facts.get("chat_template"):
            result.problems.append(f"{name}: {key}: {model} is a base model without a chat template; name one")
    if len(set(templates.values())) > 1:
        result.problems.append(f"{name}: finetune.chat_template and evaluate.chat_template differ: {templates}")
    devices, distributed = 1, "one process"
    if finetune.launcher == "accelerate":
        config = yaml.safe_load(accelerate_config_file(finetune.accelerate_config, ACCELERATE_CONFIGS).read_text())
        devices, distributed = int(config.get("num_processes") or 1), str(config.get("distributed_type"))
    result.launcher = f"{finetune.launcher}: {distributed} x {devices}"
    if finetune.method == "full" and facts["parameters"] > LARGE and distributed not in DISTRIBUTED:
        result.problems.append(
            f"{name}: finetune.launcher: full fine-tuning of {facts['parameters'] / 1e9:.1f}B parameters in "
            f"{distributed}; set finetune.launcher: accelerate with a distributed accelerate_config (deepspeed_zero3)"
        )
    if finetune.packing and finetune.attn_implementation != "flash_attention_2" and finetune.max_tokens > 8192:
        result.problems.append(
            f"{name}: finetune.attn_implementation: {finetune.attn_implementation} materializes a "
            f"{finetune.max_tokens:,}-square mask per packed row; flash_attention_2 reads the sample boundaries"
        )
    gib = memory_gib(facts, finetune, devices, distributed in SHARDED)
    result.memory = f"{gib:.1f}"
    if gib > gpu_memory_gib:
        result.problems.append(
            f"{name}: finetune: about {gib:.0f} GiB per device (estimated) exceeds {gpu_memory_gib:g} GiB"
        )
    general = params["mix"].get("general") or {}
    source = str(general.get("source") or "")
    hub_dataset = source and not source.endswith((".jsonl", ".parquet")) and not Path(source).exists()
    if hub_dataset and not re.fullmatch(r"[0-9a-f]{40}", str(general.get("revision") or "")):
        result.warnings.append(f"{name}: mix.general.revision is not a commit sha: {source} may change under it")
    return result


CHAT_KEYS = ("finetune.chat_template", "evaluate.chat_template")


def render(results: list[RowCheck]) -> str:
    header = ["row", "window: needed / model", "chat template", "launcher", "GiB per device (est.)", "verdict"]
    rows = [[r.name, r.window, r.chat, r.launcher, r.memory, "FAIL" if r.problems else "ok"] for r in results]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) for row in [header, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)
