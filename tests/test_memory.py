"""The memory estimate's activation terms (ctxsynth/preflight/memory.py) against measurements on this CPU at the real
students' shapes: what one LLaMA decoder layer saves for its backward, and the peak of the loss path's logits."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from ctxsynth.preflight.memory import LOGIT_BYTES, recompute_bytes_per_token

# hidden, intermediate, attention heads, key-value heads
SHAPES = {"Llama-3.1-8B": (4096, 14336, 32, 8), "LongAlign-7B-64k-base": (4096, 11008, 32, 32)}


def saved_bytes_per_token(hidden: int, intermediate: int, heads: int, kv_heads: int, tokens: int = 64) -> float:
    """Bytes one bf16 decoder layer (sdpa) keeps for its backward, per token, counted by saved-tensor hooks
    (each storage once; the layer's weights and its input, which the checkpoint holds, excluded)."""
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        num_hidden_layers=1,
        vocab_size=32,
    )
    config._attn_implementation = "sdpa"
    layer = LlamaDecoderLayer(config, 0).to(torch.bfloat16)
    hidden_states = torch.randn(1, tokens, hidden, dtype=torch.bfloat16, requires_grad=True)
    positions = torch.arange(tokens)[None]
    rotary = LlamaRotaryEmbedding(config)(hidden_states, positions)
    storages: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        layer(hidden_states, attention_mask=None, position_ids=positions, position_embeddings=rotary)
    weights = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    weights.add(hidden_states.untyped_storage().data_ptr())
    return sum(size for pointer, size in storages.items() if pointer not in weights) / tokens


@pytest.mark.parametrize("model", SHAPES)
def test_the_recomputed_layer_term_covers_what_a_real_layer_saves(model):
    hidden, intermediate, heads, kv_heads = SHAPES[model]
    measured = saved_bytes_per_token(hidden, intermediate, heads, kv_heads)
    kv = kv_heads * hidden // heads
    estimate = recompute_bytes_per_token(hidden, kv, intermediate)
    assert abs(estimate - measured) / measured < 0.01, (model, measured, estimate)


LOSS_PEAK = textwrap.dedent(
    """
    import sys, torch
    from ctxsynth.finetune.trainer import answer_only_loss

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

    positions, vocab, hidden = int(sys.argv[1]), int(sys.argv[2]), 16

    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm_head = torch.nn.Linear(hidden, vocab, bias=False, dtype=torch.bfloat16)
            self.states = torch.nn.Parameter(torch.randn(1, positions, hidden, dtype=torch.bfloat16))

        def forward(self, input_ids=None, attention_mask=None, logits_to_keep=None, **kwargs):
            states = self.states if logits_to_keep is None else self.states[logits_to_keep]
            return type("Out", (), {"logits": self.lm_head(states)})()

    model = Head()
    labels = torch.randint(0, vocab, (1, positions))
    inputs = {"input_ids": labels.clone(), "attention_mask": torch.ones_like(labels), "labels": labels,
              "loss_weights": torch.ones(1, positions)}
    with open("/proc/self/clear_refs", "w") as clear:  # reset the peak: importing may have peaked higher
        clear.write("5")
    before = status("VmRSS")
    logits_only = sys.argv[3] == "answer-logits-only"
    loss, _ = answer_only_loss(model, inputs, None, logits_only=logits_only)  # as Trainer calls it: outputs dropped
    loss.backward()
    after = status("VmHWM")
    print((after - before) / (positions * vocab))
    """
)


@pytest.mark.parametrize("path", ["answer-logits-only", "all-logits"])
def test_the_logits_term_covers_the_loss_paths_peak(path):
    """answer_only_loss at LLaMA-3.1's vocabulary: the process's peak resident memory grows by at most LOGIT_BYTES
    per position x vocabulary element (and by well over half of it: the term is not padded)."""
    result = subprocess.run(
        [sys.executable, "-c", LOSS_PEAK, "1024", "128256", path], capture_output=True, text=True, check=True
    )
    measured = float(result.stdout.strip().splitlines()[-1])
    assert LOGIT_BYTES * 0.6 < measured <= LOGIT_BYTES * 1.05, measured


# Unsloth's README ("Llama 3.1 (8B) max. context length", github.com/unslothai/unsloth): the longest padded row that
# Hugging Face + FA2 fits in QLoRA of LLaMA-3.1-8B, every linear layer at rank 32, batch size 1, per GPU memory.
PUBLISHED_HF_QLORA_8B = {24: 5_789, 40: 12_264, 48: 15_502, 80: 28_454}


@pytest.mark.parametrize("gib", sorted(PUBLISHED_HF_QLORA_8B))
def test_the_qlora_estimate_matches_a_published_figure(gib):
    """The longest row the formula fits is within 15 % of the published one, and never shorter (the residual is the
    extra fp32 copy of the logits transformers' own loss keeps, which loss.py does not: memory.py's docstring)."""
    from dataclasses import replace

    from ctxsynth.finetune.settings import FinetuneSettings
    from ctxsynth.preflight.memory import memory_estimate
    from ctxsynth.preflight.rows import model_facts, shape_facts

    facts = shape_facts(model_facts()["meta-llama/Llama-3.1-8B"])
    qlora = FinetuneSettings(recipe="qlora", lora_r=32, answer_logits_only=False, gradient_checkpointing=True)
    assert qlora.quantization == "nf4" and qlora.method == "lora"
    tokens = 256
    while memory_estimate(facts, replace(qlora, max_tokens=tokens + 256), 1, False).gib <= gib:
        tokens += 256
    published = PUBLISHED_HF_QLORA_8B[gib]
    assert published * 0.98 <= tokens <= published * 1.15, (tokens, published)
