"""GPU throughput: training tokens/s and model FLOPs utilisation (MFU) of padded against packed rows, and synthesis
tokens/s of continuous batching against static batches, side by side in one run.

    python benchmarks/gpu_throughput.py [--budget-seconds 420] [--json metrics/gpu_throughput.json]

Training. A case is a model shape, a method and a row length: LLaMA-3.2-1B and LLaMA-3.1-8B (their published
config.json shapes, random weights: nothing is downloaded) at 4K, 16K and 32K tokens on CUDA; a tiny LLaMA (2 layers,
hidden 64, vocabulary 512) at 256, 512 and 1,024 tokens on CPU, so the script cannot rot. A case's samples are random
token ids, labels on each sample's last quarter (the answers), 1/16 to 1/2 of the row long and together exactly one
row: packed they are that row (`PackedCollator`, position ids restarting per sample), padded one row each, padded to
the longest (`PadCollator`). Both layouts train the same samples through the finetune stage's code: the model from
`load_model` (recipe `cpu` = LoRA, `qlora` = nf4 + double quantization, `paper` = full fine-tuning; fp32 master
weights), gradient checkpointing, the recipe's compute dtype under autocast (bf16 on CUDA), the attention kernel there
is (flash_attention_2 with flash-attn, else sdpa), `answer_only_loss(logits_only=True)`, clipping, and the optimizer
Trainer builds from the recipe. A step is forward, backward and optimizer step; --warmup steps untimed, then --steps
timed. tokens/s counts real (non-padding) tokens, the same samples in both layouts: packed/padded > 1 means packing
trains the same data faster. peak GiB is torch's peak allocation per layout (CUDA only).

MFU = model FLOPs of a step / (seconds per step x the device's dense bf16 peak), with, over the step's samples:

    model FLOPs = c N_layers T + c N_head A + 6 N_adapter T + 12 L h sum(s^2)

T tokens, A answer positions (the only ones projected onto the vocabulary: logits_only), s each sample's length,
N_layers the decoder layers' linear weights, N_head = h x vocabulary, N_adapter the LoRA matrices, L layers, h the
attention width (heads x head_dim). c = 6 for full fine-tuning (2 forward + 4 backward); c = 4 for LoRA and QLoRA
(frozen weights: backward through them, no weight gradient). The last term is attention (PaLM's 12 L h s per token,
not halved for the causal mask; a sample attends to itself only). Recomputation (gradient checkpointing), padding and
masked attention are not model FLOPs: the padded layout does the same model FLOPs in more time. Printed where the
device's peak is known (H100 SXM: 989 TFLOP/s; --peak-tflops for others), "–" on CPU.

Synthesis: the transformers backend's continuous batching (`ContinuousBatcher`, driven as
`TransformersBackend.iter_generate` drives it: longest prompt first, one seed per prompt) against static,
length-sorted, left-padded batches through `model.generate` (synthesis_throughput.py's static path), on the same
random-id prompts with the same number of slots, the model loaded as the backend loads it (in bf16 on CUDA).
A random-weight model's next token is near-uniform, so both sample at temperature 1 and a random 1/mean share of the
vocabulary ends a row: lengths vary (geometric, capped at the max new tokens) as real contexts do. tokens/s counts
each row's tokens before its end.

Budget: cases run in order (the 1B's synthesis, then its full, LoRA, QLoRA; the 8B's QLoRA, LoRA, full). A method whose
weights, gradients and optimizer states alone would not fit the GPU is skipped with the sizes; a layout that runs out
of memory is recorded as OOM (the memory is freed and the run goes on); a case whose estimated time (its FLOPs at 25%
of peak) no longer fits in --budget-seconds is skipped. bitsandbytes, flash-attn, DeepSpeed and vLLM are detected,
never required: without bitsandbytes the QLoRA rows say so.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import importlib.util
import logging
import os
import platform
import random
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # 32K rows fragment the cache
if importlib.util.find_spec("ctxsynth") is None:  # a bare CUDA machine: this checkout's package, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ctxsynth.core.chat_encoding import IGNORE_INDEX
from ctxsynth.core.io import write_json
from ctxsynth.finetune.data import Example, PadCollator
from ctxsynth.finetune.loss import answer_only_loss
from ctxsynth.finetune.packing import PackedCollator, pack_examples
from ctxsynth.finetune.train import (
    FinetuneSettings,
    Runtime,
    count_parameters,
    load_model,
    resolve_runtime,
    training_arguments,
)
from ctxsynth.generation.batching import ContinuousBatcher, Sampling

# meta-llama/Llama-3.2-1B config.json (the architecture keys; checked against copies of the published file).
LLAMA_3_2_1B = {
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 32.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "rms_norm_eps": 1e-5,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "tie_word_embeddings": True,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
}
# meta-llama/Llama-3.1-8B config.json: the same family, rope scaling factor 8 (ctxsynth/preflight/model_facts.yaml).
LLAMA_3_1_8B = LLAMA_3_2_1B | {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "rope_scaling": LLAMA_3_2_1B["rope_scaling"] | {"factor": 8.0},
    "tie_word_embeddings": False,
}
TINY = LLAMA_3_2_1B | {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 512,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
SHAPES = {"llama-3.2-1b": LLAMA_3_2_1B, "llama-3.1-8b": LLAMA_3_1_8B, "tiny": TINY}
# (model, methods in run order); the GPU plan puts the single-GPU recipe of the 8B (QLoRA) first.
GPU_PLAN = [("llama-3.2-1b", ("full", "lora", "qlora")), ("llama-3.1-8b", ("qlora", "lora", "full"))]
CPU_PLAN = [("tiny", ("full", "lora", "qlora"))]
GPU_LENGTHS, CPU_LENGTHS = (4096, 16384, 32768), (256, 512, 1024)
SYNTHESIS_MODEL = {"cuda": "llama-3.2-1b", "cpu": "tiny"}
RECIPES = {"full": "paper", "lora": "cpu", "qlora": "qlora"}
# Dense (no sparsity) bf16 tensor-core peak, TFLOP/s, from NVIDIA's data sheets; the first name in the device's wins.
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),  # SXM: "NVIDIA H100 80GB HBM3"
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
)
OPTIONAL = {"bitsandbytes": "bitsandbytes", "flash-attn": "flash_attn", "deepspeed": "deepspeed", "vllm": "vllm"}
ACHIEVED = 0.25  # share of peak the time estimates assume (sdpa's masked attention and recomputation included)
DASH = "–"


@dataclass(frozen=True)
class Device:
    kind: str  # cuda | cpu
    name: str
    peak_flops: float | None  # dense bf16 FLOP/s, None where unknown
    memory_gib: float | None


@dataclass
class Case:
    model: str
    method: str
    tokens: int
    samples: int = 0
    padded: dict[str, Any] = field(default_factory=dict)
    packed: dict[str, Any] = field(default_factory=dict)
    model_tflop_per_step: float | None = None
    mfu_padded: float | None = None
    mfu_packed: float | None = None

    def skip(self, reason: str) -> None:
        self.padded = self.packed = {"status": reason}


@dataclass
class Bench:
    """One run: where it computes, its settings, its clock and its results so far (written after every case)."""

    device: Device
    attn: str
    warmup: int
    steps: int
    budget: float
    json_path: Path | None
    started: float = field(default_factory=time.perf_counter)
    cases: list[Case] = field(default_factory=list)
    synthesis: list[dict[str, Any]] = field(default_factory=list)
    synthesis_plan: dict[str, Any] = field(default_factory=dict)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def log(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:6.0f} s] {message}", file=sys.stderr, flush=True)

    def save(self) -> None:
        if self.json_path is None:
            return
        write_json(self.json_path, report(self))


def optional_packages() -> dict[str, str | None]:
    """Each optional package's version, or None: detected without importing it."""
    found: dict[str, str | None] = {}
    for distribution, module in OPTIONAL.items():
        if importlib.util.find_spec(module) is None:
            found[distribution] = None
            continue
        try:
            found[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            found[distribution] = "installed"
    return found


def detect_device(peak_tflops: float | None) -> Device:
    import torch

    if not torch.cuda.is_available():
        cpu = platform.processor() or platform.machine()
        threads = torch.get_num_threads()
        peak = peak_tflops * 1e12 if peak_tflops else None  # MFU on CPU only when asked for
        return Device("cpu", f"CPU {cpu}, {threads} thread{'s' if threads > 1 else ''}", peak, None)
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops or next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)
    memory = torch.cuda.get_device_properties(0).total_memory / 2**30
    return Device("cuda", name, peak * 1e12 if peak else None, memory)


