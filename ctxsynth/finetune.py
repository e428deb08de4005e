"""LoRA / QLoRA instruction tuning on the assembled mix, with the loss on the answer tokens only.

transformers' Trainer runs the loop (AdamW, schedule, gradient accumulation normalised by the number of answer tokens,
gradient checkpointing, seeding); checkpoints go to a temporary directory and only the final adapter is kept.
Per-step loss, learning rate and throughput go to dvclive-format logs (`dvc plots`); a summary goes to a JSON file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ctxsynth.finetune_data import (IGNORE_INDEX, OVERLENGTH_MODES, PadCollator, PreparedData, end_of_turn_ids,
                                    load_chat_records, prepare_examples)
from ctxsynth.io import InputError, sha256_file, write_json

log = logging.getLogger(__name__)

QUANTIZATION_MODES = ("none", "nf4")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class FinetuneError(RuntimeError):
    """The run cannot start or finish (missing optional dependency, model problem)."""


@dataclass(frozen=True)
class FinetuneParams:
    """The `finetune` section of params.yaml; defaults are the CPU smoke configuration."""

    quantization: str = "none"           # none | nf4 (QLoRA through bitsandbytes)
    compute_dtype: str = "auto"          # auto = float32 on CPU, bfloat16 on CUDA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0            # the paper: 0.03 (rounds up to a whole step at lr 0 in a short run)
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = 12                  # > 0 overrides epochs; -1 = train `epochs` full passes
    batch_size: int = 1
    grad_accum: int = 2
    max_tokens: int = 1024               # 0 = no limit
    overlength: str = "truncate_middle"  # truncate_middle | drop
    gradient_checkpointing: bool = False
    answer_logits_only: bool = True      # project only the answer positions onto the vocabulary (same loss)
    attn_implementation: str = "sdpa"
    seed: int = 42
    logging_steps: int = 1

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any], source: os.PathLike | str = "params.yaml") -> "FinetuneParams":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise InputError(source, f"unknown finetune parameter (known: {', '.join(fields)})",
                             field=f"finetune.{unknown[0]}")
        values = dict(params)
        if isinstance(values.get("target_modules"), list):
            values["target_modules"] = tuple(values["target_modules"])
        for name, value in values.items():
            default = fields[name].default
            if isinstance(default, bool) and not isinstance(value, bool):
                raise InputError(source, f"expected true/false, got {value!r}", field=f"finetune.{name}")
            if isinstance(default, (int, float)) and not isinstance(default, bool):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise InputError(source, f"expected a number, got {value!r}", field=f"finetune.{name}")
                if isinstance(default, int) and value != int(value):
                    raise InputError(source, f"expected an integer, got {value!r}", field=f"finetune.{name}")
                values[name] = type(default)(value)
        result = cls(**values)
        result.check(source)
        return result

    def check(self, source: os.PathLike | str = "params.yaml") -> None:
        def bad(name: str, message: str) -> InputError:
            return InputError(source, message, field=f"finetune.{name}")

        if self.quantization not in QUANTIZATION_MODES:
            raise bad("quantization", f"expected one of {QUANTIZATION_MODES}, got {self.quantization!r}")
        if self.compute_dtype not in DTYPES:
            raise bad("compute_dtype", f"expected one of {DTYPES}, got {self.compute_dtype!r}")
        if self.overlength not in OVERLENGTH_MODES:
            raise bad("overlength", f"expected one of {OVERLENGTH_MODES}, got {self.overlength!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", f"expected a ratio in [0, 1), got {self.warmup_ratio}")
        for name in ("lora_r", "batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) < 1:
                raise bad(name, f"expected >= 1, got {getattr(self, name)}")
        if self.max_tokens < 0:
            raise bad("max_tokens", f"expected >= 0 (0 = no limit), got {self.max_tokens}")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise bad("epochs", "expected > 0 when max_steps is off (-1)")
        if not isinstance(self.target_modules, (str, tuple)) or not self.target_modules:
            raise bad("target_modules", "expected 'all-linear' or a list of module names")

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if isinstance(values["target_modules"], tuple):
            values["target_modules"] = list(values["target_modules"])
        return values


def resolve_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def load_tokenizer(model_dir: os.PathLike | str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if not tokenizer.chat_template:
        raise FinetuneError(f"{model_dir}: the tokenizer has no chat template")
    return tokenizer


def _load_config(model_dir: os.PathLike | str):
    """The model config, without a stale GGUF quantization_config left by a GGUF -> safetensors conversion.

    Such a config describes a file that is not there (the weights are plain safetensors), and Trainer refuses to train
    a model it believes GGUF-quantized.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    quantization = getattr(config, "quantization_config", None)
    if isinstance(quantization, dict) and quantization.get("quant_method") == "gguf" \
            and not (Path(model_dir) / str(quantization.get("gguf_file") or "")).is_file():
        log.warning("%s: ignoring the config's GGUF quantization_config (no GGUF file there, the weights are "
                    "safetensors)", model_dir)
        del config.quantization_config
    return config


