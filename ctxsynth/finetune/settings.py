"""Settings of the finetune stage: params.yaml section `finetune`, resolved through a recipe (recipes.yaml).

The recipe file is the one place for the values of the recipe-driven keys: their fields below carry no default of
their own but `FROM_RECIPE`, filled from the recipe `recipe` names (every recipe extends `cpu`). A key params.yaml
sets to a value overrides the recipe; `null` means "the recipe's value" (for `launcher` and `accelerate_config`,
which no recipe sets: the default here). Loaded with `load_settings(FinetuneSettings, "finetune")` or
`FinetuneSettings.from_mapping(section)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args, get_type_hints

from ctxsynth.core.chat import MODEL_TEMPLATE
from ctxsynth.core.io import InputError
from ctxsynth.core.settings import Invalid, check, convert, load_settings
from ctxsynth.finetune import recipes as finetune_recipes
from ctxsynth.finetune.data import LossWeighting, Overlength

Method = Literal["lora", "full"]
Quantization = Literal["none", "nf4"]
ComputeDtype = Literal["auto", "float32", "bfloat16", "float16"]
Launcher = Literal["none", "accelerate"]
METHODS: tuple[str, ...] = get_args(Method)
QUANTIZATION_MODES: tuple[str, ...] = get_args(Quantization)
DTYPES: tuple[str, ...] = get_args(ComputeDtype)
LAUNCHERS: tuple[str, ...] = get_args(Launcher)
# Keys that change how a run is logged or saved, not what it computes: a change keeps the checkpoints resumable.
NOT_IN_RUN_KEY = ("logging_steps", "save_steps")


class _FromRecipe:
    """The default of a recipe-driven field: replaced by the recipe's value when the settings are built."""

    def __repr__(self) -> str:
        return "FROM_RECIPE"


FROM_RECIPE: Any = _FromRecipe()