def attention_kernel(device: Device) -> str:
    """flash_attention_2 (the paper recipe's: packed samples as varlen boundaries) where flash-attn works, else sdpa."""
    from transformers.utils import is_flash_attn_2_available

    return "flash_attention_2" if device.kind == "cuda" and is_flash_attn_2_available() else "sdpa"


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def shape_params(config: dict) -> tuple[int, int]:
    """(the decoder layers' linear weights, the embedding and head weights)."""
    h, inner = config["hidden_size"], config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = 2 * h * inner + 2 * h * kv + 3 * h * config["intermediate_size"]
    embeddings = config["vocab_size"] * h * (1 if config["tie_word_embeddings"] else 2)
    return config["num_hidden_layers"] * per_layer, embeddings


def model_flops(config: dict, method: str, adapter: int, lengths: list[int], answers: int) -> float:
    """The module docstring's formula: one step's model FLOPs over samples of `lengths`, `answers` answer positions."""
    linear, _ = shape_params(config)
    width = config["num_attention_heads"] * config["head_dim"]
    c = 6 if method == "full" else 4
    tokens = sum(lengths)
    flops = c * linear * tokens + c * config["hidden_size"] * config["vocab_size"] * answers
    flops += 12 * config["num_hidden_layers"] * width * sum(length * length for length in lengths)
    return float(flops + (6 * adapter * tokens if method != "full" else 0))


