"""The numerics a long-context fine-tune and its evaluation depend on, through the pipeline's own code:

- packing (finetune/packing.py): a packed row's per-sample answer losses equal the samples run one by one, for
  every attention implementation installed; one packed row's peak memory grows about linearly with its length under
  a varlen kernel (no materialized mask);
- continuous batching (generation/batching.py): the same greedy tokens as `model.generate` one prompt at a time;
- a merged LoRA adapter (the evaluate stage's merge_adapter): the same greedy predictions as the unmerged one.
"""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

from ctxsynth.doctor.checks import Check, needs_cuda, needs_module, require
from ctxsynth.doctor.models import TOLERANCE, float_dtypes, load_tiny

# The implementations transformers offers in the pinned version that read packed position ids; each is checked
# where it can run: (name, the module it needs, whether it needs CUDA).
ATTENTION = (("sdpa", None, False), ("eager", None, False), ("flash_attention_2", "flash_attn", True))


def samples(lengths: list[int], vocab: int) -> list[Any]:
    """Examples of random token ids whose last quarter is the answer (what the loss is taken on)."""
    from ctxsynth.core.chat_encoding import IGNORE_INDEX
    from ctxsynth.finetune.data import Example

    draw = random.Random(0)  # the same samples every run
    examples = []
    for index, length in enumerate(lengths):
        ids = [draw.randrange(3, vocab) for _ in range(length)]
        answer = max(1, length // 4)
        examples.append(Example(f"s{index}", ids, [IGNORE_INDEX] * (length - answer) + ids[-answer:]))
    return examples


def packed_against_alone(workdir: Path, attention: str) -> dict[str, Any]:
    import torch

    from ctxsynth.finetune import packing
    from ctxsynth.finetune.data import PadCollator
    from ctxsynth.finetune.loss import answer_only_loss

    found = {}
    for dtype in float_dtypes():
        model = load_tiny(workdir, dtype, attention)
        examples = samples([37, 64, 23, 50], model.config.vocab_size)
        pad = model.config.eos_token_id
        on = {"device": model.device}
        with torch.no_grad():
            alone = [answer_only_loss(model, to(PadCollator(pad)([e]), **on))[0].item() for e in examples]
            row = to(packing.PackedCollator(pad, "token")([packing.Pack(examples)]), **on)
            per_sample, start = [], 0
            for example in examples:  # the packed row's loss with every other sample's answer weighed 0
                weights = torch.zeros_like(row["loss_weights"])
                weights[0, start : start + len(example)] = row["loss_weights"][0, start : start + len(example)]
                per_sample.append(answer_only_loss(model, dict(row, loss_weights=weights))[0].item())
                start += len(example)
        worst = max(abs(a - b) / max(abs(a), 1e-6) for a, b in zip(alone, per_sample))
        found[dtype] = worst
        require(worst <= TOLERANCE[dtype], f"{dtype}: packed samples see each other", alone=alone, packed=per_sample)
    return {f"max_rel_diff_{dtype}": value for dtype, value in found.items()}


def to(batch: dict, device) -> dict:
    return {key: value.to(device) if hasattr(value, "to") else value for key, value in batch.items()}


def packed_memory(workdir: Path, attention: str) -> dict[str, Any]:
    """Forward and backward of one packed row of 8K, 16K and 32K tokens (2K-token samples): the peak above the
    model's own memory must grow about 4x from 8K to 32K, not 16x (a materialized mask)."""
    import torch

    from ctxsynth.finetune import packing
    from ctxsynth.finetune.loss import answer_only_loss

    if attention == "flash_attention_2":
        needs_module("flash_attn", attention)
    needs_cuda()
    model = load_tiny(workdir, "bfloat16", attention).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peaks = {}
    for tokens in (8192, 16384, 32768):
        pack = packing.Pack(samples([2048] * (tokens // 2048), model.config.vocab_size))
        row = to(packing.PackedCollator(model.config.eos_token_id)([pack]), model.device)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        floor = torch.cuda.memory_allocated()
        answer_only_loss(model, row)[0].backward()
        peaks[tokens] = (torch.cuda.max_memory_allocated() - floor) / 2**20
        model.zero_grad(set_to_none=True)
    growth = peaks[32768] / max(peaks[8192], 1e-6)
    require(growth < 8, "peak memory grows faster than linearly with the packed length", peak_mib=peaks, growth=growth)
    return {"peak_mib": {str(k): round(v, 1) for k, v in peaks.items()}, "growth_8k_to_32k": round(growth, 2)}


def packing_checks(workdir: Path) -> list[Check]:
    checks = []
    for attention, module, cuda_only in ATTENTION:

        def equal(attention=attention, module=module, cuda_only=cuda_only) -> dict[str, Any]:
            if module:
                needs_module(module, attention)
            if cuda_only:
                needs_cuda()
            return packed_against_alone(workdir, attention)

        checks.append(Check(f"packing.{attention}", "packed per-sample losses = one by one", equal))
    checks.append(
        Check(
            "packing.memory.flash_attention_2",
            "one packed row's peak memory grows about linearly (8K -> 32K)",
            partial(packed_memory, workdir, "flash_attention_2"),
        )
    )
    return checks


def prompts(vocab: int) -> list[list[int]]:
    draw = random.Random(1)
    return [[draw.randrange(3, vocab) for _ in range(length)] for length in (5, 17, 9, 30, 12, 3)]


def continuous_batching(workdir: Path) -> dict[str, Any]:
    """Three slots refilled as rows finish, against `generate` on each prompt alone (float32, greedy)."""
    import torch

    from ctxsynth.generation.batching import ContinuousBatcher, Sampling

    model = load_tiny(workdir, "float32")
    eos = model.config.eos_token_id
    items = prompts(model.config.vocab_size)
    batcher = ContinuousBatcher(model, 3, {eos}, eos, model.device)
    steps = batcher.run(items, [0] * len(items), Sampling(max_new_tokens=20))
    batched = {index: tokens for step in steps for index, tokens, _ in step}
    differing = []
    for index, prompt in enumerate(items):
        ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=20, do_sample=False, pad_token_id=eos, eos_token_id=eos)
        out = out[0, len(prompt) :].tolist()
        alone = out[: out.index(eos)] if eos in out else out
        if batched[index] != alone:
            differing.append({"prompt": index, "batched": batched[index], "alone": alone})
    require(not differing, "continuous batching changed greedy tokens", differing=differing[:2])
    return {"prompts": len(items), "tokens": sum(len(tokens) for tokens in batched.values())}


def merged_against_unmerged(workdir: Path) -> dict[str, Any]:
    """A LoRA adapter with non-zero B (a trained one's), folded in as evaluate's merge_adapter does, against the
    adapter applied at run time: the same greedy tokens in float32, logits within each dtype's rounding."""
    import torch
    from peft import LoraConfig, get_peft_model

    found: dict[str, Any] = {}
    for dtype in float_dtypes():
        torch.manual_seed(0)
        lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
        unmerged = get_peft_model(load_tiny(workdir, dtype), lora).eval()
        merged = get_peft_model(load_tiny(workdir, dtype), lora).eval()
        merged.load_state_dict(unmerged.state_dict())
        merged = merged.merge_and_unload()
        ids = torch.tensor([prompts(merged.config.vocab_size)[3]], device=merged.device)
        with torch.inference_mode():
            diff = float((unmerged(input_ids=ids).logits - merged(input_ids=ids).logits).abs().max())
            kwargs = {"max_new_tokens": 20, "do_sample": False, "pad_token_id": merged.config.eos_token_id}
            tokens = [model.generate(input_ids=ids, **kwargs).tolist() for model in (unmerged, merged)]
        same = tokens[0] == tokens[1]
        found[f"max_logit_diff_{dtype}"] = diff
        require(diff <= 10 * TOLERANCE[dtype], f"{dtype}: merged logits differ", max_abs_diff=diff)
        require(same or dtype != "float32", "float32: merged greedy tokens differ", max_abs_diff=diff)
    return found


def generation_checks(workdir: Path) -> list[Check]:
    return [
        Check(
            "generation.continuous_batching",
            "greedy tokens = generate one at a time",
            partial(continuous_batching, workdir),
        ),
        Check(
            "generation.merged_adapter",
            "merged adapter = unmerged (tokens, logits)",
            partial(merged_against_unmerged, workdir),
        ),
    ]