@dataclass(frozen=True)
class FinetuneSettings:
    """Resolved fine-tuning settings. Building one without a value for a recipe-driven key takes the recipe's."""

    recipe: str = finetune_recipes.DEFAULT_RECIPE  # cpu (LoRA fp32) | qlora (nf4, CUDA) | paper (full FT, packing)
    method: Method = FROM_RECIPE  # lora | full (every weight trained; the output is a whole model)
    quantization: Quantization = FROM_RECIPE  # none | nf4 (QLoRA: bitsandbytes, double quantization)
    compute_dtype: ComputeDtype = FROM_RECIPE  # auto = float32 on CPU, bfloat16 on CUDA
    lora_r: int = FROM_RECIPE  # LoRA rank
    lora_alpha: int = FROM_RECIPE  # LoRA scaling numerator (scale = alpha / r)
    lora_dropout: float = FROM_RECIPE  # dropout on the LoRA input
    target_modules: str | tuple[str, ...] = FROM_RECIPE  # all-linear or a list of module names
    optim: str = FROM_RECIPE  # any TrainingArguments.optim; paged_* fall back to adamw_torch on CPU
    learning_rate: float = FROM_RECIPE  # peak learning rate
    lr_scheduler: str = FROM_RECIPE  # TrainingArguments.lr_scheduler_type
    warmup_ratio: float = FROM_RECIPE  # share of the steps warming up at the start, in [0, 1)
    weight_decay: float = FROM_RECIPE  # AdamW weight decay
    adam_beta1: float = FROM_RECIPE  # AdamW beta1
    adam_beta2: float = FROM_RECIPE  # AdamW beta2 (the paper: 0.95)
    max_grad_norm: float = FROM_RECIPE  # gradient clipping
    epochs: float = FROM_RECIPE  # passes over the data when max_steps is -1
    max_steps: int = FROM_RECIPE  # > 0 overrides epochs; -1 = train `epochs` full passes
    batch_size: int = FROM_RECIPE  # sequences per device per step
    grad_accum: int = FROM_RECIPE  # gradient accumulation steps
    max_tokens: int = FROM_RECIPE  # per sequence; 0 = no limit (not with packing)
    overlength: Overlength = FROM_RECIPE  # truncate_middle (keep question and answer) | drop
    packing: bool = FROM_RECIPE  # concatenate samples up to max_tokens, attention kept inside each sample
    loss_weighting: LossWeighting = FROM_RECIPE  # token | sample (LongAlign)
    gradient_checkpointing: bool = FROM_RECIPE  # recompute activations in the backward pass: less memory
    answer_logits_only: bool = FROM_RECIPE  # project only the answer positions onto the vocabulary (same loss)
    attn_implementation: str = FROM_RECIPE  # sdpa; flash_attention_2 on GPU for packing without a materialized mask
    save_steps: int = FROM_RECIPE  # checkpoint every N steps for resume; 0 = never
    launcher: Launcher = "none"  # none | accelerate (relaunch with configs/accelerate/<accelerate_config>)
    accelerate_config: str = "single_gpu"  # single_gpu | multi_gpu_ddp | fsdp | deepspeed_zero3, or a .yaml path
    # model: the tokenizer's own chat template; or a format of core/chat_templates.yaml (longalign) for a base
    # model that has none. Evaluate the result with the same evaluate.chat_template.
    chat_template: str = MODEL_TEMPLATE
    seed: int = FROM_RECIPE  # model initialization (LoRA matrices), data order, dropout
    logging_steps: int = FROM_RECIPE  # log loss, learning rate and throughput every N steps

    def __post_init__(self) -> None:
        recipes = finetune_recipes.load_recipes()
        if self.recipe not in recipes:
            raise Invalid("recipe", f"unknown recipe {self.recipe!r} (known: {', '.join(recipes)})")
        fields = {field.name: field for field in dataclasses.fields(self)}
        unset = [name for name in fields if getattr(self, name) is FROM_RECIPE]
        hints = get_type_hints(type(self), include_extras=True)
        if unset:
            recipe_file = f"ctxsynth/{finetune_recipes.RECIPES_RESOURCE}"
            values = finetune_recipes.recipe_values(self.recipe)
            unknown = sorted(set(values) - set(fields))
            if unknown:
                raise InputError(recipe_file, "unknown finetune parameter", field=f"{self.recipe}.{unknown[0]}")
            for name in unset:
                if name not in values:
                    raise InputError(recipe_file, "missing from the recipe", field=f"{self.recipe}.{name}")
                value = convert(hints[name], values[name], f"{self.recipe}.{name}", recipe_file)
                object.__setattr__(self, name, value)
        # One spelling per value, whatever the source: lists as tuples, numbers of float keys as floats.
        if isinstance(self.target_modules, list):
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
        for name, hint in hints.items():
            value = getattr(self, name)
            if hint is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, name, float(value))

    @classmethod
    def normalize_params(cls, data: dict) -> dict:
        """`null` in params.yaml means "the recipe's value" (or the default here): such keys are left unset."""
        return {key: value for key, value in data.items() if value is not None}

    @classmethod
    def from_mapping(
        cls, params: Mapping[str, Any] | None, source: os.PathLike | str = "params.yaml"
    ) -> FinetuneSettings:
        """The `finetune` section: recipe values overridden by every non-null key of `params`, type-checked."""
        return load_settings(cls, "finetune", params or {}, source)

    def validate(self) -> None:
        if self.method == "full" and self.quantization != "none":
            raise Invalid("quantization", "full fine-tuning cannot train 4-bit weights: use method: lora with nf4")
        if not 0 <= self.warmup_ratio < 1:
            raise Invalid("warmup_ratio", f"expected a ratio in [0, 1), got {self.warmup_ratio}")
        for name in ("lora_r", "batch_size", "grad_accum", "logging_steps"):
            if getattr(self, name) < 1:
                raise Invalid(name, f"expected >= 1, got {getattr(self, name)}")
        if self.save_steps < 0:
            raise Invalid("save_steps", f"expected >= 0 (0 = no checkpoints), got {self.save_steps}")
        if self.max_tokens < 0:
            raise Invalid("max_tokens", f"expected >= 0 (0 = no limit), got {self.max_tokens}")
        if self.packing and self.max_tokens == 0:
            raise Invalid("max_tokens", "packing needs a token budget per sequence (max_tokens > 0)")
        if self.packing and self.attn_implementation == "flash_attention_2" and self.batch_size > 1:
            # flash attention reads a packed row's sample boundaries from its position ids only when the batch is
            # one row; with more it unpads by the attention mask, and the samples of a row attend to each other
            raise Invalid(
                "batch_size",
                f"packing with flash_attention_2 needs batch_size 1 (got {self.batch_size}): samples of a packed row "
                "would attend to each other; raise grad_accum instead",
            )
        if self.max_steps <= 0 and self.epochs <= 0:
            raise Invalid("epochs", "expected > 0 when max_steps is off (-1)")
        if not self.target_modules:
            raise Invalid("target_modules", "expected 'all-linear' or a list of module names")

    def check(self, source: os.PathLike | str = "params.yaml") -> None:
        """Type-check and validate settings built in code, with the errors the loader gives."""
        check(self, "finetune", source)

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


def accelerate_config_file(name: str, configs_dir: Path, source: os.PathLike | str = "params.yaml") -> Path:
    """`finetune.accelerate_config`: <configs_dir>/<name>.yaml, or a path to a config file."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else Path(configs_dir) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in Path(configs_dir).glob("*.yaml")))
        raise InputError(source, f"no accelerate config {path} (shipped: {known})", field="finetune.accelerate_config")
    return path


def read_accelerate_config(
    name: str, configs_dir: Path, source: os.PathLike | str = "params.yaml"
) -> tuple[Path, dict[str, Any]]:
    """The accelerate config `finetune.accelerate_config` names: its path and its values ({} for an empty file)."""
    import yaml

    path = accelerate_config_file(name, configs_dir, source)
    return path, yaml.safe_load(path.read_text(encoding="utf-8")) or {}