def memory_need_gib(config: dict, method: str) -> float:
    """Weights, gradients and optimizer states before any activation: full = fp32 weight, gradient and two AdamW
    states (16 bytes a weight); LoRA = the fp32 frozen base (load_model's master weights); QLoRA = nf4 with double
    quantization (~0.56 bytes) for the layers' linear weights, fp32 embeddings and head."""
    linear, embeddings = shape_params(config)
    if method == "qlora":
        return (linear * 0.5625 + embeddings * 4) / 2**30
    return (linear + embeddings) * (16 if method == "full" else 4) / 2**30


def estimate_seconds(config: dict, method: str, lengths: list[int], bench: Bench) -> float:
    """Both layouts' warm-up and timed steps at ACHIEVED x peak, with recomputation; 0 on CPU (no estimate)."""
    if bench.device.kind != "cuda":
        return 0.0
    row, answers = sum(lengths), sum(length // 4 for length in lengths)
    # sdpa reads packed boundaries from a materialized mask and computes attention over the whole row
    packed = model_flops(config, method, 0, lengths if bench.attn != "sdpa" else [row], answers)
    padded = model_flops(config, method, 0, [max(lengths)] * len(lengths), answers)
    achieved = ACHIEVED * (bench.device.peak_flops or 400e12)
    return (bench.warmup + bench.steps) * 1.33 * (packed + padded) / achieved


def load_seconds(config: dict) -> float:
    """A guess at writing or loading the bf16 checkpoint (~1 GB/s with the fp32 cast)."""
    linear, embeddings = shape_params(config)
    return (linear + embeddings) * 2 / 1e9


def make_samples(row_tokens: int, vocab: int, seed: int) -> list[Example]:
    """Random-id samples of 1/16 to 1/2 of the row, together exactly `row_tokens`; labels on the last quarter."""
    rng = random.Random(seed)
    low, high = max(row_tokens // 16, 8), row_tokens // 2
    lengths, left = [], row_tokens
    while left > high:
        lengths.append(rng.randint(low, high))
        left -= lengths[-1]
    if left >= low:
        lengths.append(left)
    else:
        lengths[-1] += left
    samples = []
    for index, length in enumerate(lengths):
        ids = [rng.randrange(1, vocab) for _ in range(length)]  # 0 is the pad id
        prompt = length - max(length // 4, 2)
        samples.append(Example(f"sample-{index}", ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return samples


def layouts(samples: list[Example], row_tokens: int, weighting: str) -> dict[str, dict]:
    """The same samples as one packed row and as padded rows, through the finetune stage's collators."""
    packs = pack_examples(samples, row_tokens)
    if len(packs) != 1:
        raise AssertionError(f"{len(samples)} samples of {row_tokens} tokens made {len(packs)} packs")
    return {"packed": PackedCollator(0, weighting)(packs), "padded": PadCollator(0, weighting)(samples)}


def write_model(config: dict, out_dir: Path, device: str) -> Path:
    """A random-weight model of the shape saved in bf16, as the hub's checkpoints are, for load_model to read.

    load_model takes a directory, so each model is written once and each method loads it as the stage does (fp32
    master weights, nf4 quantization on load, the PEFT wrapping). On CUDA the weights are drawn on the GPU in bf16:
    the 8B never exists in fp32 on the CPU until load_model makes it so for LoRA, as a real run does.
    """
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**config), dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    free_memory()
    return out_dir


def settings_for(method: str, attn: str) -> FinetuneSettings:
    """The method's recipe with gradient checkpointing on and the attention kernel this machine has."""
    return FinetuneSettings(recipe=RECIPES[method], gradient_checkpointing=True, attn_implementation=attn, save_steps=0)


def load_for_training(model_dir: Path, params: FinetuneSettings, runtime: Runtime, scratch: Path):
    """(model, optimizer, trainable parameters) as the stage's Trainer has them when its first step starts."""
    from transformers import Trainer

    model = load_model(model_dir, params, runtime.device)
    if params.quantization != "nf4":  # nf4 loads onto the device; Trainer moves the others
        model.to(runtime.device)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    args = training_arguments(params, str(scratch), False, runtime.device, runtime.compute_dtype, runtime.optim)
    optimizer_class, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    return model, optimizer_class(trainable, **optimizer_kwargs), trainable


def train_step(model, batch: dict, optimizer, trainable: list, params: FinetuneSettings, runtime: Runtime) -> None:
    import torch

    autocast = (
        torch.autocast(runtime.device, dtype=runtime.compute_dtype)
        if runtime.compute_dtype != torch.float32
        else nullcontext()
    )
    with autocast:
        loss, _ = answer_only_loss(model, batch, logits_only=params.answer_logits_only)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, params.max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def time_layout(model, batch: dict, optimizer, trainable: list, params, runtime: Runtime, bench: Bench) -> dict:
    """Seconds per step and real tokens/s over bench.steps steps after bench.warmup; peak GiB on CUDA."""
    import torch

    cuda = runtime.device == "cuda"
    real_tokens = int(batch["real_tokens"])
    batch = {key: value.to(runtime.device) for key, value in batch.items()}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    for _ in range(bench.warmup):
        train_step(model, batch, optimizer, trainable, params, runtime)
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(bench.steps):
        train_step(model, batch, optimizer, trainable, params, runtime)
    if cuda:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - started) / bench.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    computed = batch["input_ids"].numel()
    return {
        "status": "ok",
        "seconds_per_step": seconds,
        "tokens_per_s": real_tokens / seconds,
        "real_tokens": real_tokens,
        "computed_tokens": computed,
        "peak_gib": peak,
    }


def measure(model, batch: dict, optimizer, trainable: list, params, runtime: Runtime, bench: Bench) -> dict:
    """time_layout, or {"status": "OOM"} with the memory given back when the layout does not fit."""
    import torch

    try:
        return time_layout(model, batch, optimizer, trainable, params, runtime, bench)
    except torch.cuda.OutOfMemoryError as error:
        result = {"status": "OOM", "detail": str(error).split(". ")[0]}
    except Exception as error:  # e.g. a kernel this device lacks: recorded, and the run goes on
        traceback.print_exc()
        result = {"status": "error", "detail": first_line(error)}
    optimizer.zero_grad(set_to_none=True)  # the traceback is gone: its activations can be freed
    free_memory()
    return result


def first_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]}"


def run_case(case: Case, config: dict, loaded: tuple, params: FinetuneSettings, runtime: Runtime, bench: Bench):
    model, optimizer, trainable = loaded
    samples = make_samples(case.tokens, config["vocab_size"], seed=case.tokens)
    case.samples = len(samples)
    lengths = [len(sample) for sample in samples]
    estimate = estimate_seconds(config, case.method, lengths, bench)
    if estimate > bench.left():
        case.skip(f"skipped: budget (~{estimate:.0f} s needed, {max(bench.left(), 0):.0f} s left)")
        return
    batches = layouts(samples, case.tokens, params.loss_weighting)
    case.packed = measure(model, batches["packed"], optimizer, trainable, params, runtime, bench)
    case.padded = measure(model, batches["padded"], optimizer, trainable, params, runtime, bench)
    answers = int((batches["packed"]["labels"][:, 1:] != IGNORE_INDEX).sum())
    adapter = count_parameters(model)[0] if case.method != "full" else 0
    flops = model_flops(config, case.method, adapter, lengths, answers)
    case.model_tflop_per_step = flops / 1e12
    for layout in ("packed", "padded"):
        result = getattr(case, layout)
        if bench.device.peak_flops and result["status"] == "ok":
            setattr(case, f"mfu_{layout}", flops / result["seconds_per_step"] / bench.device.peak_flops)


def unavailable(config: dict, method: str, bench: Bench) -> str | None:
    """Why a method cannot run here at all, or None."""
    if method == "qlora" and importlib.util.find_spec("bitsandbytes") is None:
        return "skipped: bitsandbytes not installed (QLoRA's nf4)"
    need = memory_need_gib(config, method)
    if bench.device.memory_gib is not None and need > 0.92 * bench.device.memory_gib:
        return (
            f"skipped: memory (~{need:.0f} GiB of weights, gradients and optimizer states before activations; "
            f"{bench.device.memory_gib:.0f} GiB here)"
        )
    return None


def run_method(model_dir: Path, name: str, method: str, lengths: tuple[int, ...], bench: Bench) -> None:
    """Every row length of one model and method, on one loaded model."""
    config = SHAPES[name]
    cases = [Case(name, method, tokens) for tokens in lengths]
    bench.cases.extend(cases)
    params = settings_for(method, bench.attn)
    runtime = resolve_runtime(params)
    first = estimate_seconds(config, method, [lengths[0] // 4] * 4, bench)
    reason = unavailable(config, method, bench)
    if reason is None and bench.device.kind == "cuda" and load_seconds(config) + first > bench.left():
        needed = load_seconds(config) + first
        reason = f"skipped: budget (~{needed:.0f} s to load and run one case, {max(bench.left(), 0):.0f} s left)"
    loaded = None
    if reason is None:
        try:
            with tempfile.TemporaryDirectory(prefix="ctxsynth-gpu-bench-") as scratch:
                loaded = load_for_training(model_dir, params, runtime, Path(scratch))
        except Exception as error:  # OOM, nf4 where bitsandbytes has no kernel for this device, a missing kernel
            import torch

            traceback.print_exc()
            kind = "OOM" if isinstance(error, torch.cuda.OutOfMemoryError) else "error"
            reason = f"{'skipped' if method == 'qlora' and kind == 'error' else kind} on load: {first_line(error)}"
    for case in cases:
        if loaded is None:
            case.skip(reason)
        else:
            run_case(case, config, loaded, params, runtime, bench)
        bench.log(f"{name} {method} {case.tokens}: packed {status(case.packed)}, padded {status(case.padded)}")
        bench.save()
    del loaded
    free_memory()


def status(result: dict) -> str:
    if result.get("status") == "ok":
        return f"{result['tokens_per_s']:,.0f} tok/s"
    return str(result.get("status"))


# --- synthesis ---------------------------------------------------------------------------------------------------
# synthesis_throughput.py's paths take a TransformersBackend: a tokenizer, chat-template text requests, greedy
# decoding. A random-weight model has no tokenizer and greedy decoding would never end a row, so its two paths are
# redone here on token ids: the same ContinuousBatcher the backend drives, the same static generate() batches.


@dataclass(frozen=True)
class SynthesisPlan:
    prompts: int
    prompt_tokens: tuple[int, int]  # shortest, longest
    slots: int
    max_new_tokens: int
    mean_new_tokens: int  # 1 / the share of the vocabulary that ends a row


SYNTHESIS_PLANS = {
    "cuda": SynthesisPlan(prompts=32, prompt_tokens=(256, 1024), slots=16, max_new_tokens=256, mean_new_tokens=96),
    "cpu": SynthesisPlan(prompts=16, prompt_tokens=(16, 64), slots=4, max_new_tokens=64, mean_new_tokens=24),
}


def left_pad(prompts: list[list[int]], pad: int, device: str):
    import torch

    width = max(len(prompt) for prompt in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt) :] = torch.tensor(prompt)
        mask[row, width - len(prompt) :] = 1
    return ids.to(device), mask.to(device)


def static_batches(model, prompts: list[list[int]], stops: set[int], slots: int, max_new: int) -> int:
    """Length-sorted, left-padded batches of `slots` through `model.generate`: tokens before each row's end."""
    import torch

    ordered, tokens = sorted(prompts, key=len, reverse=True), 0
    for start in range(0, len(ordered), slots):
        ids, mask = left_pad(ordered[start : start + slots], 0, model.device)
        with torch.inference_mode():
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                max_new_tokens=max_new,
                eos_token_id=sorted(stops),
                pad_token_id=0,
            )
        for row in output[:, ids.shape[1] :].tolist():
            tokens += next((n for n, token in enumerate(row) if token in stops), len(row))
    return tokens


def continuous(model, prompts: list[list[int]], stops: set[int], slots: int, max_new: int) -> int:
    """The backend's continuous batching, longest prompt first, a seed per prompt: tokens before each row's end."""
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))
    batcher = ContinuousBatcher(model, slots, stops, 0, model.device)
    runs = batcher.run([prompts[i] for i in order], order, Sampling(max_new_tokens=max_new, temperature=1.0))
    return sum(len(tokens) for finished in runs for _, tokens, _ in finished)


