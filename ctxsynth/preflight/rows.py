"""The per-row preflight of an experiment group: each row's resolved params checked against what its run will need,
before anything is queued (`ctxsynth experiments preflight main --scale gpu --gpu-memory-gib 80 --gpus 8`).

Per row, params.yaml with the row's overrides goes through ctxsynth/preflight/params.py (every section, every named
input), then through the checks below (check_row); each problem is one line naming the row and the params key.

Memory per device and disk per checkpoint come from ctxsynth/preflight/memory.py, term by term (docs/scaling.md).

Hub models are described by model_facts.yaml (nothing is downloaded); a local model by its own config.json, and its
tokenizer for the chat template's exact length.
"""

from __future__ import annotations

import copy
import json
import re
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from ctxsynth.core.chat import MODEL_TEMPLATE, apply_chat_template_choice, chat_templates
from ctxsynth.core.io import InputError
from ctxsynth.core.settings import load_settings
from ctxsynth.core.tasks import get_task
from ctxsynth.evaluate.run import CHAT_MARGIN, chat_overhead, model_window
from ctxsynth.finetune.settings import read_accelerate_config
from ctxsynth.preflight.environment import cuda_available, missing_engines
from ctxsynth.preflight.eval_cost import evaluation_hours
from ctxsynth.preflight.memory import checkpoint_disk_gb, fitting_lora_r, fitting_max_tokens, memory_estimate
from ctxsynth.preflight.params import SECTIONS, collect_problems, warnings

FACTS = Path(__file__).with_name("model_facts.yaml")
ACCELERATE_CONFIGS = Path("configs/accelerate")
CHAT_ALLOWANCE = 64  # tokens for a hub model's own chat template, which cannot be read here
PROMPT_TOKENS = 1024  # the synthesis prompt around one seed, generously
TOKENS_PER_WORD = 2  # generous: LLaMA and Qwen tokenizers take ~1.3 per English word
SHARDED = {"DEEPSPEED", "FSDP"}
CHECKPOINT_FORMATS = ("safetensors", "pytorch_model_bin")  # what fetch_model takes (prepare/model_convert.py)
DISTRIBUTED = SHARDED | {"MULTI_GPU", "MULTI_CPU"}
LARGE = 1e9  # parameters above which full fine-tuning in one process is a mistake
HEADER = (
    "row",
    "inputs",
    "window: needed / model",
    "chat template",
    "launcher",
    "GiB/device (est.) / GPU",
    "GB/ckpt",
    "eval h/pass",
    "verdict",
)
OFFLOAD_CONFIG = "deepspeed_zero3_offload"  # LongAlign's: the optimizer states in CPU memory


@dataclass
class RowCheck:
    name: str
    inputs: str = "–"
    window: str = "–"
    chat: str = "–"
    launcher: str = "–"
    memory: str = "–"
    disk: str = "–"
    eval_hours: str = "–"
    engines: list[tuple[str, str]] = field(default_factory=list)  # (key, what is missing here): environment.py
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.name}: {key}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.warnings.append(f"{self.name}: warning: {key}: {message}")

    @property
    def verdict(self) -> str:
        if self.problems:
            return f"FAIL ({len(self.problems)})"
        return f"ok, {len(self.warnings)} warning(s)" if self.warnings else "ok"


@cache
def model_facts() -> dict[str, dict]:
    return yaml.safe_load(FACTS.read_text(encoding="utf-8"))["models"]


def with_overrides(params: dict, overrides: dict) -> dict:
    """params.yaml with dotted `section.key` overrides applied, as `dvc exp run -S` would."""
    resolved = copy.deepcopy(params)
    for key, value in overrides.items():
        node = resolved
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return resolved


