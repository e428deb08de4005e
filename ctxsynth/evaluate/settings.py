"""Settings of the evaluate stage: params.yaml section `evaluate`.

Each field's default is the one place that default lives; params.yaml repeats every key because DVC tracks them
(tests/test_settings.py checks that the two agree). Loaded with `ctxsynth.core.settings.load_settings` or
`EvalSettings.from_params(section)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, get_args

from ctxsynth.core.chat import MODEL_TEMPLATE
from ctxsynth.core.settings import Invalid, load_settings
from ctxsynth.core.tasks import get_task

# hf: transformers (+ PEFT); vllm: lm-eval's vllm model (ctxsynth/evaluate/lm_eval_runner.py); auto: vllm where it
# imports and a CUDA device is there, hf elsewhere (a row that runs on a GPU machine and rehearses on a CPU one).
BackendName = Literal["hf", "vllm", "auto"]
BACKENDS: tuple[str, ...] = get_args(BackendName)

# LongBench's English tasks the paper reports (THUDM's file names).
PAPER_TASKS = ("narrativeqa", "qasper", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum", "multi_news")
BENCHMARK_TASKS = (
    "squad_long",
    "hotpotqa_long",
    "niah_single",
    "niah_multikey",
    "niah_multiquery",
    "niah_multivalue",
)


@dataclass
class EvalSettings:
    """`evaluate`: score the base model and base + adapter on the long-context tasks through lm-eval."""

    tasks: list[str] = field(default_factory=lambda: list(BENCHMARK_TASKS))  # data/benchmark/<task>.jsonl
    max_length: int | None = 2048  # prompt tokens before the chat template, cut in the middle; null: model window
    batch_size: int = 1  # CPU: long prompts are prefill-bound, batching pads and only adds memory
    limit: int | None = None  # first N docs per task (null: all)
    apply_chat_template: bool = True  # false: raw prompts, no chat format at all
    # model: the tokenizer's own chat template; or a format of core/chat_templates.yaml (longalign) for a base model
    # without one: the same as finetune.chat_template, so the model is asked the way it was trained.
    chat_template: str = MODEL_TEMPLATE
    longbench_dir: str | None = None  # THUDM layout: <dir>/data/<task>.jsonl (or <dir>/<task>.jsonl)
    longbench_tasks: list[str] = field(default_factory=lambda: list(PAPER_TASKS))  # read when longbench_dir is set
    backend: BackendName = "hf"  # hf: transformers (+ PEFT); vllm: lm-eval's vllm model with the LoRA adapter; auto
    device: str = "auto"  # hf backend: auto | cpu | cuda[:n]
    dtype: str = "auto"  # auto: float32 on CPU, the checkpoint's dtype on GPU
    # hf backend: fold the LoRA adapter into the weights before generating, 1.2x faster evaluation on CPU; the float
    # sums differ from the unmerged model's in the last bits, so a few greedy predictions can differ.
    merge_adapter: bool = True
    score_base: bool = True  # also score the base model without adapter, the reference row
    # Reuse greedy generations per (model, adapter) content: experiments that leave the adapter unchanged, and every
    # base-model row, are not paid twice (~/.cache/ctxsynth/lm_eval).
    cache: bool = True

    def resolved(self) -> EvalSettings:
        """These settings with `backend: auto` replaced by the backend this machine runs (the stage records which)."""
        if self.backend != "auto":
            return self
        from dataclasses import replace

        return replace(self, backend="vllm" if vllm_runs_here() else "hf")

    @classmethod
    def from_params(cls, params: dict | None, source: str = "params.yaml") -> EvalSettings:
        """The `evaluate` section (null or a missing key: the default), validated."""
        return load_settings(cls, "evaluate", params or {}, source)

    def validate(self) -> None:
        for key in ("max_length", "limit", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise Invalid(key, f"expected a positive integer{'' if key == 'batch_size' else ' or null'}")
        if self.max_length is not None and self.max_length < 16:
            raise Invalid("max_length", "must be at least 16 tokens (or null)")
        names = [("tasks", self.tasks)] + ([("longbench_tasks", self.longbench_tasks)] if self.longbench_dir else [])
        for key, tasks in names:
            for index, name in enumerate(tasks):
                try:
                    get_task(name)
                except KeyError as error:
                    raise Invalid(f"{key}[{index}]", error.args[0]) from None


def vllm_runs_here() -> bool:
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()