def load_model(model_dir: os.PathLike | str, params: FinetuneParams, device: str):
    """The base model with LoRA adapters on `target_modules`; nf4 quantizes the frozen base (QLoRA)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    compute_dtype = resolve_dtype(params.compute_dtype, device)
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": params.attn_implementation}
    if params.quantization == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise FinetuneError("quantization: nf4 needs bitsandbytes (pip install 'ctxsynth[quant]'); "
                                "use quantization: none without it") from error
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype)
        kwargs["device_map"] = {"": 0 if device == "cuda" else "cpu"}
    kwargs["config"] = _load_config(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    actual = getattr(model.config, "_attn_implementation", None)
    if actual != params.attn_implementation:
        raise FinetuneError(f"asked for attn_implementation={params.attn_implementation!r}, the model uses {actual!r}")
    model.config.use_cache = False
    if params.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=params.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
    target = params.target_modules if isinstance(params.target_modules, str) else list(params.target_modules)
    set_seed(params.seed)  # the LoRA A matrices are drawn at random
    lora = LoraConfig(r=params.lora_r, lora_alpha=params.lora_alpha, lora_dropout=params.lora_dropout,
                      target_modules=target, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def _sort_target_modules(config_path: Path) -> None:
    """PEFT writes target_modules from a set, in hash order: sort them so the adapter is byte-identical per params."""
    import json

    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class LiveLog:
    """Per-step metrics in dvclive's on-disk layout, <dir>/plots/metrics/<name>.tsv (step, value), for `dvc plots`.

    dvclive.Live is not used to write them: on start it opens the enclosing DVC/git repository, raises SCMError in a
    repository without commits (this one, until the first commit) and runs `dvc init` in a git repository without
    .dvc. Its metrics.json summary is not written either: the stage's summary is the metrics file.
    """

    def __init__(self, directory: os.PathLike | str):
        self.plots = Path(directory) / "plots" / "metrics"
        shutil.rmtree(self.plots, ignore_errors=True)  # a fresh run, as dvclive does without resume
        self.plots.mkdir(parents=True)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            path = self.plots / f"{name}.tsv"
            header = "" if path.exists() else f"step\t{name}\n"
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"{header}{step}\t{value!r}\n")


def answer_only_loss(model, inputs: Mapping[str, Any], num_items_in_batch=None):
    """(loss, outputs): cross-entropy on the answer tokens, with logits computed at those positions only.

    The same value as the model's own loss on `labels` (sum over answer tokens / num_items_in_batch, or their mean),
    but the (tokens x vocabulary) projection, the largest single activation of a long sample, shrinks to the answer:
    about a fifth of the compute of SmolLM2-135M at 600 tokens, and gigabytes at 32K tokens and a 128K vocabulary.
    """
    import torch

    labels = inputs["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    targets = labels[:, 1:][keep[:, :-1]]
    outputs = model(**{key: value for key, value in inputs.items() if key != "labels"}, logits_to_keep=keep)
    logits = outputs.logits.float().reshape(-1, outputs.logits.shape[-1])
    if logits.shape[0] != targets.shape[0]:
        raise FinetuneError(f"{type(model).__name__} ignored logits_to_keep (got {logits.shape[0]} positions for "
                            f"{targets.shape[0]} answer tokens): set finetune.answer_logits_only: false")
    loss = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    return loss / (num_items_in_batch if num_items_in_batch is not None else max(targets.numel(), 1)), outputs


def _make_trainer_class():
    from transformers import Trainer, TrainerCallback

    class CountingTrainer(Trainer):
        """Counts the answer tokens and samples that really go through the model."""

        target_tokens = 0
        samples_seen = 0
        answer_logits_only = True

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if model.training:
                self.target_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
                self.samples_seen += int(inputs["labels"].shape[0])
            if not self.answer_logits_only:
                return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                            num_items_in_batch=num_items_in_batch)
            loss, outputs = answer_only_loss(model, inputs, num_items_in_batch)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss does for summed losses
            return (loss, outputs) if return_outputs else loss

    class StepLogger(TrainerCallback):
        """Per logged step: loss, learning rate, tokens/s to the live log and the logger; always logs the last step."""

        def __init__(self, live=None):
            self.live, self.history = live, []
            self._time = self._tokens = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._time, self._tokens = time.perf_counter(), state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs:
                return
            now, tokens = time.perf_counter(), state.num_input_tokens_seen
            speed = (tokens - self._tokens) / max(now - self._time, 1e-9)
            self._time, self._tokens = now, tokens
            row = {"step": state.global_step, "loss": float(logs["loss"]),
                   "learning_rate": float(logs.get("learning_rate", 0.0)), "tokens_per_second": speed}
            if "grad_norm" in logs:
                row["grad_norm"] = float(logs["grad_norm"])
            self.history.append(row)
            log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", state.global_step, state.max_steps, row["loss"],
                     row["learning_rate"], speed)
            if self.live is not None:
                self.live.log(state.global_step, {key: value for key, value in row.items() if key != "step"})

    return CountingTrainer, StepLogger


def _model_fingerprint(model_dir: Path) -> dict[str, str]:
    names = sorted(p.name for p in model_dir.iterdir()
                   if p.suffix in {".safetensors", ".json", ".jinja"} and p.is_file())
    return {name: sha256_file(model_dir / name) for name in names}


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def train(model_dir: os.PathLike | str, train_path: os.PathLike | str, adapter_dir: os.PathLike | str,
          metrics_path: os.PathLike | str | None, params: FinetuneParams, live_dir: os.PathLike | str | None = None,
          ) -> dict:
    """Fine-tune, write the adapter (with provenance.json), the metrics summary and the live logs."""
    import torch
    import transformers
    from transformers import PrinterCallback, TrainingArguments

    started = time.perf_counter()
    params.check()
    model_dir, train_path, adapter_dir = Path(model_dir), Path(train_path), Path(adapter_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(model_dir, "not a model directory (no config.json)")
    records = load_chat_records(train_path)  # validate the input before loading anything heavy
    device = resolve_device()
    compute_dtype = resolve_dtype(params.compute_dtype, device)
    tokenizer = load_tokenizer(model_dir)
    model = load_model(model_dir, params, device)
    data: PreparedData = prepare_examples(
        records, tokenizer, max_tokens=params.max_tokens or None, overlength=params.overlength,
        end_ids=end_of_turn_ids(tokenizer, getattr(model, "generation_config", None)), path=train_path)
    counts = data.counts()
    log.info("%d samples: %d used, %d truncated, %d dropped (max_tokens=%d)", data.total, len(data.examples),
             len(data.truncated), len(data.dropped), params.max_tokens)
    trainable, total = model.get_nb_trainable_parameters()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    CountingTrainer, StepLogger = _make_trainer_class()
    logger_cb = StepLogger(LiveLog(live_dir) if live_dir is not None else None)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctxsynth-finetune-") as scratch:
        args = TrainingArguments(
            output_dir=scratch, save_strategy="no", report_to="none", disable_tqdm=True,
            per_device_train_batch_size=params.batch_size, gradient_accumulation_steps=params.grad_accum,
            num_train_epochs=params.epochs, max_steps=params.max_steps,
            learning_rate=params.learning_rate, lr_scheduler_type=params.lr_scheduler,
            warmup_steps=params.warmup_ratio, weight_decay=params.weight_decay, adam_beta1=params.adam_beta1,
            adam_beta2=params.adam_beta2, max_grad_norm=params.max_grad_norm,
            logging_strategy="steps", logging_steps=params.logging_steps,
            seed=params.seed, data_seed=params.seed, use_cpu=device == "cpu",
            bf16=compute_dtype == torch.bfloat16, fp16=compute_dtype == torch.float16,
            activation_checkpointing=params.gradient_checkpointing,
            activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
            include_num_input_tokens_seen="non_padding", remove_unused_columns=False,
            dataloader_num_workers=0, dataloader_pin_memory=device == "cuda")
        trainer = CountingTrainer(model=model, args=args, train_dataset=data.examples,
                                  data_collator=PadCollator(pad_id), callbacks=[logger_cb])
        trainer.answer_logits_only = params.answer_logits_only
        trainer.remove_callback(PrinterCallback)  # StepLogger logs each step once, through logging
        train_started = time.perf_counter()
        output = trainer.train()
        train_time = time.perf_counter() - train_started

        tmp_adapter = Path(tempfile.mkdtemp(prefix=f".{adapter_dir.name}.", suffix=".tmp", dir=adapter_dir.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_adapter, 0o777 & ~umask)  # mkdtemp makes 0700 directories; the adapter gets the usual mode
        try:
            model.save_pretrained(tmp_adapter)
            _sort_target_modules(tmp_adapter / "adapter_config.json")
            trained_tokens = int(trainer.state.num_input_tokens_seen)
            losses = [row["loss"] for row in logger_cb.history]
            summary = {
                **counts,
                "final_loss": losses[-1] if losses else None,
                "first_loss": losses[0] if losses else None,
                "mean_loss": float(output.training_loss),
                "steps": int(output.global_step),
                "epochs": float(trainer.state.epoch or 0.0),
                "samples_seen": trainer.samples_seen,
                "trained_tokens": trained_tokens,
                "target_tokens": trainer.target_tokens,
                "tokens_per_second": trained_tokens / train_time if train_time else 0.0,
                "seconds_per_step": train_time / max(int(output.global_step), 1),
                "train_time_s": train_time,
                "wall_time_s": time.perf_counter() - started,
                "peak_rss_mb": _peak_rss_mb(),
                "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
                "device": device,
                "quantization": params.quantization,
                "compute_dtype": str(compute_dtype).removeprefix("torch."),
                "trainable_params": int(trainable),
                "total_params": int(total),
            }
            provenance = {
                "base_model": str(model_dir),
                "base_model_sha256": _model_fingerprint(model_dir),
                "train_data": str(train_path),
                "train_data_sha256": sha256_file(train_path),
                "params": params.as_dict(),
                "counts": counts,
                "truncated_ids": data.truncated,
                "dropped_ids": data.dropped,
                "steps": summary["steps"],
                "final_loss": summary["final_loss"],
                "device": device,
                "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": __import__("peft").__version__},
            }
            write_json(tmp_adapter / "provenance.json", provenance)
            _replace_dir(tmp_adapter, adapter_dir)
        finally:
            if tmp_adapter.exists():
                shutil.rmtree(tmp_adapter)
    summary["wall_time_s"] = time.perf_counter() - started
    if metrics_path is not None:
        write_json(metrics_path, summary)
    return summary