def shape_facts(config: dict) -> dict:
    """Window and shapes from config.json keys (a multimodal config's text_config), with the parameter count they
    imply unless `parameters` states it."""
    text = config.get("text_config") or config
    hidden, heads = text["hidden_size"], text["num_attention_heads"]
    head_dim = text.get("head_dim") or hidden // heads
    query, kv = heads * head_dim, (text.get("num_key_value_heads") or heads) * head_dim
    intermediate = text.get("intermediate_size") or 4 * hidden
    layers, vocab = text["num_hidden_layers"], text["vocab_size"]
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    computed = layers * (2 * hidden * query + 2 * hidden * kv + 3 * hidden * intermediate) + embeddings
    return {
        "window": model_window(SimpleNamespace(**text)),
        "parameters": config.get("parameters") or computed,
        "embeddings": embeddings,
        "layers": layers,
        "hidden": hidden,
        "intermediate": intermediate,
        "vocab": vocab,
        "kv": kv,
        "lora_width": layers * (7 * hidden + 2 * query + 2 * kv + 3 * intermediate),  # (in + out) of every linear
        "chat_template": config.get("chat_template"),
    }


def local_facts(directory: Path) -> dict | None:
    if not (directory / "config.json").is_file():
        return None
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    tokenizer_config = directory / "tokenizer_config.json"
    tokenizer = json.loads(tokenizer_config.read_text(encoding="utf-8")) if tokenizer_config.is_file() else {}
    own = (directory / "chat_template.jinja").is_file() or bool(tokenizer.get("chat_template"))
    return shape_facts({**config, "chat_template": own, "parameters": None})


@cache
def _local_chat_tokens(directory: str, template: str) -> int:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    try:
        apply_chat_template_choice(tokenizer, template, "evaluate.chat_template")
        return chat_overhead(tokenizer)
    except InputError:  # no template to count: the chat template check reports it
        return CHAT_ALLOWANCE


def chat_tokens(template: str, directory: Path | None) -> int:
    """What the chat template adds around one user message, as the evaluate stage counts it with the model's
    tokenizer; without a local tokenizer, an upper bound (an ASCII character is at most one token)."""
    if directory is not None and (directory / "tokenizer_config.json").is_file():
        return _local_chat_tokens(str(directory), template)
    if template not in chat_templates():
        return CHAT_ALLOWANCE
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    text = ImmutableSandboxedEnvironment().from_string(chat_templates()[template]["template"])
    rendered = text.render(messages=[{"role": "user", "content": ""}], bos_token="<s>", eos_token="</s>")
    return len(rendered) + 1


def _located(line: str, params_file: str) -> str:
    """`error: <file>[, line N], field 'K': message` as `K: message`, with the file kept when it is not the params
    file (a LongBench task file); an error in a record of another file keeps its place."""
    line = line.removeprefix("error: ").replace(params_file, "params.yaml")
    match = re.fullmatch(r"(.+?)(, line \d+)?, field '([^']+\.[^']+)': (.*)", line, re.S)
    if not match:
        return line
    where = "" if match[1] == "params.yaml" else f"{match[1]}{match[2] or ''}: "
    return f"{match[3]}: {where}{match[4]}"


def check_row(name: str, params: dict, gpu_memory_gib: float = 80.0, gpus: int | None = None) -> RowCheck:
    """One row, `params` being params.yaml with its overrides: settings and named inputs (ctxsynth/preflight/params.py),
    something to score, hub pins (warnings) and the generator, then against the model's facts the chat template,
    the window, the launcher and the memory per device."""
    row = RowCheck(name)
    settings, failed, checked = _check_settings_and_inputs(row, params)
    if settings is None:
        row.inputs = "settings invalid"
        return row
    evaluate, finetune = settings["evaluate"], settings["finetune"]
    _check_engines(row, settings)
    tasks = [*evaluate.tasks, *(evaluate.longbench_tasks if evaluate.longbench_dir else [])]
    if not tasks:
        row.problem("evaluate.tasks", "empty and evaluate.longbench_dir is unset: nothing to score")
        failed += 1
    row.inputs = f"FAIL ({failed})" if failed else f"ok ({checked} files)" if checked else "ok"
    _check_generator(row, settings["synthesize"], bool(settings["seed"].sources))
    facts = _student_facts(row, settings["fetch"].model)
    if facts is None:
        return row
    _check_chat(row, facts, finetune, evaluate)
    _check_window(row, facts, finetune, evaluate, tasks)
    _check_launcher(row, facts, finetune, gpu_memory_gib, gpus)
    row.eval_hours = f"{evaluation_hours(facts, evaluate, settings['benchmark'], tasks):.1f}"
    return row


