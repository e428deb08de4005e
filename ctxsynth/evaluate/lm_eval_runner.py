"""Run ctxsynth's own lm-eval tasks (never lm-eval's hub-backed longbench tasks) on a local model: lm-eval's `hf`
model (PEFT adapter, CPU or CUDA) or, when installed, its `vllm` model (LoRA adapter, GPU).

One YAML per task is rendered at run time into a temporary task directory: it `include`s the packaged
lm_eval_tasks/ctxsynth_task.yaml (which holds `process_results: !function utils.process_results`, resolved
next to that file) and points `dataset_path: json` at an ABSOLUTE prepared JSONL (relative `data_files` would
resolve against the current directory). The TaskManager indexes only that directory (`include_defaults=False`):
lm-eval's ~14,700 built-in tasks are never scanned, and one TaskManager serves every model variant.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from ctxsynth.core.progress import interactive, stage_progress
from ctxsynth.evaluate.settings import BACKENDS, EvalSettings

log = logging.getLogger(__name__)

TASK_PREFIX = "ctxsynth_"


@dataclass(frozen=True)
class LmEvalTask:
    name: str  # the task's name in tasks.yaml
    data_file: Path  # prepared docs: {_id, prompt, answers, metric, ...}, one JSON object per line
    max_gen_toks: int

    @property
    def lm_eval_name(self) -> str:
        return TASK_PREFIX + self.name


def base_task_yaml() -> Path:
    path = Path(str(resources.files("ctxsynth.evaluate").joinpath("lm_eval_tasks/ctxsynth_task.yaml")))
    if not path.is_file():
        raise FileNotFoundError(f"packaged lm-eval task template not found at {path}")
    return path


def render_task_dir(tasks: list[LmEvalTask], directory: Path, version: int, cache_dir: Path | None = None) -> Path:
    """Write one lm-eval task YAML per task into `directory` (absolute paths only); return the directory."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    base = base_task_yaml()
    for task in tasks:
        dataset_kwargs: dict = {"data_files": {"test": str(Path(task.data_file).resolve())}}
        if cache_dir is not None:  # keep datasets' Arrow cache out of ~/.cache and away from stale entries
            dataset_kwargs["cache_dir"] = str(Path(cache_dir).resolve())
        config = {
            "include": str(base),
            "task": task.lm_eval_name,
            "dataset_kwargs": dataset_kwargs,
            "generation_kwargs": {
                "until": [],
                "do_sample": False,
                "temperature": 0.0,
                "max_gen_toks": int(task.max_gen_toks),
            },
            "metadata": {"version": int(version)},
        }
        (directory / f"{task.lm_eval_name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return directory


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto`: float32 on CPU (no native bf16 on AVX2: 12x slower), the checkpoint's dtype elsewhere."""
    if dtype != "auto":
        return dtype
    return "float32" if device == "cpu" else "auto"


def attention_implementation(model) -> str | None:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "_attn_implementation", None)


def vllm_model_args(
    model_dir: Path, adapter_dir: Path | None, *, dtype: str, batch_size: int, max_model_len: int
) -> dict:
    """lm-eval's `vllm` model arguments: the LoRA adapter served by vLLM (max_lora_rank >= the adapter's rank) and
    middle truncation, LongBench's rule, should a prompt still exceed the window."""
    args = dict(
        pretrained=str(model_dir),
        dtype=dtype,
        batch_size=int(batch_size),
        max_model_len=int(max_model_len),
        truncation_side="middle",
        seed=0,
    )
    if adapter_dir is not None:
        config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))
        rank = int(config.get("r", 16))
        args["lora_local_path"] = str(adapter_dir)
        args["max_lora_rank"] = next(size for size in (8, 16, 32, 64, 128, 256, 320, 512) if size >= rank)
    return args


def _vllm_model(model_dir: Path, adapter_dir: Path | None, *, dtype: str, batch_size: int, max_length: int):
    """Imported only here: vLLM is an optional GPU dependency, never installed in CI."""
    if importlib.util.find_spec("vllm") is None:
        raise RuntimeError(
            "evaluate.backend is vllm but the vllm package is not installed (pip install vllm, on a "
            "CUDA machine); use evaluate.backend: hf otherwise"
        )
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(**vllm_model_args(model_dir, adapter_dir, dtype=dtype, batch_size=batch_size, max_model_len=max_length))


class _RichTqdm:
    """Stands in for the tqdm bar lm-eval's HFLM opens in generate_until, drawing the project's progress bar
    instead; lm-eval's own batching and ordering are untouched (so scores cannot depend on the display)."""

    def __init__(self, progress, label: str):
        self.progress, self.label = progress, label

    def __call__(self, total=None, disable=False, desc=None, **kwargs):
        self.task = self.progress.add_task(self.label, total=total, stats="", visible=not disable)
        return self

    def update(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def close(self) -> None:
        pass


def _hf_model(
    model_dir: Path,
    adapter_dir: Path | None,
    *,
    device: str,
    dtype: str,
    batch_size: int,
    max_length: int,
    label: str,
    merge_adapter: bool,
):
    from lm_eval.models import huggingface

    class HFLM(huggingface.HFLM):
        def generate_until(self, requests, disable_tqdm: bool = False):
            if disable_tqdm or self.rank != 0 or not interactive():
                return super().generate_until(requests, disable_tqdm=disable_tqdm)
            original = huggingface.tqdm
            with stage_progress() as progress:
                huggingface.tqdm = _RichTqdm(progress, label)
                try:
                    return super().generate_until(requests, disable_tqdm=False)
                finally:
                    huggingface.tqdm = original

    device = resolve_device(device)
    model_args = dict(
        pretrained=str(model_dir),
        device=device,
        dtype=resolve_dtype(dtype, device),
        batch_size=int(batch_size),
        max_length=int(max_length),
        attn_implementation="sdpa",
    )
    if adapter_dir is not None:
        model_args["peft"] = str(adapter_dir)
    lm = HFLM(**model_args)
    if adapter_dir is not None and merge_adapter:
        # An unmerged LoRA adds two small matmuls and a Python-level module call to every linear layer of every
        # decoding step; at 135M parameters on a CPU merging made a whole evaluation 1.2x faster
        # (benchmarks/eval_throughput.py --adapter). Merging costs one pass over the weights and changes the
        # float sums, which is why it is a tracked setting and part of the generation cache key.
        lm._model = lm._model.merge_and_unload()
    implementation = attention_implementation(lm.model)
    if implementation != "sdpa":  # eager attention is ~4.6x slower on this CPU: refuse, never fall back
        raise RuntimeError(f"{model_dir}: model loaded with attn_implementation={implementation!r}, expected 'sdpa'")
    return lm


class LmEvalRunner:
    """Holds the TaskManager for one rendered task directory; `run` scores one model variant."""

    def __init__(self, task_dir: Path):
        from lm_eval.tasks import TaskManager

        self.task_dir = Path(task_dir).resolve()
        self.task_manager = TaskManager(include_path=str(self.task_dir), include_defaults=False)

    def run(
        self,
        model_dir: Path,
        tasks: list[LmEvalTask],
        settings: EvalSettings,
        *,
        max_length: int,
        adapter_dir: Path | None = None,
        cache_db: Path | None = None,
        label: str | None = None,
        chat_template: str | None = None,
    ) -> dict[str, dict]:
        """Greedy generation + scoring with `settings`' backend, device, dtype, batch size, chat template switch and
        adapter merging; returns {task: {"score": mean in [0, 1], "samples": [{doc, prediction, score}, ...]}} with
        samples in the prepared file's order. `chat_template` (a Jinja template) replaces the tokenizer's own, for a
        base model fine-tuned in a named chat format."""
        import lm_eval

        backend = settings.backend
        if backend == "vllm":
            lm = _vllm_model(
                model_dir, adapter_dir, dtype=settings.dtype, batch_size=settings.batch_size, max_length=max_length
            )
        elif backend == "hf":
            label = label or f"evaluate {Path(adapter_dir or model_dir).name}"
            lm = _hf_model(
                model_dir,
                adapter_dir,
                device=settings.device,
                dtype=settings.dtype,
                batch_size=settings.batch_size,
                max_length=max_length,
                label=label,
                merge_adapter=settings.merge_adapter,
            )
        else:
            raise ValueError(f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
        if chat_template is not None:
            lm.tokenizer.chat_template = chat_template  # lm-eval renders (and keys its cache) through the tokenizer
        try:
            results = lm_eval.simple_evaluate(
                model=lm,
                tasks=[task.lm_eval_name for task in tasks],
                task_manager=self.task_manager,
                apply_chat_template=bool(settings.apply_chat_template),
                log_samples=True,
                bootstrap_iters=0,
                use_cache=str(cache_db) if cache_db else None,
                num_fewshot=0,
            )
        finally:
            del lm
            gc.collect()
        return {task.name: _task_output(results, task) for task in tasks}


def _task_output(results: dict, task: LmEvalTask) -> dict:
    name = task.lm_eval_name
    if name not in results.get("results", {}) or name not in results.get("samples", {}):
        raise RuntimeError(f"lm-eval returned no results for {name}")
    samples = sorted(results["samples"][name], key=lambda sample: sample["doc_id"])
    return {
        "score": float(results["results"][name]["score,none"]),
        "samples": [
            {"doc": sample["doc"], "prediction": sample["filtered_resps"][0], "score": float(sample["score"])}
            for sample in samples
        ],
    }
