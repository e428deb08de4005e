"""Instruction tuning on the assembled mix (LoRA, QLoRA or full fine-tuning), with the loss on the answer tokens only.

transformers' Trainer runs the loop (AdamW, schedule, gradient accumulation, gradient checkpointing, seeding, DDP /
FSDP / DeepSpeed through accelerate). Settings come from a recipe (ctxsynth/finetune/settings.py). Checkpoints go to
<checkpoint_dir>/<run key>, the key hashing the resolved params, the base model and the training data, so a rerun
after a kill resumes the same run and never a stale one. Per-step loss, learning rate, throughput and peak memory go
to dvclive-format logs (`dvc plots`); a summary goes to a JSON file. Both cover the whole run when it resumed: each
checkpoint keeps the rows logged and the counters so far (run_record.py).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxsynth.core.chat import apply_chat_template_choice
from ctxsynth.core.chat_encoding import end_of_turn_ids, model_generation_config
from ctxsynth.core.io import InputError, sha256_file, write_json
from ctxsynth.core.versions import library_versions
from ctxsynth.finetune.data import Example, PadCollator, PreparedData, load_chat_records, prepare_examples
from ctxsynth.finetune.errors import FinetuneError
from ctxsynth.finetune.live_log import LiveLog, peak_memory_mb
from ctxsynth.finetune.loss import answer_only_loss
from ctxsynth.finetune.packing import Pack, PackedCollator, pack_examples
from ctxsynth.finetune.run_record import RunRecord
from ctxsynth.finetune.settings import FinetuneSettings

if TYPE_CHECKING:  # transformers' Trainer takes seconds to import: a run imports it (trainer.py) when it starts
    import torch
    from transformers import TrainerCallback
    from transformers.trainer_utils import TrainOutput

    from ctxsynth.finetune.trainer import CountingTrainer

log = logging.getLogger(__name__)

__all__ = ["FinetuneError", "FinetuneSettings", "LiveLog", "answer_only_loss", "is_adapter_dir", "load_model", "train"]


def is_adapter_dir(path: os.PathLike | str) -> bool:
    """The finetune output is a PEFT adapter (adapter_config.json) or, after full fine-tuning, a whole model."""
    return (Path(path) / "adapter_config.json").is_file()


def resolve_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str, device: str):
    import torch

    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, name)


def resolve_optim(name: str, device: str) -> str:
    if name.startswith("paged_") and device != "cuda":
        log.warning("optim %s needs CUDA (paged optimizer states): using adamw_torch on %s", name, device)
        return "adamw_torch"
    return name


@dataclass(frozen=True)
class Runtime:
    """Where and how a run computes: the device, the dtype autocast computes in, the optimizer."""

    device: str
    compute_dtype: torch.dtype
    optim: str


def resolve_runtime(params: FinetuneSettings) -> Runtime:
    """`finetune.compute_dtype` and `finetune.optim` resolved for the device there is (CUDA, else the CPU)."""
    device = resolve_device()
    return Runtime(device, resolve_dtype(params.compute_dtype, device), resolve_optim(params.optim, device))


@dataclass
class TrainingData:
    """The training set as the run sees it: the prepared examples, the dataset and collator, the counts."""

    prepared: PreparedData
    dataset: list[Pack] | list[Example]  # packs of samples with `finetune.packing`, else the samples
    collator: PackedCollator | PadCollator
    counts: dict[str, int]  # samples used, truncated, dropped, ... (and packed_sequences)


@dataclass
class TrainingRun:
    """What trainer.train() leaves, finished or stopped early: the trainer, its output, the logged losses."""

    trainer: CountingTrainer
    output: TrainOutput
    losses: list[float]  # every logged step's, a resumed run's from its checkpoint's record too
    train_time: float  # seconds in trainer.train()
    trainable_params: int
    total_params: int
    start_step: int = 0  # the step this trainer.train() began at (a resumed run's checkpoint)
    start_tokens: int = 0  # the input tokens seen by then


def load_tokenizer(model_dir: os.PathLike | str, chat_template: str) -> tuple[Any, str]:
    """(the model's tokenizer with the chat format `finetune.chat_template` names, that format's name@version)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return tokenizer, apply_chat_template_choice(tokenizer, chat_template, "finetune.chat_template")


