"""Instruction tuning on the assembled mix (LoRA, QLoRA or full fine-tuning), with the loss on the answer tokens only.

transformers' Trainer runs the loop (AdamW, schedule, gradient accumulation, gradient checkpointing, seeding, DDP /
FSDP / DeepSpeed through accelerate). Settings come from a recipe (ctxsynth/finetune/settings.py). Checkpoints go to
<checkpoint_dir>/<run key>, the key hashing the resolved params, the base model and the training data, so a rerun
after a kill resumes the same run and never a stale one. Per-step loss, learning rate, throughput and peak memory go
to dvclive-format logs (`dvc plots`); a summary goes to a JSON file.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from ctxsynth.core.chat import MODEL_TEMPLATE, apply_chat_template_choice
from ctxsynth.core.chat_encoding import end_of_turn_ids, model_generation_config
from ctxsynth.core.io import InputError, sha256_file, write_json
from ctxsynth.finetune.data import PadCollator, PreparedData, load_chat_records, prepare_examples
from ctxsynth.finetune.packing import PackedCollator, pack_examples
from ctxsynth.finetune.settings import FinetuneSettings
from ctxsynth.finetune.trainer import FinetuneError, LiveLog, answer_only_loss, make_trainer_classes, peak_memory_mb

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


def load_tokenizer(model_dir: os.PathLike | str, chat_template: str = MODEL_TEMPLATE) -> tuple[Any, str]:
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


def _last_checkpoint(run_dir: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(run_dir)) if run_dir.is_dir() else None


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
) -> dict:
    """Fine-tune; write the adapter or model (with provenance.json), the metrics summary and the live logs.

    With `checkpoint_dir` and save_steps > 0, a checkpoint is kept every save_steps steps and an unfinished run with
    the same key resumes from its last one. `stop_after_steps` ends the run early without writing outputs, as a kill
    would (for tests).
    """
    import torch
    import transformers
    from transformers import PrinterCallback, TrainerCallback

    started = time.perf_counter()
    params.check()
    model_dir, train_path, adapter_dir = Path(model_dir), Path(train_path), Path(adapter_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(model_dir, "not a model directory (no config.json)")
    records = load_chat_records(train_path)  # validate the input before loading anything heavy
    device = resolve_device()
    compute_dtype = resolve_dtype(params.compute_dtype, device)
    optim = resolve_optim(params.optim, device)
    tokenizer, chat_format = load_tokenizer(model_dir, params.chat_template)
    data: PreparedData = prepare_examples(
        records,
        tokenizer,
        max_tokens=params.max_tokens or None,
        overlength=params.overlength,
        end_ids=end_of_turn_ids(tokenizer, model_generation_config(model_dir)),
        path=train_path,
    )
    counts = data.counts()
    log.info(
        "%d samples: %d used, %d truncated, %d dropped (max_tokens=%d)",
        data.total,
        len(data.examples),
        len(data.truncated),
        len(data.dropped),
        params.max_tokens,
    )
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if params.packing:
        dataset = pack_examples(data.examples, params.max_tokens)
        collator = PackedCollator(pad_id, params.loss_weighting)
        counts["packed_sequences"] = len(dataset)
        log.info(
            "packed %d samples into %d sequences of <= %d tokens", len(data.examples), len(dataset), params.max_tokens
        )
    else:
        dataset, collator = data.examples, PadCollator(pad_id, params.loss_weighting)
    fingerprint = _model_fingerprint(model_dir)
    train_sha = sha256_file(train_path)
    run_dir = None
    if checkpoint_dir is not None and params.save_steps > 0:
        run_dir = Path(checkpoint_dir) / params.run_key(fingerprint, train_sha)
    resume_from = _last_checkpoint(run_dir) if run_dir is not None else None
    if resume_from:
        log.info("resuming from %s", resume_from)

    CountingTrainer, StepLogger = make_trainer_classes()
    logger_cb = StepLogger(LiveLog(live_dir) if live_dir is not None else None)
    callbacks: list = [logger_cb]
    if stop_after_steps is not None:

        class StopEarly(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                control.should_training_stop = state.global_step >= stop_after_steps
                return control

        callbacks.append(StopEarly())
    adapter_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ctxsynth-finetune-") as scratch:
        # TrainingArguments first: under accelerate + DeepSpeed ZeRO-3 it registers the DeepSpeed config with
        # transformers, and only then does from_pretrained load each rank's shard instead of the whole model.
        args = training_arguments(params, str(run_dir or scratch), run_dir is not None, device, compute_dtype, optim)
        model = load_model(model_dir, params, device)
        trainable, total = count_parameters(model)
        trainer = CountingTrainer(
            model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=callbacks
        )
        trainer.answer_logits_only = params.answer_logits_only
        trainer.remove_callback(PrinterCallback)  # StepLogger logs each step once, through logging
        train_started = time.perf_counter()
        output = trainer.train(resume_from_checkpoint=resume_from)
        train_time = time.perf_counter() - train_started
        losses = [row["loss"] for row in logger_cb.history]
        trained_tokens = int(trainer.state.num_input_tokens_seen)
        summary = {
            **counts,
            "final_loss": losses[-1] if losses else None,
            "first_loss": losses[0] if losses else None,
            "mean_loss": float(output.training_loss),
            "steps": int(output.global_step),
            "resumed_from_step": int(Path(resume_from).name.split("-")[-1]) if resume_from else 0,
            "epochs": float(trainer.state.epoch or 0.0),
            "samples_seen": trainer.samples_seen,
            "trained_tokens": trained_tokens,
            "target_tokens": trainer.target_tokens,
            "tokens_per_second": trained_tokens / train_time if train_time else 0.0,
            "seconds_per_step": train_time / max(int(output.global_step), 1),
            "train_time_s": train_time,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
            "peak_cuda_mb": peak_memory_mb() if device == "cuda" else None,
            "device": device,
            "world_size": trainer.args.world_size,
            "method": params.method,
            "quantization": params.quantization,
            "compute_dtype": str(compute_dtype).removeprefix("torch."),
            "optim": optim,
            "trainable_params": int(trainable),
            "total_params": int(total),
            "params": params.as_dict(),
        }
        if stop_after_steps is not None and output.global_step < trainer.state.max_steps:
            return summary  # an interrupted run: checkpoints only, like a kill
        provenance = {
            "chat_template": chat_format,
            "base_model": str(model_dir),
            "base_model_sha256": fingerprint,
            "train_data": str(train_path),
            "train_data_sha256": train_sha,
            "params": params.as_dict(),
            "counts": counts,
            "truncated_ids": data.truncated,
            "dropped_ids": data.dropped,
            "steps": summary["steps"],
            "final_loss": summary["final_loss"],
            "device": device,
            "versions": {
                "torch": torch.__version__,
                "transformers": transformers.__version__,
                "peft": __import__("peft").__version__,
            },
        }
        _save_output(trainer, tokenizer, params, adapter_dir, provenance)
        if run_dir is not None and trainer.is_world_process_zero():
            for stale in Path(checkpoint_dir).iterdir():  # finished: its checkpoints and abandoned runs' go
                shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    summary["wall_time_s"] = time.perf_counter() - started
    if metrics_path is not None and trainer.is_world_process_zero():
        write_json(metrics_path, summary)
    return summary
