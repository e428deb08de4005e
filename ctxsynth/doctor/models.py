"""The small model the checks run on, and where they run: a LLaMA built from a config with random weights (nothing is
downloaded) and the rehearsal's byte-level tokenizer."""

from __future__ import annotations

from functools import cache
from pathlib import Path


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def float_dtypes() -> list[str]:
    """The dtypes a numeric check runs in here: float32 everywhere, bfloat16 where it is native (CUDA)."""
    return ["float32", "bfloat16"] if device() == "cuda" else ["float32"]


# Largest |difference| each dtype's rounding allows between two orders of the same sums (per-sample losses, logits).
TOLERANCE = {"float32": 1e-4, "bfloat16": 3e-2}


# A LLaMA of the smallest shape every path takes: bitsandbytes' CPU nf4 kernels need a row of at least one 64-value
# quantization block (hidden 32, the rehearsal's tiny model, fails there); GQA as in LLaMA-3; room for 32K-token rows.
SHAPE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4}
SHAPE |= {"num_key_value_heads": 2, "max_position_embeddings": 32768, "tie_word_embeddings": True}


@cache
def tiny_model_dir(workdir: Path) -> Path:
    """A small base LLaMA under `workdir` (once per run): the rehearsal's byte-level tokenizer with LLaMA-2's
    special tokens, no chat template, float32 weights from a fixed seed."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from ctxsynth.rehearsal.tiny_model import BOS, EOS, build_tokenizer

    directory = workdir / "small-llama"
    tokenizer = build_tokenizer()
    bos_id, eos_id = tokenizer.convert_tokens_to_ids([BOS, EOS])
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=bos_id, eos_token_id=eos_id, **SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def load_tiny(workdir: Path, dtype: str, attn_implementation: str = "sdpa"):
    """The tiny model on this machine's device in `dtype`, with larger random weights: its own init gives near-uniform
    logits, under which a leaking mask or a wrong cache position would change almost nothing a check could see."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        tiny_model_dir(workdir), dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.to(device()).eval()


def tiny_tokenizer(workdir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir(workdir))
