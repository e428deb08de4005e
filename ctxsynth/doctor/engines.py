"""The optional engines, when installed: vLLM (the synthesize stage's server and lm-eval's vllm backend) must give
transformers' greedy tokens on the same model, with a LoRA adapter served; DeepSpeed ZeRO-3 must initialise and step
through accelerate on one GPU. Neither is required: a bare CUDA machine skips both by name."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

from ctxsynth.doctor.checks import Check, needs_cuda, needs_module, require
from ctxsynth.doctor.models import load_tiny, tiny_model_dir
from ctxsynth.doctor.numerics import prompts


def saved_adapter(workdir: Path) -> tuple[Any, Path]:
    """The small model (float32) with a LoRA adapter of non-zero B, and the adapter saved as the finetune stage
    writes one."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", init_lora_weights=False)
    model = get_peft_model(load_tiny(workdir, "float32"), lora).eval()
    model.save_pretrained(workdir / "vllm-adapter")
    return model, workdir / "vllm-adapter"


def vllm_against_transformers(workdir: Path) -> dict[str, Any]:
    import torch

    needs_cuda()
    needs_module("vllm", "make vllm-env")
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    model, adapter = saved_adapter(workdir)
    items = prompts(model.config.vocab_size)
    engine = LLM(
        model=str(tiny_model_dir(workdir)),
        dtype="float32",
        enable_lora=True,
        max_lora_rank=8,
        seed=0,
        gpu_memory_utilization=0.3,
        enforce_eager=True,
    )
    greedy = SamplingParams(max_tokens=16, temperature=0.0)
    served_adapter = LoRARequest("doctor", 1, str(adapter))
    outputs = engine.generate([{"prompt_token_ids": p} for p in items], greedy, lora_request=served_adapter)
    served = [list(output.outputs[0].token_ids) for output in outputs]
    eos, local = model.config.eos_token_id, []
    for prompt in items:
        ids = torch.tensor([prompt], device=model.device)
        with torch.inference_mode():
            out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=eos)
        local.append(out[0, len(prompt) :].tolist())
    # vLLM stops at the end-of-sequence token, generate pads after it: compare what vLLM returned.
    same = sum(a == b[: len(a)] for a, b in zip(served, local))
    require(same == len(items), "vLLM's greedy tokens differ from transformers'", same=same, of=len(items))
    return {"prompts": len(items), "identical": same}


def deepspeed_zero3_step(workdir: Path) -> dict[str, Any]:
    """One optimizer step of the small model under ZeRO-3 through accelerate, as the paper recipe's launcher runs
    the finetune stage (configs/accelerate/deepspeed_zero3.yaml), on one process."""
    import torch

    needs_cuda()
    needs_module("deepspeed", "make gpu-env")
    from accelerate import Accelerator
    from accelerate.utils import DeepSpeedPlugin
    from transformers import AutoModelForCausalLM

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    os.environ.setdefault("MASTER_PORT", "29517")
    plugin = DeepSpeedPlugin(zero_stage=3, gradient_accumulation_steps=1)
    accelerator = Accelerator(deepspeed_plugin=plugin, mixed_precision="bf16")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir(workdir), dtype=torch.float32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    ids = torch.tensor([prompts(32)[3]], device=accelerator.device)
    losses = []
    for _ in range(2):
        loss = model(input_ids=ids, labels=ids).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(loss))
    finite = all(value == value for value in losses)  # NaN != NaN
    require(finite and losses[1] < losses[0], "a ZeRO-3 step did not lower the loss", losses=losses)
    return {"losses": losses}


def engine_checks(workdir: Path) -> list[Check]:
    return [
        Check("engine.vllm", "vLLM greedy = transformers, LoRA served", partial(vllm_against_transformers, workdir)),
        Check("engine.deepspeed_zero3", "ZeRO-3 steps via accelerate", partial(deepspeed_zero3_step, workdir)),
    ]
