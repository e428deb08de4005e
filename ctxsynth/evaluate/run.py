"""Evaluate the base model and base + LoRA adapter on long-context tasks (LongBench protocol) through lm-eval.

Per doc: the task template (tasks.yaml) is filled with context + input and truncated in the MIDDLE to `max_length`
tokens of the model's tokenizer (LongBench's rule: keep the first and last halves; lm-eval's HF backend would cut
from the left, so nothing reaches it over length). lm-eval then applies the chat template, generates greedily with
the task's `max_new_tokens`, and scores with LongBench's metric functions (ctxsynth.core.scoring). Scores are x100.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from ctxsynth.core.chat import MODEL_TEMPLATE, apply_chat_template_choice
from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.io import (
    InputError,
    dumps,
    read_jsonl_numbered,
    sha256_file,
    sha256_text,
    user_cache_dir,
    write_json,
    write_jsonl,
)
from ctxsynth.core.scoring import delta, niah_heatmap, summarize
from ctxsynth.core.tasks import TaskSpec, get_task, templates_version
from ctxsynth.core.versions import library_versions
from ctxsynth.evaluate.lm_eval_runner import LmEvalRunner, LmEvalTask, render_task_dir, resolve_device, resolve_dtype
from ctxsynth.evaluate.settings import EvalSettings

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("_id", "input", "context", "answers")
NIAH_FIELDS = ("niah_length", "niah_depth")  # carried from the benchmark row to the prediction: the heatmap cell
CHAT_MARGIN = 8  # tokens: re-tokenizing the decoded halves can merge/split a few tokens at the cut


def load_benchmark(path: Path, task: str) -> list[dict]:
    """LongBench-layout docs, validated: errors name the file, line and field."""
    numbered = read_jsonl_numbered(
        path, required=REQUIRED_FIELDS, types={"input": str, "context": str, "answers": list}
    )
    expected = get_task(task).name
    if not numbered:
        raise InputError(path, "no documents")
    seen: set[str] = set()
    for line, doc in numbered:
        if str(doc["_id"]) in seen:
            raise InputError(path, f"duplicate _id {doc['_id']!r}", line=line, field="_id")
        seen.add(str(doc["_id"]))
        if not doc["answers"] or not all(isinstance(answer, str) for answer in doc["answers"]):
            raise InputError(path, "expected a non-empty list of strings", line=line, field="answers")
        dataset = doc.get("dataset")
        if dataset is not None and _canonical(dataset) != expected:
            raise InputError(path, f"doc belongs to {dataset!r}, expected {task!r}", line=line, field="dataset")
    return [doc for _, doc in numbered]


def _canonical(name: str) -> str | None:
    try:
        return get_task(name).name
    except KeyError:
        return None


def middle_truncate(tokenizer, text: str, max_length: int) -> tuple[str, int, bool]:
    """Keep the first max_length//2 and the last max_length - max_length//2 tokens (LongBench keeps two equal
    halves; for odd lengths we keep one more at the end). Returns (text, original token count, truncated?)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_length:
        return text, len(ids), False
    head = max_length // 2
    tail = max_length - head
    kept = tokenizer.decode(ids[:head], skip_special_tokens=True) + tokenizer.decode(
        ids[len(ids) - tail :], skip_special_tokens=True
    )
    return kept, len(ids), True


