"""Memory per device and disk per checkpoint of a fine-tuning row, term by term, from the model's shapes, the row's
settings and measured coefficients (bf16 training, gradient checkpointing per decoder layer).

    weights and states   full fine-tuning: 16 B x P (bf16 weights 2, bf16 grads 2, fp32 master weights and Adam
                         m, v 12), divided by the devices under ZeRO-3 / FSDP; with the optimizer offloaded to the
                         CPU (LongAlign's DeepSpeed config) only the 4 B of weights and grads stay on the device.
                         LoRA: 2 B per frozen weight (QLoRA: 0.52 B per nf4 linear weight, 4 B per fp32 embedding)
                         + 16 B per LoRA parameter.
    ZeRO-3 buffers       the largest gathered module, lm_head, and its bf16 gradient (4 B x vocab x hidden), two
                         gathered decoder layers (the current and the prefetched one, 2 B each) and the fp32 reduce
                         bucket (hidden^2 x 4 B, DeepSpeed's "auto").
    checkpoints          layers x tokens x hidden x 2 B: each decoder layer's input, kept for the recompute.
    recomputed layer     tokens x 2 B x (10 hidden + 2 kv + 4 intermediate): what one decoder layer saves for its
                         backward, counted with saved-tensor hooks on this CPU at LLaMA-3.1-8B and LLaMA-2-7B shapes
                         (tests/test_memory.py: 201,352 and 187,016 B/token, the formula within 0.5 %).
    logits               positions x vocab x 14 B: the peak of the loss path (loss.py answer_only_loss) measured on
                         this CPU at LLaMA-3.1's vocabulary (tests/test_memory.py: 14.1): bf16 logits 2, their fp32
                         cast 4, the answer positions' fp32 copy 4, log-softmax's fp32 output 4, the backward's
                         fp32 gradients reusing the freed ones. Every assistant turn is trained, so a packed
                         row of general chat data is mostly answer: ANSWER_FRACTION of its tokens (metrics/mix.json
                         records the fraction each mix really has, in its `answer_fraction`).
    overhead             3 GiB: CUDA context, NCCL buffers, allocator fragmentation.

Checked against a published QLoRA figure (tests/test_memory.py): Unsloth's README ("Llama 3.1 (8B) max. context
length", github.com/unslothai/unsloth, 2024-12) gives the longest padded row that Hugging Face + FA2 fits in QLoRA of
LLaMA-3.1-8B on all linear layers at rank 32, batch size 1: 5,789 / 12,264 / 15,502 / 28,454 tokens on 24 / 40 / 48
/ 80 GB. The formula (every position's logits, as there) fits 2 % / 9 % / 11 % / 14 % more: transformers' own loss
keeps one more copy of the logits than loss.py's, 4 B a position, which is the gap's growth with length.

Disk per checkpoint: full fine-tuning saves the optimizer's fp32 master weights and both moments (12 B x P, over all
shards) and bf16 weights (2 B x P); LoRA saves the adapter and its optimizer state (16 B per LoRA parameter).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 2**30
GB = 1e9
NF4_BYTES = 0.52  # per quantized weight: 4 bits + double-quantized block constants
LOGIT_BYTES = 14  # per position x vocabulary element: the loss path's measured peak
# Answer positions per packed row of general chat data: 16-25K of 32K in UltraChat packs (every assistant turn is
# trained). The upper end, since running out of memory costs more than a false alarm.
ANSWER_FRACTION = 0.76
OVERHEAD_GIB = 3.0


def recompute_bytes_per_token(hidden: int, kv: int, intermediate: int) -> int:
    """What a LLaMA decoder layer in bf16 (sdpa, RMSNorm in fp32) saves for its backward, per token."""
    return 2 * (10 * hidden + 2 * kv + 4 * intermediate)


@dataclass(frozen=True)
class MemoryEstimate:
    terms: dict[str, float]  # bytes per device, by term

    @property
    def gib(self) -> float:
        return sum(self.terms.values()) / GIB + OVERHEAD_GIB

    def explain(self) -> str:
        parts = [f"{name} {value / GIB:.1f}" for name, value in self.terms.items() if value]
        return " + ".join([*parts, f"overhead {OVERHEAD_GIB:g}"]) + f" = {self.gib:.1f} GiB"


def memory_estimate(
    facts: dict,
    finetune,
    devices: int,
    sharded: bool,
    offload_optimizer: bool = False,
    answer_fraction: float = ANSWER_FRACTION,
) -> MemoryEstimate:
    """Bytes per device of one row; `facts` are shape_facts() of the model (rows.py)."""
    tokens, hidden, layers, vocab = (
        finetune.max_tokens or facts["window"],
        facts["hidden"],
        facts["layers"],
        facts["vocab"],
    )
    parameters, share = facts["parameters"], devices if sharded else 1
    if finetune.method == "full":
        states = (4 if offload_optimizer else 16) * parameters / share
    else:
        linear, embeddings = parameters - facts["embeddings"], facts["embeddings"]
        frozen = NF4_BYTES * linear + 4 * embeddings if finetune.quantization == "nf4" else 2 * parameters
        states = frozen + 16 * finetune.lora_r * facts["lora_width"]
    layer_parameters = (parameters - facts["embeddings"]) / layers
    zero3 = 4 * vocab * hidden + 2 * 2 * layer_parameters + 4 * hidden**2 if sharded and devices > 1 else 0
    recompute = tokens * recompute_bytes_per_token(hidden, facts["kv"], facts["intermediate"])
    if finetune.gradient_checkpointing:
        checkpoints = layers * tokens * hidden * 2
    else:  # every layer keeps what the recomputed one would
        checkpoints, recompute = layers * recompute, 0
    positions = round(tokens * answer_fraction) if finetune.answer_logits_only else tokens
    return MemoryEstimate(
        {
            "weights and states": states,
            "ZeRO-3 buffers": zero3,
            "checkpoints": checkpoints,
            "recomputed layer": recompute,
            "logits": positions * vocab * LOGIT_BYTES,
        }
    )


def checkpoint_disk_gb(facts: dict, finetune) -> float:
    """GB one saved checkpoint takes (finetune.save_steps writes one; the trainer keeps the latest)."""
    if finetune.method == "full":
        return 14 * facts["parameters"] / GB
    return 16 * finetune.lora_r * facts["lora_width"] / GB


def fitting_max_tokens(
    facts: dict, finetune, devices: int, sharded: bool, offload_optimizer: bool, gpu_memory_gib: float
) -> int | None:
    """The largest multiple of 1,024 tokens per row that fits `gpu_memory_gib` with everything else unchanged."""
    from dataclasses import replace

    best, tokens = None, 1024
    while tokens < (finetune.max_tokens or facts["window"]):
        trial = replace(finetune, max_tokens=tokens)
        if memory_estimate(facts, trial, devices, sharded, offload_optimizer).gib > gpu_memory_gib:
            break
        best, tokens = tokens, tokens + 1024
    return best


def fitting_lora_r(facts: dict, finetune, devices: int, sharded: bool, gpu_memory_gib: float) -> int | None:
    """The largest LoRA rank below the row's, a power of two from 8, that fits with everything else unchanged."""
    from dataclasses import replace

    rank = 8
    best = None
    while rank < finetune.lora_r:
        if memory_estimate(facts, replace(finetune, lora_r=rank), devices, sharded).gib <= gpu_memory_gib:
            best = rank
        rank *= 2
    return best
