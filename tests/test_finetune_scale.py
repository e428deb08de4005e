"""Fine-tuning past the CPU default: recipes, packing, full fine-tuning, resume, launchers (tiny model)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ctxsynth.core.chat_encoding import IGNORE_INDEX, end_of_turn_ids
from ctxsynth.core.io import InputError, load_params
from ctxsynth.finetune.data import Example, PadCollator, prepare_examples
from ctxsynth.finetune.packing import Pack, PackedCollator, pack_examples
from ctxsynth.finetune.recipes import load_recipes
from ctxsynth.finetune.train import FinetuneSettings, answer_only_loss, is_adapter_dir, train

ROOT = Path(__file__).resolve().parents[1]


def chat(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def write_samples(path: Path, count: int) -> Path:
    rows = [
        {"id": f"s{i}", "task": "qa", "messages": chat(f"Question {i}: " + "why? " * (3 * i), "Answer " * (1 + i))}
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def tiny(**overrides) -> FinetuneSettings:
    values = dict(
        lora_r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        learning_rate=5e-3,
        warmup_ratio=0.0,
        epochs=1,
        batch_size=1,
        grad_accum=2,
        max_tokens=512,
        lr_scheduler="linear",
        seed=7,
        max_steps=4,
    )
    values.update(overrides)
    return FinetuneSettings(**values)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def examples(tokenizer):
    records = [
        (i + 1, {"id": f"e{i}", "messages": chat("Where? " * (2 + 5 * i), "It is in Tartu. " * (1 + 2 * i))})
        for i in range(4)
    ]
    return prepare_examples(
        records, tokenizer, max_tokens=None, overlength="drop", end_ids=end_of_turn_ids(tokenizer)
    ).examples


# --- recipes ---------------------------------------------------------------------------------------------------


def test_cpu_recipe_is_the_default_and_todays_params(tmp_path):
    assert FinetuneSettings.from_mapping({}) == FinetuneSettings()  # dataclass defaults == the cpu recipe
    repo_params = FinetuneSettings.from_mapping(load_params("finetune", ROOT / "params.yaml"), ROOT / "params.yaml")
    assert repo_params == FinetuneSettings()
    assert (
        repo_params.method,
        repo_params.quantization,
        repo_params.grad_accum,
        repo_params.max_tokens,
        repo_params.packing,
        repo_params.max_steps,
    ) == ("lora", "none", 4, 1024, False, -1)


@pytest.mark.parametrize("name", sorted(load_recipes()))
def test_every_recipe_resolves(name):
    params = FinetuneSettings.from_mapping({"recipe": name})
    assert params.recipe == name
    if name == "qlora":
        assert (
            params.quantization,
            params.gradient_checkpointing,
            params.optim,
            params.target_modules,
            params.learning_rate,
        ) == ("nf4", True, "paged_adamw_32bit", "all-linear", 2e-4)
    if name == "paper":
        assert (
            params.method,
            params.learning_rate,
            params.lr_scheduler,
            params.warmup_ratio,
            params.epochs,
            params.weight_decay,
            params.adam_beta1,
            params.adam_beta2,
            params.packing,
            params.max_tokens,
            params.loss_weighting,
        ) == ("full", 2e-5, "cosine", 0.03, 2.0, 0.0, 0.9, 0.95, True, 32768, "sample")


def test_explicit_keys_override_the_recipe_and_nulls_do_not():
    params = FinetuneSettings.from_mapping(
        {"recipe": "paper", "learning_rate": 1e-5, "max_tokens": None, "epochs": None, "packing": False}
    )
    assert (params.learning_rate, params.max_tokens, params.epochs, params.packing) == (1e-5, 32768, 2.0, False)
    with pytest.raises(InputError, match=r"field 'finetune.recipe'.*unknown recipe 'gpu'"):
        FinetuneSettings.from_mapping({"recipe": "gpu"})
    with pytest.raises(InputError, match=r"field 'finetune.quantization'.*full fine-tuning"):
        FinetuneSettings.from_mapping({"recipe": "paper", "quantization": "nf4"})
    with pytest.raises(InputError, match=r"field 'finetune.max_tokens'.*packing"):
        FinetuneSettings.from_mapping({"packing": True, "max_tokens": 0})


def test_run_key_ignores_logging_only():
    base = FinetuneSettings()
    assert base.run_key("data") == FinetuneSettings(logging_steps=5, save_steps=9).run_key("data")
    assert base.run_key("data") != FinetuneSettings(learning_rate=1e-3).run_key("data") != base.run_key("other")


# --- packing ---------------------------------------------------------------------------------------------------


def test_best_fit_packing_keeps_every_sample_once_within_budget(examples):
    lengths = [len(e) for e in examples]
    budget = max(lengths) + min(lengths)
    packs = pack_examples(examples, budget)
    assert sorted(i for pack in packs for i in pack.ids) == sorted(e.id for e in examples)
    assert all(len(pack) <= budget for pack in packs) and len(packs) < len(examples)
    assert [p.ids for p in pack_examples(examples, budget)] == [p.ids for p in packs]  # deterministic
    with pytest.raises(ValueError, match="longer than max_tokens"):
        pack_examples(examples, max(lengths) - 1)


def test_packed_collator_restarts_positions_and_pads_as_its_own_segment():
    a, b, c = (Example(i, [7] * n, [IGNORE_INDEX] * (n - 2) + [5, 6]) for i, n in (("a", 3), ("b", 4), ("c", 2)))
    batch = PackedCollator(pad_token_id=0, loss_weighting="sample")([Pack([a, b]), Pack([c])])
    assert "attention_mask" not in batch  # transformers reads the restarts as boundaries only without one
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 0, 1, 2, 3, 4]]
    assert batch["labels"][1, 2:].tolist() == [IGNORE_INDEX] * 5
    assert batch["loss_weights"][0].tolist() == [0, 0.5, 0.5, 0, 0, 0.5, 0.5]  # each sample's answer sums to 1
    assert int(batch["real_tokens"]) == 9 and int(batch["num_samples"]) == 3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_gives_the_per_sample_losses_of_unpacked_samples(tiny_model_dir, tokenizer, examples, attn):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation=attn).eval()
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        alone = [answer_only_loss(model, PadCollator(pad)([e]))[0].item() for e in examples]
        packed = PackedCollator(pad, "token")([Pack(examples[:3]), Pack(examples[3:])])  # 2 rows, one padded
        assert packed["input_ids"].shape[0] == 2 and (packed["labels"][1] == IGNORE_INDEX).sum() > 0
        starts = [0, len(examples[0]), len(examples[0]) + len(examples[1])]
        per_sample = []
        for index, example in enumerate(examples):
            row, start = (0, starts[index]) if index < 3 else (1, 0)
            only = dict(packed, loss_weights=torch.zeros_like(packed["loss_weights"]))
            span = slice(start, start + len(example))
            only["loss_weights"][row, span] = packed["loss_weights"][row, span]
            per_sample.append(answer_only_loss(model, only)[0].item())
        token_mean = answer_only_loss(model, packed)[0].item()
        by_sample = PackedCollator(pad, "sample")([Pack(examples[:3]), Pack(examples[3:])])
        sample_mean = answer_only_loss(model, by_sample)[0]
    assert per_sample == pytest.approx(alone, rel=1e-5, abs=1e-6)
    tokens = [e.target_tokens for e in examples]
    assert len(set(tokens)) > 1  # token and sample weighting really differ here
    assert token_mean == pytest.approx(sum(loss * n for loss, n in zip(alone, tokens)) / sum(tokens), rel=1e-5)
    assert sample_mean.item() == pytest.approx(sum(alone) / len(alone), rel=1e-5)
    unpacked_model_view = model(input_ids=packed["input_ids"], use_cache=False).logits  # no restarts: attention leaks
    assert not torch.allclose(
        unpacked_model_view,
        model(**{k: packed[k] for k in ("input_ids", "position_ids")}, use_cache=False).logits,
        atol=1e-4,
    )


# --- full fine-tuning, packing in training, resume -------------------------------------------------------------


def test_full_finetuning_with_packing_writes_a_whole_model(tmp_path, tiny_model_dir, tokenizer):
    import torch
    from transformers import AutoModelForCausalLM

    train_path = write_samples(tmp_path / "train.jsonl", 6)
    out = tmp_path / "model_out"
    summary = train(
        tiny_model_dir,
        train_path,
        out,
        tmp_path / "train.json",
        tiny(method="full", packing=True, max_tokens=256, loss_weighting="sample", max_steps=2, learning_rate=1e-3),
    )
    assert summary["method"] == "full" and summary["steps"] == 2 and math.isfinite(summary["final_loss"])
    assert summary["packed_sequences"] < summary["samples_used"] == 6
    assert summary["trainable_params"] == summary["total_params"]
    assert summary["trained_tokens"] > 0 and summary["params"]["recipe"] == "cpu"
    assert not is_adapter_dir(out) and (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    assert not (out / "training_args.bin").exists()
    tuned = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([tokenizer("Answer Answer", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert (tuned(input_ids=ids).logits - base(input_ids=ids).logits).abs().max() > 1e-4


def test_qlora_recipe_trains_on_cpu_with_its_fallbacks(tmp_path, tiny_model_dir):
    pytest.importorskip("bitsandbytes", reason="the nf4 path needs bitsandbytes (pip install 'ctxsynth[quant]')")
    train_path = write_samples(tmp_path / "train.jsonl", 6)
    params = FinetuneSettings.from_mapping(
        {"recipe": "qlora", "max_tokens": 256, "max_steps": 2, "lora_r": 4, "grad_accum": 1}
    )
    summary = train(tiny_model_dir, train_path, tmp_path / "adapter", None, params)
    assert (summary["quantization"], summary["compute_dtype"], summary["optim"]) == ("nf4", "float32", "adamw_torch")
    assert summary["steps"] == 2 and summary["packed_sequences"] < 6 and math.isfinite(summary["final_loss"])
    assert json.loads((tmp_path / "adapter" / "provenance.json").read_text())["params"]["recipe"] == "qlora"


def _adapter_weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path, tiny_model_dir):
    train_path = write_samples(tmp_path / "train.jsonl", 8)
    params = tiny(save_steps=1)
    checkpoints = tmp_path / "checkpoints"
    first = train(
        tiny_model_dir, train_path, tmp_path / "resumed", None, params, checkpoint_dir=checkpoints, stop_after_steps=2
    )
    assert first["steps"] == 2 and not (tmp_path / "resumed").exists()  # interrupted: no output yet
    (run_dir,) = checkpoints.iterdir()
    assert [p.name for p in run_dir.glob("checkpoint-*")] == ["checkpoint-2"]  # save_total_limit=1

    resumed = train(tiny_model_dir, train_path, tmp_path / "resumed", None, params, checkpoint_dir=checkpoints)
    assert resumed["resumed_from_step"] == 2 and resumed["steps"] == 4
    assert list(checkpoints.iterdir()) == []  # a finished run leaves no checkpoints
    straight = train(tiny_model_dir, train_path, tmp_path / "straight", None, params)
    assert straight["resumed_from_step"] == 0
    a, b = _adapter_weights(tmp_path / "resumed"), _adapter_weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-5, name
    assert resumed["final_loss"] == pytest.approx(straight["final_loss"], rel=1e-5)


def test_params_change_does_not_resume_a_stale_run(tmp_path, tiny_model_dir):
    train_path = write_samples(tmp_path / "train.jsonl", 4)
    checkpoints = tmp_path / "checkpoints"
    train(
        tiny_model_dir,
        train_path,
        tmp_path / "a",
        None,
        tiny(save_steps=1),
        checkpoint_dir=checkpoints,
        stop_after_steps=1,
    )
    changed = train(
        tiny_model_dir,
        train_path,
        tmp_path / "b",
        None,
        tiny(save_steps=1, lora_r=2, max_steps=2),
        checkpoint_dir=checkpoints,
    )
    assert changed["resumed_from_step"] == 0 and changed["steps"] == 2
    assert list(checkpoints.iterdir()) == []  # the abandoned run's checkpoints went too


# --- launchers -------------------------------------------------------------------------------------------------


def test_shipped_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    names = sorted(p.stem for p in (ROOT / "configs" / "accelerate").glob("*.yaml"))
    assert names == [
        "deepspeed_zero3",
        "deepspeed_zero3_offload",
        "fsdp",
        "multi_gpu_ddp",
        "rehearsal_cpu",
        "single_gpu",
    ]
    for name in names:
        config = load_config_from_file(str(ROOT / "configs" / "accelerate" / f"{name}.yaml"))
        assert config.num_machines == 1
    zero3 = yaml.safe_load((ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml").read_text())
    paper = FinetuneSettings.from_mapping({"recipe": "paper"})
    assert zero3["deepspeed_config"]["zero_stage"] == 3
    assert zero3["deepspeed_config"]["gradient_accumulation_steps"] == paper.grad_accum
    assert zero3["deepspeed_config"]["gradient_clipping"] == paper.max_grad_norm
    offload = yaml.safe_load((ROOT / "configs" / "accelerate" / "deepspeed_zero3_offload.yaml").read_text())
    assert offload["deepspeed_config"] == {**zero3["deepspeed_config"], "offload_optimizer_device": "cpu"}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_stage(prefix: list[str], tmp_path: Path, name: str, model: Path, train_path: Path, params: str):
    import os
    import subprocess
    import sys

    (tmp_path / f"{name}.yaml").write_text(params, encoding="utf-8")
    out = tmp_path / name
    command = [
        sys.executable,
        *prefix,
        str(ROOT / "stages" / "finetune.py"),
        "--model",
        str(model),
        "--train",
        str(train_path),
        "--adapter",
        str(out / "adapter"),
        "--metrics",
        str(out / "train.json"),
        "--live-dir",
        str(out / "live"),
        "--checkpoints",
        str(out / "checkpoints"),
        "--params",
        str(tmp_path / f"{name}.yaml"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


TINY_STAGE_PARAMS = (
    "finetune:\n  max_steps: 3\n  batch_size: 1\n  lora_r: 4\n  lora_alpha: 8\n  lora_dropout: 0.0\n"
    "  learning_rate: 0.005\n  lr_scheduler: linear\n  seed: 7\n  save_steps: 0\n"
)


def test_ddp_on_two_cpu_processes_equals_one_process_with_accumulation(tmp_path, tiny_model_dir):
    """Real DDP (gloo, two torchrun processes, half the batch each) against gradient accumulation in one process."""
    train_path = write_samples(tmp_path / "train.jsonl", 8)
    ddp, _ = _run_stage(
        ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())],
        tmp_path,
        "ddp",
        tiny_model_dir,
        train_path,
        TINY_STAGE_PARAMS + "  grad_accum: 1\n",
    )
    single = train(
        tiny_model_dir,
        train_path,
        tmp_path / "single" / "adapter",
        None,
        FinetuneSettings.from_mapping(yaml.safe_load(TINY_STAGE_PARAMS + "  grad_accum: 2\n")["finetune"]),
    )
    ddp_summary = json.loads((ddp / "train.json").read_text())
    assert ddp_summary["world_size"] == 2 and ddp_summary["steps"] == single["steps"] == 3
    assert ddp_summary["samples_seen"] == 3  # rank 0's share: one sample per step, the other rank took the other
    a, b = _adapter_weights(ddp / "adapter"), _adapter_weights(tmp_path / "single" / "adapter")
    assert max(t.abs().max().item() for t in b.values()) > 1e-3  # trained: LoRA B starts at zero
    for name in a:
        assert (a[name] - b[name]).abs().max().item() < 1e-5, name
    assert ddp_summary["final_loss"] == pytest.approx(single["final_loss"], rel=1e-5)


def test_accelerate_launcher_relaunches_the_stage(tmp_path, tiny_model_dir):
    train_path = write_samples(tmp_path / "train.jsonl", 2)
    out, done = _run_stage(
        [],
        tmp_path,
        "launched",
        tiny_model_dir,
        train_path,
        TINY_STAGE_PARAMS.replace("max_steps: 3", "max_steps: 1")
        + "  launcher: accelerate\n  accelerate_config: single_gpu\n",
    )
    assert "accelerate.commands.launch --config_file" in done.stderr
    assert str(ROOT / "configs" / "accelerate" / "single_gpu.yaml") in done.stderr
    assert "finetune (cpu, lora): 1 steps" in done.stdout
    assert is_adapter_dir(out / "adapter") and json.loads((out / "train.json").read_text())["steps"] == 1


def test_the_model_is_loaded_after_the_training_arguments_exist(tmp_path, tiny_model_dir, monkeypatch):
    """ZeRO-3 shards weights at load time only if TrainingArguments (which registers the DeepSpeed config with
    transformers) already exists; a model loaded before it is held whole by every rank."""
    import transformers

    import ctxsynth.finetune.train as train_module

    events = []
    original_post_init = transformers.TrainingArguments.__post_init__
    original_load = train_module.load_model

    def post_init(self):
        events.append("training_arguments")
        original_post_init(self)

    def load(*args, **kwargs):
        events.append("load_model")
        return original_load(*args, **kwargs)

    monkeypatch.setattr(transformers.TrainingArguments, "__post_init__", post_init)
    monkeypatch.setattr(train_module, "load_model", load)
    train(tiny_model_dir, write_samples(tmp_path / "train.jsonl", 2), tmp_path / "adapter", None, tiny(max_steps=1))
    assert events[:2] == ["training_arguments", "load_model"]


def test_paper_recipe_launches_on_two_cpu_processes_as_the_rehearsal_does(tmp_path, tiny_model_dir):
    """The rehearsal's distributed path: `accelerate launch` with configs/accelerate/rehearsal_cpu.yaml (2 processes,
    gloo), full fine-tuning with packing as the `paper` recipe trains; one whole model written, by rank 0."""
    train_path = write_samples(tmp_path / "train.jsonl", 4)
    out, done = _run_stage(
        [],
        tmp_path,
        "rehearsal",
        tiny_model_dir,
        train_path,
        "finetune:\n  recipe: paper\n  max_tokens: 256\n  epochs: 1\n  save_steps: 0\n  gradient_checkpointing: false\n"
        "  launcher: accelerate\n  accelerate_config: rehearsal_cpu\n  attn_implementation: sdpa\n",
    )
    assert str(ROOT / "configs" / "accelerate" / "rehearsal_cpu.yaml") in done.stderr
    summary = json.loads((out / "train.json").read_text())
    assert summary["world_size"] == 2 and summary["method"] == "full" and summary["packed_sequences"] >= 1
    assert (out / "adapter" / "config.json").is_file() and not is_adapter_dir(out / "adapter")


def test_parameter_counts_are_right_under_zero3_partitioning():
    """ZeRO-3 leaves each process an empty placeholder per parameter and the real count in ds_numel."""
    import torch

    from ctxsynth.finetune.train import count_parameters

    model = torch.nn.Linear(4, 3)
    assert count_parameters(model) == (15, 15)
    for parameter in model.parameters():
        parameter.ds_numel = parameter.numel()
        parameter.data = torch.empty(0)  # what the partitioned model holds on each process
    model.bias.requires_grad_(False)
    assert count_parameters(model) == (12, 15)