def _check_settings_and_inputs(row: RowCheck, params: dict) -> tuple[dict | None, int, int]:
    """Every section through its settings class and every named input (the params-wide preflight, on the row's
    params): the settings by section (None when one does not load; its problem is named), the number of problems
    and of input files checked."""
    with tempfile.TemporaryDirectory(prefix="ctxsynth-row-") as scratch:
        path = Path(scratch) / "params.yaml"
        path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        problems, checked = collect_problems(path, check_environment=False)  # the row runs elsewhere, maybe
        row.problems += [f"{row.name}: {_located(line, str(path))}" for line in problems]
        try:
            settings: dict[str, Any] = {
                section: load_settings(cls, section, source=path) for section, cls in SECTIONS.items()
            }
        except InputError:  # collect_problems has named the key
            return None, len(problems), checked
        skip = "warning: finetune.chat_template"  # a disagreement is a problem here (_check_chat)
        row.warnings += [f"{row.name}: {line}" for line in warnings(path) if not line.startswith(skip)]
    return settings, len(problems), checked


def _check_engines(row: RowCheck, settings: dict) -> None:
    row.engines = missing_engines(settings, ACCELERATE_CONFIGS)
    if row.engines and cuda_available():  # this is the machine the row will run on
        for key, message in row.engines:
            row.problem(key, message)


def _student_facts(row: RowCheck, model) -> dict | None:
    """The shapes of the model the row fine-tunes: a hub model's from model_facts.yaml, a stand-in's from its spec,
    a local one's from its config.json; None (with the reason, as a problem or warning) where none are known."""
    directory = None
    if model.source == "hub":
        known = model_facts().get(model.id)
        facts = shape_facts(known) if known else None
        if known and known.get("checkpoint") not in CHECKPOINT_FORMATS:
            row.problem(
                "fetch.model.id",
                f"{model.id} ships weights as {known.get('checkpoint')!r} ({FACTS.name}); fetch_model takes "
                f"{' or '.join(CHECKPOINT_FORMATS)}",
            )
    elif model.source == "stand_in":
        from ctxsynth.prepare.stand_in_specs import stand_in_specs

        specs = stand_in_specs()
        facts = shape_facts({**specs["shape"], **specs["stand_ins"][model.stand_in]["config"], "chat_template": False})
    else:
        directory = Path(model.path if model.source == "path" else "data/model")
        facts = local_facts(directory)
    if facts is None:
        if model.source == "hub":
            row.problem("fetch.model.id", f"{model.id} is not in {FACTS.name}: add its config.json values there")
        elif model.source == "path" and directory is not None and directory.is_dir():
            row.problem("fetch.model.path", f"no config.json in {directory}")
        elif model.source == "registry":
            row.warn("fetch.model", "data/model is not fetched yet: window, chat template and memory not checked")
        return None
    label = model.id if model.source == "hub" else f"stand-in {model.stand_in}" if directory is None else str(directory)
    facts["label"], facts["directory"] = label, directory
    return facts


def _check_chat(row: RowCheck, facts: dict, finetune, evaluate) -> None:
    templates = {"finetune.chat_template": finetune.chat_template}
    if evaluate.apply_chat_template:
        templates["evaluate.chat_template"] = evaluate.chat_template
    row.chat = " / ".join(dict.fromkeys(templates.values()))
    known, named = [MODEL_TEMPLATE, *chat_templates()], ", ".join(chat_templates())
    for key, template in templates.items():
        if template not in known:
            row.problem(key, f"unknown chat template {template!r} (known: {', '.join(known)})")
        elif template == MODEL_TEMPLATE and not facts["chat_template"]:
            row.problem(key, f"{facts['label']} ships no chat template (a base model): name one ({named})")
    if len(set(templates.values())) > 1:
        row.problem(
            "evaluate.chat_template",
            f"{evaluate.chat_template!r} but finetune.chat_template is {finetune.chat_template!r}: the model would "
            "be asked in another format than it was trained in",
        )


