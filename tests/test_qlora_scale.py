"""The qlora scale (experiments/paper.yaml): every group's gpu rows on one GPU in nf4 QLoRA, each with a rehearsal twin
that differs only in substitutable keys; sized by ctxsynth/paper/budget.py to 24 hours of one 80 GB GPU, and checked
by the preflight's QLoRA memory terms at 24, 48 and 80 GiB."""

from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ctxsynth.core.settings import load_settings
from ctxsynth.evaluate.settings import EvalSettings
from ctxsynth.finetune.settings import FinetuneSettings
from ctxsynth.paper import budget
from ctxsynth.paper.experiments import check_substitutions, load_plan, planned_entries
from ctxsynth.preflight.memory import fitting_lora_r, memory_estimate
from ctxsynth.preflight.rows import model_facts, shape_facts, with_overrides

ROOT = Path(__file__).resolve().parents[1]
PLAN = load_plan(ROOT / "experiments/paper.yaml")
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
GROUPS = list(PLAN["groups"])


def resolved(scale: str, group: str) -> list[tuple[dict, dict]]:
    """(entry, every section's settings) per planned run."""
    return [
        (entry, budget.row_settings(with_overrides(PARAMS, entry["overrides"])))
        for entry in planned_entries(PLAN, group, scale)
    ]


@pytest.mark.parametrize("group", GROUPS)
def test_every_group_has_qlora_rows_of_the_same_students_in_nf4_on_one_gpu(group):
    gpu = {entry["row"]: settings for entry, settings in resolved("gpu", group)}
    qlora = resolved("qlora", group)
    assert qlora and {entry["row"] for entry, _ in qlora} == set(gpu)
    for entry, settings in qlora:
        finetune = settings["finetune"]
        assert (finetune.recipe, finetune.quantization, finetune.method, finetune.launcher) == (
            "qlora",
            "nf4",
            "lora",
            "none",
        ), entry["name"]
        assert finetune.gradient_checkpointing and finetune.packing
        assert finetune.attn_implementation == "flash_attention_2"
        assert settings["evaluate"].backend == "auto"
        assert settings["fetch"].model.id == gpu[entry["row"]]["fetch"].model.id  # the gpu scale's student


@pytest.mark.parametrize("group", GROUPS)
def test_every_qlora_row_has_a_rehearsal_twin_in_nf4_on_a_stand_in(group):
    assert check_substitutions(PLAN, group) == []
    twins = resolved("qlora-rehearsal", group)
    assert [entry["row"] for entry, _ in twins] == [entry["row"] for entry in planned_entries(PLAN, group, "qlora")]
    for _, settings in twins:
        assert settings["fetch"].model.source == "stand_in" and settings["finetune"].quantization == "nf4"


def test_a_twin_that_changes_a_key_outside_the_substitutable_ones_is_named():
    plan = yaml.safe_load((ROOT / "experiments/paper.yaml").read_text(encoding="utf-8"))
    plan["groups"]["contexts"]["overrides"]["qlora-rehearsal"] = {"finetune.lora_r": 8}
    problems = check_substitutions(plan, "contexts")
    assert problems and all("finetune.lora_r differs from the qlora row" in line for line in problems)


@pytest.mark.parametrize("group", GROUPS)
def test_every_qlora_row_fits_80_gib_by_the_preflight_estimate(group):
    for entry, settings in resolved("qlora", group):
        facts = shape_facts(model_facts()[settings["fetch"].model.id])
        estimate = memory_estimate(facts, settings["finetune"], 1, False)
        assert estimate.gib <= 80, (entry["name"], estimate.explain())


def test_the_preflight_fails_a_qlora_row_that_does_not_fit_and_names_length_and_rank(tmp_path, monkeypatch):
    import shutil

    from ctxsynth.preflight.rows import check_row

    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    entry = next(e for e in planned_entries(PLAN, "main", "qlora") if e["row"] == "context-synthesis")
    params = with_overrides(PARAMS, entry["overrides"])
    for gib in (24, 48):
        problems = check_row(entry["name"], params, gib).problems
        lines = [line for line in problems if "finetune.max_tokens: about" in line]
        assert lines and "qlora" in lines[0] and "lower finetune.max_tokens to" in lines[0], lines
        assert "or train with LoRA / QLoRA" not in lines[0]
    at_80 = check_row(entry["name"], params, 80).problems
    assert not [line for line in at_80 if "GiB per device" in line]
    # just over the limit, a lower LoRA rank is enough and the preflight says which
    finetune = load_settings(FinetuneSettings, "finetune", params["finetune"])
    facts = shape_facts(model_facts()["meta-llama/Llama-3.1-8B"])
    needed = memory_estimate(facts, finetune, 1, False).gib
    rank = fitting_lora_r(facts, finetune, 1, False, needed - 1.0)
    assert rank is not None and rank < finetune.lora_r
    assert memory_estimate(facts, replace(finetune, lora_r=rank), 1, False).gib <= needed - 1.0
    tight = check_row(entry["name"], params, needed - 1.0).problems
    assert any(f"lower finetune.lora_r to {rank}" in line for line in tight), tight