def _load_config(model_dir: os.PathLike | str):
    """The model config, without a stale GGUF quantization_config left by a GGUF -> safetensors conversion.

    Such a config describes a file that is not there (the weights are plain safetensors), and Trainer refuses to train
    a model it believes GGUF-quantized.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    quantization = getattr(config, "quantization_config", None)
    if (
        isinstance(quantization, dict)
        and quantization.get("quant_method") == "gguf"
        and not (Path(model_dir) / str(quantization.get("gguf_file") or "")).is_file()
    ):
        log.warning(
            "%s: ignoring the config's GGUF quantization_config (no GGUF file there, the weights are safetensors)",
            model_dir,
        )
        del config.quantization_config
    return config


def load_model(model_dir: os.PathLike | str, params: FinetuneSettings, device: str):
    """The base model, with LoRA adapters on `target_modules` (nf4 quantizes the frozen base: QLoRA) or whole."""
    import torch
    from transformers import AutoModelForCausalLM, set_seed

    compute_dtype = resolve_dtype(params.compute_dtype, device)
    # fp32 master weights: Trainer's bf16/fp16 autocast computes in the compute dtype
    kwargs: dict[str, Any] = {"dtype": torch.float32, "attn_implementation": params.attn_implementation}
    if params.quantization == "nf4":
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as error:
            raise FinetuneError(
                "quantization: nf4 needs bitsandbytes (pip install 'ctxsynth[quant]'); "
                "use quantization: none without it"
            ) from error
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else "cpu"}
    kwargs["config"] = _load_config(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    actual = getattr(model.config, "_attn_implementation", None)
    if actual != params.attn_implementation:
        raise FinetuneError(f"asked for attn_implementation={params.attn_implementation!r}, the model uses {actual!r}")
    model.config.use_cache = False
    if params.method == "full":
        return model
    from peft import LoraConfig, get_peft_model

    if params.quantization == "nf4":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=params.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    target = params.target_modules if isinstance(params.target_modules, str) else list(params.target_modules)
    set_seed(params.seed)  # the LoRA A matrices are drawn at random
    lora = LoraConfig(
        r=params.lora_r,
        lora_alpha=params.lora_alpha,
        lora_dropout=params.lora_dropout,
        target_modules=target,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _sort_target_modules(config_path: Path) -> None:
    """PEFT writes target_modules from a set, in hash order: sort them so the adapter is byte-identical per params."""
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
        config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _model_fingerprint(model_dir: Path) -> dict[str, str]:
    names = sorted(
        p.name for p in model_dir.iterdir() if p.suffix in {".safetensors", ".json", ".jinja"} and p.is_file()
    )
    return {name: sha256_file(model_dir / name) for name in names}


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    old = out_dir.with_name(f".{out_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(tmp_dir, out_dir)
    shutil.rmtree(old, ignore_errors=True)


TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME, the last file a checkpoint gets


def _last_checkpoint(run_dir: Path) -> str | None:
    """The newest complete checkpoint: one a kill cut short while it was written has no trainer_state.json yet."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not run_dir.is_dir():
        return None
    steps = {
        int(path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")): path
        for path in run_dir.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
        if path.name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit() and (path / TRAINER_STATE).is_file()
    }
    return str(steps[max(steps)]) if steps else None


def _save_output(trainer, tokenizer, params: FinetuneSettings, adapter_dir: Path, provenance: dict) -> None:
    """The adapter (LoRA) or the whole model and its tokenizer (full), with provenance.json, replaced atomically.

    Every process calls this: under FSDP or ZeRO-3 the weights are sharded and save_model gathers them.
    """
    main = trainer.is_world_process_zero()
    tmp = adapter_dir.with_name(f".{adapter_dir.name}.tmp")
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    trainer.accelerator.wait_for_everyone()
    try:
        trainer.save_model(str(tmp))
        if main:
            (tmp / "training_args.bin").unlink(missing_ok=True)  # pickles temporary paths: not reproducible
            if params.method == "lora":
                _sort_target_modules(tmp / "adapter_config.json")
            else:
                tokenizer.save_pretrained(tmp)  # a full model directory evaluates on its own
            write_json(tmp / "provenance.json", provenance)
            _replace_dir(tmp, adapter_dir)
    finally:
        trainer.accelerator.wait_for_everyone()
        if main and tmp.exists():
            shutil.rmtree(tmp)


def _numel(parameter) -> int:
    # Under ZeRO-3 each process holds an empty placeholder; DeepSpeed keeps the real count in ds_numel.
    return int(getattr(parameter, "ds_numel", 0) or parameter.numel())


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total), right under ZeRO-3 too."""
    if hasattr(model, "get_nb_trainable_parameters") and not any(hasattr(p, "ds_numel") for p in model.parameters()):
        return model.get_nb_trainable_parameters()  # PEFT counts 4-bit packed weights at their real size
    return (
        sum(_numel(p) for p in model.parameters() if p.requires_grad),
        sum(_numel(p) for p in model.parameters()),
    )


def training_arguments(
    params: FinetuneSettings, output_dir: str, checkpointing: bool, device: str, compute_dtype, optim: str
):
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        report_to="none",
        disable_tqdm=True,
        save_strategy="steps" if checkpointing else "no",
        save_steps=max(params.save_steps, 1),
        save_total_limit=1,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        optim=optim,
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,
        weight_decay=params.weight_decay,
        adam_beta1=params.adam_beta1,
        adam_beta2=params.adam_beta2,
        max_grad_norm=params.max_grad_norm,
        logging_strategy="steps",
        logging_steps=params.logging_steps,
        seed=params.seed,
        data_seed=params.seed,
        use_cpu=device == "cpu",
        bf16=compute_dtype == torch.bfloat16,
        fp16=compute_dtype == torch.float16,
        activation_checkpointing=params.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if params.gradient_checkpointing else None,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=device == "cuda",
    )


def train(
    model_dir: os.PathLike | str,
    train_path: os.PathLike | str,
    adapter_dir: os.PathLike | str,
    metrics_path: os.PathLike | str | None,
    params: FinetuneSettings,
    live_dir: os.PathLike | str | None = None,
    checkpoint_dir: os.PathLike | str | None = None,
    stop_after_steps: int | None = None,
    on_trained: Callable[[Any], None] | None = None,
) -> dict:
    """Fine-tune; write the adapter or model (with provenance.json), the metrics summary and the live logs.

    With `checkpoint_dir` and save_steps > 0, a checkpoint is kept every save_steps steps and an unfinished run with
    the same key resumes from its last one. `stop_after_steps` ends the run early without writing outputs, as a kill
    would (for tests). `on_trained(trainer)` sees the trained model before it is saved (`ctxsynth doctor` compares
    its logits with the saved output's).
    """
    started, versions = time.perf_counter(), library_versions()
    model_dir, train_path, adapter_dir = Path(model_dir), Path(train_path), Path(adapter_dir)
    records = read_training_records(params, model_dir, train_path)  # every input checked before anything heavy
    runtime = resolve_runtime(params)
    tokenizer, chat_format = load_tokenizer(model_dir, params.chat_template)
    data = training_data(records, tokenizer, params, model_dir, train_path)
    fingerprint, train_sha = _model_fingerprint(model_dir), sha256_file(train_path)
    run_dir, resume_from = checkpoint_location(checkpoint_dir, params, fingerprint, train_sha)
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctxsynth-finetune-") as scratch:
        run = fit(model_dir, params, runtime, data, run_dir, scratch, resume_from, live_dir, stop_after_steps)
        summary = {**data.counts, **run_summary(run, params, runtime, resume_from)}
        if stop_after_steps is not None and run.output.global_step < run.trainer.state.max_steps:
            return summary  # an interrupted run: checkpoints only, like a kill
        provenance = {
            "chat_template": chat_format,
            "base_model": str(model_dir),
            "base_model_sha256": fingerprint,
            "train_data": str(train_path),
            "train_data_sha256": train_sha,
            "params": params.as_dict(),
            "counts": data.counts,
            "truncated_ids": data.prepared.truncated,
            "dropped_ids": data.prepared.dropped,
            "steps": summary["steps"],
            "final_loss": summary["final_loss"],
            "device": runtime.device,
            "versions": training_versions(versions),
        }
        if on_trained is not None:
            on_trained(run.trainer)
        _save_output(run.trainer, tokenizer, params, adapter_dir, provenance)
        if run_dir is not None and run.trainer.is_world_process_zero():
            _remove_checkpoints(run_dir.parent)  # finished: its checkpoints and abandoned runs' go
    summary["wall_time_s"] = time.perf_counter() - started
    summary["versions"] = versions  # the losses and the speed depend on them
    if metrics_path is not None and run.trainer.is_world_process_zero():
        write_json(metrics_path, summary)
    return summary


def read_training_records(params: FinetuneSettings, model_dir: Path, train_path: Path) -> list[tuple[int, dict]]:
    """The training records (line number, record), validated, once the settings and the model directory are."""
    params.check()
    if not (model_dir / "config.json").is_file():
        raise InputError(model_dir, "not a model directory (no config.json)")
    return load_chat_records(train_path)


def training_data(
    records: list[tuple[int, dict]], tokenizer, params: FinetuneSettings, model_dir: Path, train_path: Path
) -> TrainingData:
    """The records prepared and batched as the run trains on them, with their counts."""
    prepared = prepare_training_data(records, tokenizer, params, model_dir, train_path)
    dataset, collator = training_batches(prepared, tokenizer, params)
    counts = prepared.counts() | ({"packed_sequences": len(dataset)} if params.packing else {})
    return TrainingData(prepared, dataset, collator, counts)


def prepare_training_data(
    records: list[tuple[int, dict]], tokenizer, params: FinetuneSettings, model_dir: Path, train_path: Path
) -> PreparedData:
    """The records as token ids with answer-only labels, over-long ones cut or dropped (`finetune.overlength`)."""
    data = prepare_examples(
        records,
        tokenizer,
        max_tokens=params.max_tokens or None,
        overlength=params.overlength,
        end_ids=end_of_turn_ids(tokenizer, model_generation_config(model_dir)),
        path=train_path,
    )
    log.info(
        "%d samples: %d used, %d truncated, %d dropped (max_tokens=%d)",
        data.total,
        len(data.examples),
        len(data.truncated),
        len(data.dropped),
        params.max_tokens,
    )
    return data


def training_batches(
    data: PreparedData, tokenizer, params: FinetuneSettings
) -> tuple[list[Pack] | list[Example], PackedCollator | PadCollator]:
    """(dataset, collator): samples packed into sequences of up to max_tokens (`finetune.packing`), or one sample a
    row, padded."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if not params.packing:
        return data.examples, PadCollator(pad_id, params.loss_weighting)
    packs = pack_examples(data.examples, params.max_tokens)
    log.info("packed %d samples into %d sequences of <= %d tokens", len(data.examples), len(packs), params.max_tokens)
    return packs, PackedCollator(pad_id, params.loss_weighting)


def checkpoint_location(
    checkpoint_dir: os.PathLike | str | None, params: FinetuneSettings, fingerprint: dict[str, str], train_sha: str
) -> tuple[Path | None, str | None]:
    """(where this run keeps its checkpoints, <checkpoint_dir>/<run key>, or None when it keeps none; the last
    checkpoint there, which the run resumes from, or None)."""
    if checkpoint_dir is None or params.save_steps <= 0:
        return None, None
    run_dir = Path(checkpoint_dir) / params.run_key(fingerprint, train_sha)
    resume_from = _last_checkpoint(run_dir)
    if resume_from:
        log.info("resuming from %s", resume_from)
    return run_dir, resume_from


def main_process_live_log(live_dir: os.PathLike | str | None) -> LiveLog | None:
    """The per-step log, opened by the main process only: LiveLog starts by clearing its directory, and a second
    rank doing so while the first recreates it failed the distributed run (FileExistsError on rank 1, CI of 0fb2cb3).
    The trainer's state is not built yet, so the rank comes from the launcher's environment."""
    if live_dir is None or int(os.environ.get("RANK", "0")) != 0:
        return None
    return LiveLog(live_dir)


def fit(
    model_dir: Path,
    params: FinetuneSettings,
    runtime: Runtime,
    data: TrainingData,
    run_dir: Path | None,
    scratch: str,
    resume_from: str | None,
    live_dir: os.PathLike | str | None,
    stop_after_steps: int | None,
) -> TrainingRun:
    """Load the model and train it with transformers' Trainer, checkpointing to `run_dir` (to `scratch`, without
    checkpoints, when None) and resuming from `resume_from`."""
    from transformers import PrinterCallback

    from ctxsynth.finetune.trainer import CountingTrainer, RestoreRun, StepLogger, StopEarly

    record = resume_record(resume_from)
    step_logger = StepLogger(main_process_live_log(live_dir), record.rows if record else ())
    callbacks: list[TrainerCallback] = [step_logger]
    if stop_after_steps is not None:
        callbacks.append(StopEarly(stop_after_steps))
    # TrainingArguments first: under accelerate + DeepSpeed ZeRO-3 it registers the DeepSpeed config with
    # transformers, and only then does from_pretrained load each rank's shard instead of the whole model.
    args = training_arguments(
        params, str(run_dir or scratch), run_dir is not None, runtime.device, runtime.compute_dtype, runtime.optim
    )
    model = load_model(model_dir, params, runtime.device)
    trainable, total = count_parameters(model)
    trainer = CountingTrainer(
        model=model, args=args, train_dataset=data.dataset, data_collator=data.collator, callbacks=callbacks
    )
    trainer.answer_logits_only = params.answer_logits_only
    trainer.logged_rows = step_logger.history  # each checkpoint keeps them
    if record is not None:
        trainer.add_callback(RestoreRun(trainer, record))
    trainer.remove_callback(PrinterCallback)  # StepLogger logs each step once, through logging
    train_started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from)
    train_time = time.perf_counter() - train_started
    losses = [row["loss"] for row in step_logger.history]
    start = (step_logger.start_step, step_logger.start_tokens)
    return TrainingRun(trainer, output, losses, train_time, int(trainable), int(total), *start)