def _check_window(row: RowCheck, facts: dict, finetune, evaluate, tasks: list[str]) -> None:
    window, label, needed = facts["window"], facts["label"], finetune.max_tokens
    if evaluate.max_length is not None:  # null: the evaluate stage fits the prompt to the window itself
        budget = max((get_task(task).max_new_tokens for task in tasks), default=0)
        overhead = chat_tokens(evaluate.chat_template, facts["directory"]) if evaluate.apply_chat_template else 1
        prompt = evaluate.max_length + overhead + CHAT_MARGIN + budget
        needed = max(needed, prompt)
        if prompt > window:
            row.problem(
                "evaluate.max_length",
                f"{evaluate.max_length:,} prompt tokens + chat template ({overhead}) + margin ({CHAT_MARGIN}) + the "
                f"largest generation budget ({budget}) need {prompt:,} positions; {label} has {window:,}",
            )
    if finetune.max_tokens > window:
        row.problem("finetune.max_tokens", f"{finetune.max_tokens:,} tokens per row; {label} has {window:,} positions")
    row.window = f"{needed:,} / {window:,}"


def _check_launcher(row: RowCheck, facts: dict, finetune, gpu_memory_gib: float, gpus: int | None) -> None:
    """The launcher for the method and model size, the devices it starts, and the memory per device."""
    accelerate, devices, distributed = finetune.launcher == "accelerate", 1, "NO"
    if accelerate:
        try:
            config_path, config = read_accelerate_config(finetune.accelerate_config, ACCELERATE_CONFIGS)
        except InputError as error:
            row.problem("finetune.accelerate_config", str(error).split("': ", 1)[-1])
            return
        devices, distributed = int(config.get("num_processes") or 1), str(config.get("distributed_type") or "NO")
        if gpus and not config.get("use_cpu") and devices > gpus:
            row.problem(
                "finetune.accelerate_config",
                f"{config_path} starts {devices} processes, one per GPU, and the machine has {gpus} (--gpus): use a "
                f"config with num_processes: {gpus} and raise finetune.grad_accum to keep the global batch",
            )
    row.launcher = f"accelerate: {finetune.accelerate_config} ({distributed} x {devices})" if accelerate else "none"
    if finetune.method == "full" and facts["parameters"] > LARGE and distributed not in DISTRIBUTED:
        row.problem(
            "finetune.accelerate_config" if accelerate else "finetune.launcher",
            f"full fine-tuning of {facts['parameters'] / 1e9:.1f}B parameters in one process; set finetune.launcher: "
            "accelerate with a distributed accelerate_config (deepspeed_zero3, fsdp, or a .yaml whose "
            f"distributed_type is {', '.join(sorted(DISTRIBUTED))})",
        )
    if finetune.packing and finetune.attn_implementation != "flash_attention_2" and finetune.max_tokens > 8192:
        row.problem(
            "finetune.attn_implementation",
            f"{finetune.attn_implementation} materializes a {finetune.max_tokens:,}-square mask per packed row; "
            "flash_attention_2 reads the sample boundaries from the position ids",
        )
    sharded = distributed in SHARDED
    offloaded = accelerate and str((config.get("deepspeed_config") or {}).get("offload_optimizer_device")) == "cpu"
    estimate = memory_estimate(facts, finetune, devices, sharded, offload_optimizer=offloaded)
    row.memory = f"{estimate.gib:.1f} / {gpu_memory_gib:g}"
    row.disk = f"{checkpoint_disk_gb(facts, finetune):.1f}"
    if estimate.gib > gpu_memory_gib:
        spread = f"sharded over {devices} devices" if sharded and devices > 1 else "not sharded"
        fitting = fitting_max_tokens(facts, finetune, devices, sharded, offloaded, gpu_memory_gib)
        lower = f"lower finetune.max_tokens to {fitting:,}" if fitting else "lower finetune.max_tokens"
        remedies = f"{lower}, shard over more devices (finetune.accelerate_config)"
        if finetune.method == "lora":
            rank = fitting_lora_r(facts, finetune, devices, sharded, gpu_memory_gib)
            remedies = f"{lower}" + (f", or lower finetune.lora_r to {rank}" if rank else "")
        if sharded and finetune.method == "full" and not offloaded:
            with_offload = memory_estimate(facts, finetune, devices, sharded, offload_optimizer=True).gib
            if with_offload <= gpu_memory_gib:
                remedies = (
                    f"{lower}, or offload the optimizer to CPU memory as LongAlign does "
                    f"(finetune.accelerate_config: {OFFLOAD_CONFIG}, about {with_offload:.1f} GiB)"
                )
        method = "qlora" if finetune.quantization == "nf4" else finetune.method
        alternative = ", or train with LoRA / QLoRA" if finetune.method == "full" else ""
        row.problem(
            "finetune.max_tokens",
            f"about {estimate.gib:.1f} GiB per device (an estimate: {method}, {spread}; {estimate.explain()}) "
            f"exceeds {gpu_memory_gib:g} GiB (--gpu-memory-gib): {remedies}{alternative}",
        )