def find_sources(benchmark_dir: Path, settings: EvalSettings) -> list[tuple[str, Path]]:
    """(task, file) pairs: settings.tasks from benchmark_dir, and every LongBench task from longbench_dir when it is
    set. A missing directory or task file is an InputError, never a task silently left out of the scores; the
    directory must be a dependency of the evaluate stage (inputs/longbench), so `dvc repro` sees its files change."""
    sources = [(task, Path(benchmark_dir) / f"{task}.jsonl") for task in settings.tasks]
    if settings.longbench_dir:
        root = Path(settings.longbench_dir)
        if not root.is_dir():
            raise InputError(
                "params.yaml",
                f"{str(root)!r} is not a directory: unzip THUDM/LongBench's data.zip there (its data/<task>.jsonl "
                "files) under inputs/longbench, or set evaluate.longbench_dir: null (on a machine with hub access, "
                "lm-eval's own hub tasks run them: `lm_eval --tasks longbench_<task>`, dataset Xnhyacinth/LongBench)",
                field="evaluate.longbench_dir",
            )
        require_tracked(root, "evaluate", "evaluate.longbench_dir")
        for index, task in enumerate(settings.longbench_tasks):
            candidates = [root / "data" / f"{task}.jsonl", root / f"{task}.jsonl"]
            found = next((path for path in candidates if path.is_file()), None)
            if found is None:
                raise InputError(
                    candidates[0],
                    f"LongBench task file not found (nor {candidates[1]}): unzip THUDM/LongBench's data.zip so "
                    f"that it exists, or remove {task!r} from evaluate.longbench_tasks",
                    field=f"evaluate.longbench_tasks[{index}]",
                )
            sources.append((task, found))
    names = [task for task, _ in sources]
    if len(set(names)) != len(names):
        raise InputError("params.yaml", f"a task is listed twice: {names}", field="evaluate.tasks")
    return sources


def evaluate(
    model_dir: Path,
    adapter_dir: Path | None,
    benchmark_dir: Path,
    metrics_path: Path,
    predictions_path: Path,
    settings: EvalSettings,
    work_dir: Path | None = None,
    niah_plot_path: Path | None = None,
) -> dict:
    """Score base and base + adapter; write eval.json, predictions.jsonl and the NIAH heatmap rows (recall x100
    per model x subtask x length x depth, the paper's Figure 2); return the eval.json content."""
    sources = find_sources(benchmark_dir, settings)  # every input file checked before anything is loaded
    model_dir = Path(model_dir)
    variants = models_to_score(model_dir, adapter_dir, settings)
    tokenizer, named_template = load_eval_tokenizer(model_dir, settings)
    window = model_window(load_checked_config(model_dir))
    specs = {task: get_task(task) for task, _ in sources}
    max_length = prompt_budget(settings, specs, window, tokenizer)
    with tempfile.TemporaryDirectory(prefix="ctxsynth-eval-", dir=work_dir) as tmp:
        work = Path(tmp)
        tasks = write_task_data(sources, specs, tokenizer, max_length, settings.limit, work)
        runner = LmEvalRunner(render_task_dir(tasks, work / "tasks", templates_version(), cache_dir=work / "hf_cache"))
        report, predictions = score_variants(
            runner, tasks, variants, specs, model_dir, window, named_template, settings
        )
    report["delta"] = delta(report["base"], report["finetuned"])
    write_jsonl(predictions_path, predictions)
    if niah_plot_path is not None:
        write_json(niah_plot_path, niah_heatmap(predictions))
    report["versions"] = library_versions()  # the scores depend on them (tokenizers, kernels)
    write_json(metrics_path, report)
    return report


def models_to_score(
    model_dir: Path, adapter_dir: Path | None, settings: EvalSettings
) -> list[tuple[str, Path, Path | None]]:
    """(variant, model, adapter) to score: the base model (score_base) and the fine-tuned one, a LoRA adapter on the
    base model or a fully fine-tuned model; an InputError where that leaves nothing."""
    finetuned: tuple[Path, Path | None] | None = None  # (model, adapter)
    if adapter_dir is not None and (Path(adapter_dir) / "adapter_config.json").is_file():
        finetuned = (model_dir, Path(adapter_dir))
    elif adapter_dir is not None and (Path(adapter_dir) / "config.json").is_file():
        finetuned = (Path(adapter_dir), None)  # finetune.method: full writes the whole model there
    elif adapter_dir is not None:
        log.warning(
            "no adapter or model at %s (no adapter_config.json / config.json): scoring the base model only", adapter_dir
        )
    variants: list[tuple[str, Path, Path | None]] = [("base", model_dir, None)] if settings.score_base else []
    if finetuned:
        variants.append(("finetuned", *finetuned))
    if not variants:
        raise InputError(
            "params.yaml", "nothing to score: score_base is false and there is no adapter", field="evaluate.score_base"
        )
    return variants


