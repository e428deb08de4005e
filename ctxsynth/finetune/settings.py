"""The `finetune` section of params.yaml, resolved through a recipe (ctxsynth/finetune_recipes.py) and validated."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ctxsynth.core.io import InputError
from ctxsynth.finetune import recipes as finetune_recipes
from ctxsynth.finetune.data import LOSS_WEIGHTINGS, OVERLENGTH_MODES

METHODS = ("lora", "full")
QUANTIZATION_MODES = ("none", "nf4")
DTYPES = ("auto", "float32", "bfloat16", "float16")
LAUNCHERS = ("none", "accelerate")
# Keys that change how a run is logged or saved, not what it computes: a change keeps the checkpoints resumable.
NOT_IN_RUN_KEY = ("logging_steps", "save_steps")


@dataclass(frozen=True)
class FinetuneParams:
    """Resolved fine-tuning settings; the defaults are the `cpu` recipe (tests check they agree)."""

    recipe: str = "cpu"
    method: str = "lora"  # lora | full (every weight trained; the output is a whole model)
    quantization: str = "none"  # none | nf4 (QLoRA through bitsandbytes, double quantization)
    compute_dtype: str = "auto"  # auto = float32 on CPU, bfloat16 on CUDA
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    target_modules: str | tuple[str, ...] = "all-linear"
    optim: str = "adamw_torch"  # any TrainingArguments.optim; paged_* fall back to adamw_torch on CPU
    learning_rate: float = 2e-4
    lr_scheduler: str = "cosine"
    warmup_ratio: float = 0.0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs; -1 = train `epochs` full passes
    batch_size: int = 1
    grad_accum: int = 4
    max_tokens: int = 1024  # 0 = no limit (not with packing)
    overlength: str = "truncate_middle"  # truncate_middle | drop
    packing: bool = False  # concatenate samples up to max_tokens, attention kept inside each sample
    loss_weighting: str = "token"  # token | sample (LongAlign)
    gradient_checkpointing: bool = False
    answer_logits_only: bool = True  # project only the answer positions onto the vocabulary (same loss)
    attn_implementation: str = "sdpa"
    save_steps: int = 4  # checkpoint every N steps for resume; 0 = never
    launcher: str = "none"  # none | accelerate (configs/accelerate/<accelerate_config>.yaml)
    accelerate_config: str = "single_gpu"
    seed: int = 42
    logging_steps: int = 1

    @classmethod
    def from_mapping(cls, params: Mapping[str, Any], source: os.PathLike | str = "params.yaml") -> FinetuneParams:
        """Recipe values, overridden by every non-null key of `params`, type-checked."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - set(fields))
        if unknown:
            raise InputError(
                source, f"unknown finetune parameter (known: {', '.join(fields)})", field=f"finetune.{unknown[0]}"
            )
        values = finetune_recipes.resolve(params, source)
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise InputError(
                f"ctxsynth/{finetune_recipes.RECIPES_RESOURCE}",
                "unknown finetune parameter",
                field=f"{values['recipe']}.{unknown[0]}",
            )
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

        for name, allowed in (
            ("method", METHODS),
            ("quantization", QUANTIZATION_MODES),
            ("compute_dtype", DTYPES),
            ("overlength", OVERLENGTH_MODES),
            ("loss_weighting", LOSS_WEIGHTINGS),
            ("launcher", LAUNCHERS),
        ):
            if getattr(self, name) not in allowed:
                raise bad(name, f"expected one of {allowed}, got {getattr(self, name)!r}")
        if self.method == "full" and self.quantization != "none":
            raise bad("quantization", "full fine-tuning cannot train 4-bit weights: use method: lora with nf4")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", f"expected a ratio in [0, 1), got {self.warmup_ratio}")
        for name in ("lora_r", "batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) < 1:
                raise bad(name, f"expected >= 1, got {getattr(self, name)}")
        if self.save_steps < 0:
            raise bad("save_steps", f"expected >= 0 (0 = no checkpoints), got {self.save_steps}")
        if self.max_tokens < 0:
            raise bad("max_tokens", f"expected >= 0 (0 = no limit), got {self.max_tokens}")
        if self.packing and self.max_tokens == 0:
            raise bad("max_tokens", "packing needs a token budget per sequence (max_tokens > 0)")
        if self.max_steps <= 0 and self.epochs <= 0:
            raise bad("epochs", "expected > 0 when max_steps is off (-1)")
        if not isinstance(self.target_modules, (str, tuple)) or not self.target_modules:
            raise bad("target_modules", "expected 'all-linear' or a list of module names")

    def as_dict(self) -> dict:
        values = dataclasses.asdict(self)
        if isinstance(values["target_modules"], tuple):
            values["target_modules"] = list(values["target_modules"])
        return values

    def run_key(self, *fingerprints: Any) -> str:
        """A short hash of everything that decides the training trajectory: names the checkpoint directory."""
        values = {key: value for key, value in self.as_dict().items() if key not in NOT_IN_RUN_KEY}
        blob = json.dumps([values, *fingerprints], sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