def _check_generator(row: RowCheck, synthesize, has_seeds: bool) -> None:
    """A chat server's model (backend openai, e.g. `vllm serve`): room for prompt and budget, and a chat template."""
    if synthesize.backend != "openai" or not has_seeds:
        return
    generator = model_facts().get(synthesize.openai.model)
    if generator is None:
        row.warn("synthesize.openai.model", f"{synthesize.openai.model} is not in {FACTS.name}: window unchecked")
        return
    chunk = synthesize.chunk_words * TOKENS_PER_WORD if synthesize.method == "instruction_synthesis" else 0
    needed, window = PROMPT_TOKENS + chunk + synthesize.sampling.max_new_tokens, shape_facts(generator)["window"]
    if needed > window:
        row.problem(
            "synthesize.sampling.max_new_tokens",
            f"the prompt (~{PROMPT_TOKENS + chunk:,} tokens) and the budget need ~{needed:,} positions; "
            f"{synthesize.openai.model} has {window:,}",
        )
    if not generator.get("chat_template"):
        unknown = generator.get("chat_template") is None
        state = f"may ship no chat template ({FACTS.name} does not say)" if unknown else "ships no chat template"
        row.warn(
            "synthesize.openai.model",
            f"{synthesize.openai.model} {state}; a server's chat API needs one: check it, or start `vllm serve` "
            "with --chat-template",
        )


def render(results: list[RowCheck], styled: bool | None = None) -> str:
    """One line per row: a rich table on a terminal, plain text otherwise."""
    rows = [
        (r.name, r.inputs, r.window, r.chat, r.launcher, r.memory, r.disk, r.eval_hours, r.verdict) for r in results
    ]
    if sys.stdout.isatty() if styled is None else styled:
        from rich.console import Console
        from rich.table import Table

        table = Table()
        for index, title in enumerate(HEADER):  # the row's name and verdict whole; the other columns wrap
            table.add_column(title, no_wrap=index in (0, len(HEADER) - 1))
        for cells in rows:
            table.add_row(*cells, style="red" if cells[-1].startswith("FAIL") else None)
        console = Console()
        with console.capture() as captured:
            console.print(table)
        return captured.get().rstrip("\n")
    widths = [max(len(str(cells[i])) for cells in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip() for cells in [HEADER, *rows]]
    lines.insert(1, "-+-".join("-" * width for width in widths))
    return "\n".join(lines)