def load_eval_tokenizer(model_dir: Path, settings: EvalSettings) -> tuple[Any, str | None]:
    """(the base model's tokenizer with the chat format `evaluate.chat_template` names, that format's template when
    it is a named one of core/chat_templates.yaml: lm-eval gets it too; None for the model's own)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    named_template = None
    if settings.apply_chat_template:
        if apply_chat_template_choice(tokenizer, settings.chat_template, "evaluate.chat_template") != MODEL_TEMPLATE:
            named_template = tokenizer.chat_template
    return tokenizer, named_template


def load_checked_config(model_dir: Path):
    """The base model's config, refused where it would make lm-eval fail to load the model."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    _check_not_stale_gguf(model_dir, config)
    return config


def prompt_budget(settings: EvalSettings, specs: dict[str, TaskSpec], window: int, tokenizer) -> int:
    """Tokens a prompt is truncated to: evaluate.max_length, or what the model window leaves beside the chat
    template and the longest answer; an InputError where a task's prompt and answer would not fit the window."""
    overhead = chat_overhead(tokenizer) if settings.apply_chat_template else 1
    max_length = settings.max_length
    if max_length is None:
        max_length = window - max(spec.max_new_tokens for spec in specs.values()) - overhead - CHAT_MARGIN
    for task, spec in specs.items():
        if max_length + overhead + CHAT_MARGIN + spec.max_new_tokens > window:
            raise InputError(
                "params.yaml",
                f"max_length {max_length} + chat template ({overhead}) + {task}'s "
                f"{spec.max_new_tokens} new tokens exceed the model window ({window})",
                field="evaluate.max_length",
            )
    return max_length


def write_task_data(
    sources: list[tuple[str, Path]],
    specs: dict[str, TaskSpec],
    tokenizer,
    max_length: int,
    limit: int | None,
    work: Path,
) -> list[LmEvalTask]:
    """Each task's first `limit` docs, rendered and middle-truncated, as lm-eval data files under `work`/data."""
    (work / "data").mkdir()
    tasks = []
    for task, path in sources:
        docs = load_benchmark(path, task)[:limit]
        prepared = [prepare_document(doc, specs[task], tokenizer, max_length) for doc in docs]
        data_file = work / "data" / f"{task}.jsonl"
        write_jsonl(data_file, prepared)
        tasks.append(LmEvalTask(task, data_file, specs[task].max_new_tokens))
        truncated = sum(doc["truncated"] for doc in prepared)
        log.info("%s: %d docs from %s (%d truncated to %d tokens)", task, len(docs), path, truncated, max_length)
        if task.startswith("niah_") and truncated:
            log.warning(
                "%s: haystacks longer than evaluate.max_length (%d tokens) lose their middle, and with "
                "it any needle there: keep benchmark.niah.lengths below it or raise max_length",
                task,
                max_length,
            )
    return tasks


def score_variants(
    runner: LmEvalRunner,
    tasks: list[LmEvalTask],
    variants: list[tuple[str, Path, Path | None]],
    specs: dict[str, TaskSpec],
    model_dir: Path,
    window: int,
    named_template: str | None,
    settings: EvalSettings,
) -> tuple[dict, list[dict]]:
    """(the report's per-variant summaries, x100; every scored prediction): each variant through lm-eval."""
    report: dict = {"base": None, "finetuned": None, "delta": None}
    predictions = []
    for variant, model, adapter in variants:
        cache_db = (
            generation_cache_db(model, adapter, full=model != model_dir, settings=settings) if settings.cache else None
        )
        outputs = runner.run(
            model,
            tasks,
            settings,
            max_length=window,
            adapter_dir=adapter,
            cache_db=cache_db,
            label=f"evaluate {variant}",
            chat_template=named_template,
        )
        scores = {task: 100.0 * output["score"] for task, output in outputs.items()}
        report[variant] = summarize(scores, {task: spec.category for task, spec in specs.items()})
        for task, output in outputs.items():
            predictions += [_prediction_record(variant, task, sample) for sample in output["samples"]]
    return report, predictions