@pytest.mark.parametrize("group", GROUPS)
def test_every_qlora_group_fits_a_day_of_one_gpu(group):
    runs, base_eval, total = budget.group_budget(planned_entries(PLAN, group, "qlora"), PARAMS)
    assert runs and 1 < total <= budget.budget_figures()["hours_per_group"], total
    assert all(run.train_hours > 0 and run.eval_hours > 0 for run in runs)


def test_the_budget_says_which_findings_it_can_resolve():
    runs, base_eval, total = budget.group_budget(planned_entries(PLAN, "main", "qlora"), PARAMS)
    lines = budget.finding_lines("main", runs)
    assert any(
        line.startswith("F2 context-synthesis - instruction-synthesis") and "paper +13.18: resolvable" in line
        for line in lines
    ), lines
    runs, _, _ = budget.group_budget(planned_entries(PLAN, "contexts", "qlora"), PARAMS)
    (f3,) = budget.finding_lines("contexts", runs)
    assert "3 seed(s)" in f3 and f3.endswith("paper +0.90: not resolvable")


def test_the_half_width_is_the_paired_formula():
    # 1.96 x sqrt(25^2 / 800 + 2 x 2^2 / 1): the documents' and the seeds' parts
    assert budget.half_width(800, 1, 25.0, 2.0) == pytest.approx(1.96 * (625 / 800 + 8) ** 0.5)
    assert budget.half_width(800, 3, 25.0, 2.0) < budget.half_width(800, 1, 25.0, 2.0)


def test_more_data_costs_more_hours():
    entry = next(e for e in planned_entries(PLAN, "main", "qlora") if e["row"] == "context-synthesis")
    figures = budget.budget_figures()
    small = budget.row_budget("a", "r", with_overrides(PARAMS, entry["overrides"]), 1, figures)
    more_general = with_overrides(PARAMS, {**entry["overrides"], "mix.general.count": 12000})
    bigger = budget.row_budget("b", "r", more_general, 1, figures)
    per_record = figures["tokens_per_record"]["HuggingFaceH4/ultrachat_200k"]
    assert bigger.epoch_tokens == small.epoch_tokens + 6000 * per_record
    assert bigger.train_hours > small.train_hours


def test_evaluate_backend_auto_is_hf_without_vllm_and_cuda():
    settings = load_settings(EvalSettings, "evaluate", {"backend": "auto"})
    assert settings.resolved().backend == "hf"
    assert load_settings(EvalSettings, "evaluate", {"backend": "hf"}).resolved().backend == "hf"


def test_the_rehearsed_student_trains_in_4_bit_and_its_adapter_loads_for_evaluation(tmp_path):
    """The qlora-rehearsal row's student and finetune settings: while training, every linear layer of the decoder is
    an nf4 Linear4bit with double quantization (uint8 storage); the saved adapter loads the way the evaluate stage's
    hf backend loads it (lm-eval's HFLM with `peft`) and changes the model's logits."""
    import bitsandbytes as bnb
    import torch
    from lm_eval.models.huggingface import HFLM
    from peft import PeftModel

    from ctxsynth.core.io import write_jsonl
    from ctxsynth.finetune.train import train
    from ctxsynth.prepare.model_convert import materialize_model

    entry = next(e for e in planned_entries(PLAN, "main", "qlora-rehearsal") if e["row"] == "context-synthesis")
    params = with_overrides(PARAMS, entry["overrides"])
    finetune = replace(
        load_settings(FinetuneSettings, "finetune", params["finetune"]), max_steps=3, grad_accum=1, save_steps=0
    )
    assert (finetune.recipe, finetune.quantization) == ("qlora", "nf4")
    model_dir = tmp_path / "model"
    materialize_model({"source": "stand_in", "stand_in": params["fetch"]["model"]["stand_in"]}, model_dir)
    messages = [
        {"role": "user", "content": "Where is the harbour?"},
        {"role": "assistant", "content": "By the bridge."},
    ]
    write_jsonl(tmp_path / "train.jsonl", [{"id": f"s{i}", "messages": messages} for i in range(6)])
    seen: dict = {}

    def inspect(trainer) -> None:
        layers = [m for m in trainer.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        seen.update(
            count=len(layers),
            types={m.weight.quant_type for m in layers},
            storage={m.weight.dtype for m in layers},
            nested={bool(m.weight.quant_state.nested) for m in layers},
        )

    train(model_dir, tmp_path / "train.jsonl", tmp_path / "adapter", None, finetune, on_trained=inspect)
    assert seen == {"count": 2 * 7, "types": {"nf4"}, "storage": {torch.uint8}, "nested": {True}}
    evaluated = HFLM(pretrained=str(model_dir), peft=str(tmp_path / "adapter"), device="cpu", dtype="float32")
    assert isinstance(evaluated.model, PeftModel)
    probe = torch.tensor([[128000, 9906, 1917]])
    with torch.no_grad():
        adapted = evaluated.model(probe).logits
        with evaluated.model.disable_adapter():
            base = evaluated.model(probe).logits
    assert not torch.allclose(adapted, base)