def timed(run, *args) -> tuple[float, int]:
    import torch

    started = time.perf_counter()
    tokens = run(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, tokens


def run_synthesis(model_dir: Path, name: str, bench: Bench) -> None:
    """Static batches against continuous batching on the same prompts; rows in bench.synthesis."""
    import torch
    from transformers import AutoModelForCausalLM

    plan, vocab = SYNTHESIS_PLANS[bench.device.kind], SHAPES[name]["vocab_size"]
    dtype = torch.bfloat16 if bench.device.kind == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation="sdpa")
    model = model.to(bench.device.kind).eval()  # as TransformersBackend loads it
    rng = random.Random(0)
    prompts = [[rng.randrange(1, vocab) for _ in range(rng.randint(*plan.prompt_tokens))] for _ in range(plan.prompts)]
    stops = set(rng.sample(range(1, vocab), max(1, round(vocab / plan.mean_new_tokens))))
    torch.manual_seed(0)
    for path in (static_batches, continuous):  # warm-up: kernels, allocator
        path(model, prompts[:2], stops, 2, 4)
    paths = (
        (f"static batches of {plan.slots} (generate)", static_batches),
        (f"continuous, {plan.slots} slots", continuous),
    )
    for label, path in paths:
        seconds, tokens = timed(path, model, prompts, stops, plan.slots, plan.max_new_tokens)
        bench.synthesis.append({"path": label, "seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds})
        bench.log(f"synthesis {label}: {tokens / seconds:,.1f} tok/s")
    bench.synthesis_plan = asdict(plan) | {"model": name, "stop_ids": len(stops)}
    bench.save()
    del model
    free_memory()


# --- report ------------------------------------------------------------------------------------------------------


def versions() -> dict[str, str | None]:
    """torch, transformers, peft, accelerate (required), then the optional packages (None: not installed)."""
    import torch

    found: dict[str, str | None] = {"torch": torch.__version__}
    for name in ("transformers", "peft", "accelerate"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found | optional_packages()


def report(bench: Bench) -> dict[str, Any]:
    return {
        "device": asdict(bench.device),
        "attn_implementation": bench.attn,
        "warmup_steps": bench.warmup,
        "timed_steps": bench.steps,
        "budget_seconds": bench.budget,
        "elapsed_seconds": time.perf_counter() - bench.started,
        "versions": versions(),
        "training": [asdict(case) for case in bench.cases],
        "synthesis": bench.synthesis,
        "synthesis_plan": bench.synthesis_plan,
    }


def cell(result: dict) -> str:
    """tokens/s, or the status's first word: OOM, skipped, error."""
    if result.get("status") == "ok":
        return f"{result['tokens_per_s']:,.0f}"
    return re.split(r"[: ]", str(result.get("status")))[0]


def peak_cell(case: Case) -> str:
    peaks = [case.padded.get("peak_gib"), case.packed.get("peak_gib")]
    return " / ".join(f"{peak:.1f}" if peak is not None else DASH for peak in peaks)


def training_table(bench: Bench) -> list[str]:
    lines = [
        "| case | model | method | tokens | padded tok/s | packed tok/s | packed/padded | MFU packed "
        "| peak GiB pad/pack |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes: list[str] = []
    for number, case in enumerate(bench.cases, 1):
        ok = case.padded.get("status") == "ok" and case.packed.get("status") == "ok"
        ratio = f"{case.packed['tokens_per_s'] / case.padded['tokens_per_s']:.2f}x" if ok else DASH
        mfu = f"{case.mfu_packed:.1%}" if case.mfu_packed is not None else DASH
        lines.append(
            f"| {number} | {case.model} | {case.method} | {case.tokens:,} | {cell(case.padded)} | "
            f"{cell(case.packed)} | {ratio} | {mfu} | {peak_cell(case)} |"
        )
        for layout in ("padded", "packed"):
            result = getattr(case, layout)
            if result.get("status") != "ok":
                detail = f" ({result['detail']})" if result.get("detail") else ""
                notes.append(f"case {number} {layout}: {result['status']}{detail}")
    return lines + [""] + sorted(set(notes), key=notes.index)


def samples_lines(bench: Bench) -> list[str]:
    """What each row length's samples were (the same for every model and method)."""
    lines = []
    for tokens in sorted({case.tokens for case in bench.cases}):
        vocab = SHAPES[next(case.model for case in bench.cases if case.tokens == tokens)]["vocab_size"]
        lengths = [len(sample) for sample in make_samples(tokens, vocab, seed=tokens)]
        computed = len(lengths) * max(lengths)
        lines.append(
            f"rows of {tokens:,} tokens: {len(lengths)} samples of {min(lengths):,}-{max(lengths):,} tokens; padded "
            f"{len(lengths)} x {max(lengths):,} = {computed:,} tokens computed ({tokens / computed:.0%} real)"
        )
    return lines


def synthesis_table(bench: Bench) -> list[str]:
    if not bench.synthesis:
        return ["synthesis: not run"]
    plan = bench.synthesis_plan
    lines = [
        f"synthesis on {plan['model']}: {plan['prompts']} prompts of {plan['prompt_tokens'][0]}-"
        f"{plan['prompt_tokens'][1]} tokens, temperature 1, up to {plan['max_new_tokens']} new tokens, "
        f"{plan['stop_ids']} stop ids (mean ~{plan['mean_new_tokens']} tokens)",
        "| path | seconds | tokens | tokens/s | speed-up |",
        "|---|---|---|---|---|",
    ]
    reference = bench.synthesis[0]["tokens_per_s"]
    for row in bench.synthesis:
        lines.append(
            f"| {row['path']} | {row['seconds']:.2f} | {row['tokens']:,} | {row['tokens_per_s']:,.1f} | "
            f"{row['tokens_per_s'] / reference:.2f}x |"
        )
    return lines


def header(bench: Bench) -> list[str]:
    found = versions()
    peak = f"{bench.device.peak_flops / 1e12:,.0f} TFLOP/s dense bf16" if bench.device.peak_flops else "peak unknown"
    memory = f", {bench.device.memory_gib:.0f} GiB" if bench.device.memory_gib else ""
    packages = ", ".join(f"{name} {version or DASH}" for name, version in found.items())
    return [
        f"device: {bench.device.name}{memory} ({peak}); attention: {bench.attn}",
        f"packages: {packages}",
        f"{bench.warmup} warm-up + {bench.steps} timed step(s) per layout; gradient checkpointing; "
        f"{time.perf_counter() - bench.started:.0f} s of a {bench.budget:.0f} s budget",
    ]


# --- main --------------------------------------------------------------------------------------------------------


def quiet() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.basicConfig(level=logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning)


def choose_plan(kind: str, models: list[str] | None, methods: list[str] | None) -> list[tuple[str, tuple[str, ...]]]:
    """(model, methods) in run order: this device's default plan, or the shapes and methods asked for."""
    known = dict(GPU_PLAN + CPU_PLAN)
    plan = [(name, known[name]) for name in models] if models else (GPU_PLAN if kind == "cuda" else CPU_PLAN)
    return [(name, tuple(method for method in order if not methods or method in methods)) for name, order in plan]


def run_plan(bench: Bench, plan: list, lengths: tuple[int, ...], synthesis: bool, workdir: Path) -> None:
    """Each model written once; synthesis on the first model written of SYNTHESIS_MODEL's kind; then its methods."""
    names = [name for name, _ in plan]
    synthesis_on = SYNTHESIS_MODEL[bench.device.kind] if SYNTHESIS_MODEL[bench.device.kind] in names else names[0]
    for name, methods in plan:
        config = SHAPES[name]
        if bench.device.kind == "cuda" and 2 * load_seconds(config) > bench.left():
            for method in methods:
                cases = [Case(name, method, tokens) for tokens in lengths]
                for case in cases:
                    case.skip(f"skipped: budget (writing the model alone ~{load_seconds(config):.0f} s)")
                bench.cases.extend(cases)
            continue
        bench.log(f"writing a random-weight {name}")
        model_dir = write_model(config, workdir / name, bench.device.kind)
        if synthesis and name == synthesis_on:
            run_synthesis(model_dir, name, bench)
        for method in methods:
            run_method(model_dir, name, method, lengths, bench)
        shutil.rmtree(model_dir)  # the 8B's 16 GB


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per layout (>= 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed training steps per layout first")
    parser.add_argument("--budget-seconds", type=float, default=420.0, help="skip cases that would not fit")
    parser.add_argument("--lengths", type=int, nargs="+", help="row lengths (default 4K 16K 32K; CPU 256 512 1K)")
    parser.add_argument("--models", nargs="+", choices=sorted(SHAPES), help="these shapes instead (any device)")
    parser.add_argument("--methods", nargs="+", choices=sorted(RECIPES), help="only these methods")
    parser.add_argument("--peak-tflops", type=float, help="the device's dense bf16 peak, for MFU on other GPUs")
    parser.add_argument("--skip-synthesis", action="store_true")
    parser.add_argument("--workdir", type=Path, help="where the random-weight models go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="write the rows here (after every case)")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be >= 1 and --warmup >= 0")
    quiet()
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(1)  # the tiny shape gains nothing from threads, and they thrash on a loaded machine
    device = detect_device(args.peak_tflops)
    bench = Bench(device, attention_kernel(device), args.warmup, args.steps, args.budget_seconds, args.json)
    lengths = tuple(args.lengths or (GPU_LENGTHS if device.kind == "cuda" else CPU_LENGTHS))
    with tempfile.TemporaryDirectory(prefix="ctxsynth-gpu-bench-", dir=args.workdir) as workdir:
        plan = choose_plan(device.kind, args.models, args.methods)
        run_plan(bench, plan, lengths, not args.skip_synthesis, Path(workdir))
    bench.save()
    print(
        "\n".join(header(bench) + [""] + training_table(bench) + samples_lines(bench) + [""] + synthesis_table(bench))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