def resume_record(resume_from: str | None) -> RunRecord | None:
    """The run record of the checkpoint a run resumes from (None for a fresh run, or a checkpoint without one)."""
    if resume_from is None:
        return None
    record = RunRecord.load(resume_from)
    if record is None:
        log.warning("%s has no run record: the metrics and plots cover only the steps after it", resume_from)
    return record


def run_summary(run: TrainingRun, params: FinetuneSettings, runtime: Runtime, resume_from: str | None) -> dict:
    """The metrics summary of a run, less the sample counts and the wall time.

    A resumed run's losses, counts and tokens cover the whole run (its checkpoint's record gave the steps before it);
    its timings (tokens/s, seconds per step, train time, peak memory) are this process's, over the steps it ran.
    """
    trainer, output = run.trainer, run.output
    trained_tokens = int(trainer.state.num_input_tokens_seen)
    steps_run = int(output.global_step) - run.start_step
    return {
        "final_loss": run.losses[-1] if run.losses else None,
        "first_loss": run.losses[0] if run.losses else None,
        "mean_loss": trainer.mean_loss(output.training_loss),
        "steps": int(output.global_step),
        "resumed_from_step": int(Path(resume_from).name.split("-")[-1]) if resume_from else 0,
        "epochs": float(trainer.state.epoch or 0.0),
        "samples_seen": trainer.samples_seen,
        "trained_tokens": trained_tokens,
        "target_tokens": trainer.target_tokens,
        "tokens_per_second": (trained_tokens - run.start_tokens) / run.train_time if run.train_time else 0.0,
        "seconds_per_step": run.train_time / max(steps_run, 1),
        "train_time_s": run.train_time,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "peak_cuda_mb": peak_memory_mb() if runtime.device == "cuda" else None,
        "device": runtime.device,
        "world_size": trainer.args.world_size,
        "method": params.method,
        "quantization": params.quantization,
        "compute_dtype": str(runtime.compute_dtype).removeprefix("torch."),
        "optim": runtime.optim,
        "trainable_params": run.trainable_params,
        "total_params": run.total_params,
        "params": params.as_dict(),
    }


def training_versions(versions: dict[str, str]) -> dict[str, str]:
    """Of the installed versions, those of the libraries that computed the weights, for the provenance."""
    return {name: versions[name] for name in ("torch", "transformers", "peft")}


def _remove_checkpoints(checkpoint_dir: Path) -> None:
    for stale in checkpoint_dir.iterdir():
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