def generation_settings(settings: EvalSettings) -> dict:
    """What, besides the model and the request, changes a generation: the backend, the device and dtype it resolves
    to, and the batch size (rows padded to each other change the numerics). lm-eval's own request key already holds
    the prompt text (with the chat template applied) and the generation kwargs."""
    if settings.backend == "hf":
        device = resolve_device(settings.device)
        return {
            "backend": "hf",
            "device": device,
            "dtype": resolve_dtype(settings.dtype, device),
            "batch_size": settings.batch_size,
        }
    # vllm: evaluate.device is not used (vLLM places the model itself); the dtype goes to vLLM as written.
    return {"backend": settings.backend, "dtype": settings.dtype, "batch_size": settings.batch_size}


def generation_cache_db(
    model_dir: Path, adapter_dir: Path | None, full: bool = False, settings: EvalSettings | None = None
) -> Path:
    """lm-eval's request cache (keyed by the exact prompt and generation kwargs) in a file per model content and
    generation settings: the base model's identity plus the adapter's weights and config hashes; a fully fine-tuned
    model by its weights (its provenance names the base model it came from, which must not share the base model's
    cache); then `generation_settings(settings)`, so another backend, device, dtype or batch size misses the cache."""
    from ctxsynth.core.hub import model_identity

    settings = settings or EvalSettings()
    parts = (
        [sha256_file(p) for p in sorted(Path(model_dir).glob("*.safetensors"))] if full else [model_identity(model_dir)]
    )
    if adapter_dir is not None:
        parts += [sha256_file(path) for path in sorted(Path(adapter_dir).glob("adapter_*")) if path.is_file()]
        if settings.merge_adapter and settings.backend == "hf":
            parts.append("merged")  # another float path than the unmerged adapter's: its own cache
    parts.append(dumps(generation_settings(settings)))
    return user_cache_dir("lm_eval") / sha256_text("\n".join(parts))[:32]


def prepare_document(doc: dict, spec, tokenizer, max_length: int) -> dict:
    prompt, original, truncated = middle_truncate(tokenizer, spec.render(doc["context"], doc["input"]), max_length)
    kept = len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) if truncated else original
    return {
        "_id": str(doc["_id"]),
        "prompt": prompt,
        "answers": doc["answers"],
        "metric": spec.metric,
        "original_tokens": original,
        "prompt_tokens": kept,
        "truncated": truncated,
        **{name: doc[name] for name in NIAH_FIELDS if name in doc},
    }


def _prediction_record(variant: str, task: str, sample: dict) -> dict:
    doc = sample["doc"]
    return {
        "variant": variant,
        "task": task,
        "_id": doc["_id"],
        "prediction": sample["prediction"],
        "answers": doc["answers"],
        "score": round(100.0 * sample["score"], 4),
        "prompt_tokens": doc["prompt_tokens"],
        "original_tokens": doc["original_tokens"],
        "truncated": doc["truncated"],
        **{name: doc[name] for name in NIAH_FIELDS if doc.get(name) is not None},
    }


def _check_not_stale_gguf(model_dir: Path, config) -> None:
    """A dequantized GGUF saved as safetensors may keep `quantization_config: {quant_method: gguf}`; lm-eval passes it
    back to from_pretrained as a GgufConfig, which transformers refuses without a gguf_file. Say so up front."""
    quantization = getattr(config, "quantization_config", None)
    if isinstance(quantization, dict):
        method = quantization.get("quant_method")
    else:
        method = getattr(quantization, "quant_method", None)
    if str(getattr(method, "value", method)) == "gguf" and not any(Path(model_dir).glob("*.gguf")):
        raise InputError(
            Path(model_dir) / "config.json",
            "stale GGUF quantization_config in a safetensors model "
            "directory (lm-eval cannot load it): delete the key and re-save the model",
            field="quantization_config",
        )


def model_window(config) -> int:
    config = getattr(config, "text_config", None) or config
    for attribute in ("max_position_embeddings", "n_positions", "n_ctx"):
        if getattr(config, attribute, None):
            return int(getattr(config, attribute))
    return 2048


def chat_overhead(tokenizer) -> int:
    """Tokens the chat template adds around a user message (system prompt, role markers, generation prompt)."""
    if not getattr(tokenizer, "chat_template", None):
        raise InputError(
            "params.yaml",
            "the model's tokenizer has no chat template: set it to false for a base (non-chat) model",
            field="evaluate.apply_chat_template",
        )
    text = tokenizer.apply_chat_template([{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1
