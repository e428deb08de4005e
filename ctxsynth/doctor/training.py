"""Fine-tuning through the finetune stage's own `train` (its model loading, trainer, loss and saving): on one
repeated sample the loss must be finite and fall, and the saved adapter (or whole model) must reload to the logits
the trained model gives in memory."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from ctxsynth.doctor.checks import Check, needs_module, require
from ctxsynth.doctor.models import TOLERANCE, device, tiny_model_dir
from ctxsynth.finetune.settings import FinetuneSettings

QUESTION, ANSWER = "Where is the harbour?", "In Tartu, by the old bridge."
SAMPLE = {"messages": [{"role": "user", "content": QUESTION}, {"role": "assistant", "content": ANSWER}]}
STEPS = 16


def settings_for(method: str) -> FinetuneSettings:
    """A few steps at a high learning rate on batch size 1, nothing checkpointed; bf16 compute on CUDA."""
    cuda = device() == "cuda"
    overrides: dict[str, Any] = {"chat_template": "longalign", "max_steps": STEPS, "lr_scheduler": "constant"}
    overrides |= {"warmup_ratio": 0.0, "batch_size": 1, "grad_accum": 1, "logging_steps": 1, "save_steps": 0}
    overrides |= {"max_tokens": 256, "seed": 7, "packing": False}
    if method == "qlora":  # nf4 + double quantization, paged optimizer on CUDA (adamw_torch on CPU)
        return FinetuneSettings(recipe="qlora", learning_rate=1e-2, lora_dropout=0.0, lora_r=8, **overrides)
    dtype = "bfloat16" if cuda else "float32"
    if method == "full":
        return FinetuneSettings(method="full", compute_dtype=dtype, learning_rate=3e-3, **overrides)
    return FinetuneSettings(compute_dtype=dtype, learning_rate=1e-2, lora_dropout=0.0, lora_r=8, **overrides)


def logits_of(model, input_ids) -> Any:
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=input_ids.to(model.device), use_cache=False).logits.float().cpu()


def reload(output_dir: Path, model_dir: Path, params: FinetuneSettings):
    """The saved output as evaluation loads it: base model (quantized as in training) plus adapter, or whole."""
    from peft import PeftModel

    from ctxsynth.finetune.train import load_model

    if params.method == "full":
        return load_model(output_dir, params, device())
    base = load_model(model_dir, dataclasses.replace(params, method="full"), device())
    return PeftModel.from_pretrained(base, output_dir)


def losses(live_dir: Path) -> list[float]:
    rows = (live_dir / "plots" / "metrics" / "loss.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [float(row.split("\t")[1]) for row in rows]


def train_and_reload(workdir: Path, method: str) -> dict[str, Any]:
    from ctxsynth.core.io import write_jsonl
    from ctxsynth.finetune.train import load_tokenizer, train

    if method == "qlora":
        needs_module("bitsandbytes", "nf4 QLoRA")
    run = workdir / f"train-{method}"
    model_dir, params = tiny_model_dir(workdir), settings_for(method)
    write_jsonl(run / "train.jsonl", [{"id": f"s{i}", **SAMPLE} for i in range(STEPS)])
    tokenizer, _ = load_tokenizer(model_dir, params.chat_template)
    probe = tokenizer.apply_chat_template(SAMPLE["messages"], return_tensors="pt", return_dict=True)["input_ids"]
    trained: dict[str, Any] = {}
    keep_logits = lambda trainer: trained.update(logits=logits_of(trainer.model, probe))  # noqa: E731
    train(model_dir, run / "train.jsonl", run / "output", None, params, live_dir=run / "live", on_trained=keep_logits)
    curve = losses(run / "live")
    require(len(curve) == STEPS and all(math.isfinite(x) for x in curve), "loss not finite at every step", loss=curve)
    first, last = curve[0], sum(curve[-2:]) / 2
    require(last < 0.95 * first, "loss did not fall on one repeated sample", first=first, last_two_mean=last)
    again = logits_of(reload(run / "output", model_dir, params), probe)
    difference = float((again - trained["logits"]).abs().max())
    tolerance = 1e-3 if method == "qlora" else TOLERANCE["float32"]  # fp32 master weights; nf4 dequantized
    require(difference <= tolerance, "the saved output reloads to other logits", max_abs_diff=difference)
    return {"first_loss": round(first, 4), "last_loss": round(last, 4), "reload_max_abs_diff": difference}


def training_checks(workdir: Path) -> list[Check]:
    what = "loss finite and falling on one repeated sample; the saved {} reloads to the same logits"
    return [
        Check("train.lora", what.format("adapter"), lambda: train_and_reload(workdir, "lora")),
        Check("train.full", what.format("model"), lambda: train_and_reload(workdir, "full")),
        Check("train.qlora", "nf4 QLoRA: " + what.format("adapter"), lambda: train_and_reload(workdir, "qlora")),
    ]
