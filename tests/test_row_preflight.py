"""`ctxsynth experiments preflight`: every gpu and rehearsal row of experiments/paper.yaml parses; a hand-made row in
the paper's setting passes every check; each defect put back into it fails with one line naming the row and the key
(or, for unpinned hub revisions, warns)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from ctxsynth.core.settings import load_settings
from ctxsynth.paper import commands
from ctxsynth.paper.experiments import load_plan, planned_entries
from ctxsynth.preflight.params import SECTIONS
from ctxsynth.preflight.rows import chat_tokens, check_row, model_facts, render, shape_facts, with_overrides

ROOT = Path(__file__).resolve().parents[1]
ROW = "gpu-g-r"
# The paper's main setting, as a hand-made row that names no file (it does not follow experiments/paper.yaml).
PASSING = {
    "fetch.model.source": "hub",
    "fetch.model.id": "meta-llama/Llama-3.1-8B",
    "fetch.model.revision": "a" * 40,
    "finetune.recipe": "paper",
    "finetune.launcher": "accelerate",
    "finetune.accelerate_config": "deepspeed_zero3",
    "finetune.chat_template": "longalign",
    "evaluate.chat_template": "longalign",
    "evaluate.tasks": ["squad_long", "hotpotqa_long"],
    "evaluate.max_length": 31500,
    "mix.general.source": "HuggingFaceH4/ultrachat_200k",
    "mix.general.revision": "b" * 40,
    "synthesize.backend": "openai",
    "synthesize.response_prefix": "",  # a chat-completions API continues no prefix (the paper's protocol)
    "synthesize.openai.model": "Qwen/Qwen2.5-72B-Instruct",
}
LLAMA_8B_CONFIG = {  # config.json keys of a local LLaMA-3.1-8B-shaped model, no weights needed
    "architectures": ["LlamaForCausalLM"],
    **{key: value for key, value in model_facts()["meta-llama/Llama-3.1-8B"].items() if key != "chat_template"},
}


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A checkout's dvc.yaml (the declared inputs), params.yaml and launcher configs, in a scratch directory."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write_plan(project: Path, changes: dict) -> Path:
    plan = {"version": 1, "groups": {"g": {"overrides": {"gpu": PASSING}, "rows": {"r": {"gpu": changes}}}}}
    path = project / "plan.yaml"
    path.write_text(yaml.safe_dump(plan), encoding="utf-8")
    return path


def check(project: Path, changes: dict | None = None, gpu_memory_gib: float = 80.0, gpus: int | None = None):
    (entry,) = planned_entries(load_plan(write_plan(project, changes or {})), "g", "gpu")
    params = with_overrides(yaml.safe_load((project / "params.yaml").read_text()), entry["overrides"])
    return check_row(entry["name"], params, gpu_memory_gib, gpus)


def fails(result, key: str, *words: str) -> None:
    lines = [line for line in result.problems if line.startswith(f"{ROW}: {key}: ")]
    assert any(all(word in line for word in words) for line in lines), result.problems


def local_model(project: Path, name: str, **config) -> dict:
    directory = project / "inputs" / "models" / name
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps({**LLAMA_8B_CONFIG, **config}), encoding="utf-8")
    return {"fetch.model.source": "path", "fetch.model.path": f"inputs/models/{name}"}


@pytest.mark.parametrize("scale", ["gpu", "rehearsal", "qlora", "qlora-rehearsal"])
def test_every_row_of_the_plan_parses(tmp_path, scale):
    plan, params = load_plan(ROOT / "experiments/paper.yaml"), yaml.safe_load((ROOT / "params.yaml").read_text())
    entries = [entry for group in plan["groups"] for entry in planned_entries(plan, group, scale)]
    assert entries
    for entry in entries:
        path = tmp_path / f"{entry['name']}.yaml"
        path.write_text(yaml.safe_dump(with_overrides(params, entry["overrides"])), encoding="utf-8")
        for section, cls in SECTIONS.items():
            load_settings(cls, section, source=path)  # an InputError names the row's bad key


def test_the_hand_made_row_passes_every_check(project):
    result = check(project)
    assert result.problems == [] and result.warnings == [] and result.verdict == "ok"
    assert result.window == "32,768 / 131,072" and result.chat == "longalign"
    assert result.launcher == "accelerate: deepspeed_zero3 (DEEPSPEED x 8)"


def test_a_bad_setting_fails_naming_its_key(project):
    result = check(project, {"finetune.lerning_rate": 0.1})
    fails(result, "finetune.lerning_rate", "did you mean 'learning_rate'")
    assert result.inputs == "settings invalid" and result.verdict == "FAIL (1)"


def test_a_missing_input_fails(project):
    source = [{"type": "paper", "path": "inputs/seeds/context_synthesis", "tasks": None, "count": 2}]
    fails(check(project, {"seed.sources": source}), "seed.sources[0].path", "does not exist")


def test_nothing_to_score_fails(project):
    fails(check(project, {"evaluate.tasks": [], "evaluate.longbench_dir": None}), "evaluate.tasks", "nothing to score")


def test_a_longbench_copy_without_its_task_files_fails(project):
    (project / "inputs/longbench/LongBench/data").mkdir(parents=True)
    (project / "inputs/longbench/LongBench/data/narrativeqa.jsonl").write_text("{}\n", encoding="utf-8")
    result = check(project, {"evaluate.tasks": [], "evaluate.longbench_dir": "inputs/longbench/LongBench"})
    fails(result, "evaluate.longbench_tasks[1]", "qasper.jsonl")


def test_a_window_too_short_fails(project):
    result = check(project, {**local_model(project, "short", max_position_embeddings=16384)})
    fails(result, "evaluate.max_length", "31,500 prompt tokens", "inputs/models/short has 16,384")
    fails(result, "finetune.max_tokens", "32,768 tokens per row")


def test_the_window_counts_chat_template_margin_and_generation_budget(project):
    # gov_report generates up to 512 tokens; the evaluate stage adds the chat template and 8 tokens of margin
    fits = 131072 - chat_tokens("longalign", None) - 8 - 512
    (project / "inputs/longbench/LongBench/data").mkdir(parents=True)
    (project / "inputs/longbench/LongBench/data/gov_report.jsonl").write_text("{}\n", encoding="utf-8")
    longbench = {"evaluate.longbench_dir": "inputs/longbench/LongBench", "evaluate.longbench_tasks": ["gov_report"]}
    assert check(project, {**longbench, "evaluate.max_length": fits}).problems == []
    fails(check(project, {**longbench, "evaluate.max_length": fits + 1}), "evaluate.max_length", "(512)")


def test_the_chat_template_bound_holds_for_a_byte_level_tokenizer(tiny_model_dir):
    # without a tokenizer (hub models) the template's characters bound its tokens; a byte tokenizer is the worst case
    assert 1 < chat_tokens("longalign", tiny_model_dir) <= chat_tokens("longalign", None)


def test_an_unknown_hub_model_fails(project):
    fails(check(project, {"fetch.model.id": "someone/unknown-7b"}), "fetch.model.id", "model_facts.yaml")


def test_a_base_model_without_a_named_chat_template_fails(project):
    result = check(project, {"finetune.chat_template": "model", "evaluate.chat_template": "model"})
    fails(result, "finetune.chat_template", "ships no chat template")
    fails(result, "evaluate.chat_template", "ships no chat template")


def test_training_and_evaluation_templates_must_agree(project):
    fails(check(project, {"evaluate.chat_template": "model"}), "evaluate.chat_template", "another format")


def test_an_unknown_chat_template_fails(project):
    result = check(project, {"finetune.chat_template": "vicuna", "evaluate.chat_template": "vicuna"})
    fails(result, "finetune.chat_template", "unknown chat template 'vicuna'")


def test_full_fine_tuning_of_8b_in_one_process_fails(project):
    fails(check(project, {"finetune.launcher": "none"}), "finetune.launcher", "8.0B parameters in one process")
    qlora = {"finetune.recipe": "qlora", "finetune.attn_implementation": "flash_attention_2"}
    assert check(project, {**qlora, "finetune.launcher": "none"}).problems == []  # LoRA in one process: fine


def test_an_undistributed_accelerate_config_fails(project):
    fails(check(project, {"finetune.accelerate_config": "single_gpu"}), "finetune.accelerate_config", "8.0B")
    (project / "mine.yaml").write_text("distributed_type: 'NO'\nnum_processes: 1\n", encoding="utf-8")
    fails(check(project, {"finetune.accelerate_config": "mine.yaml"}), "finetune.accelerate_config", "8.0B")
    (project / "mine.yaml").write_text("distributed_type: FSDP\nnum_processes: 8\n", encoding="utf-8")
    assert check(project, {"finetune.accelerate_config": "mine.yaml"}).problems == []


def test_more_processes_than_gpus_fails(project):
    fails(check(project, gpus=4), "finetune.accelerate_config", "8 processes", "has 4 (--gpus)")
    assert check(project, gpus=8).problems == []


def test_memory_per_device_is_estimated_and_checked(project):
    # ctxsynth/preflight/memory.py, docs/scaling.md: full fine-tuning of LLaMA-3.1-8B under ZeRO-3 on 8 GPUs at 32K
    # tokens per row is ~77 GiB, most of it the logits of the answer positions (every assistant turn is trained)
    full = check(project)
    assert 65 < float(full.memory.split(" / ")[0]) < 78 and full.problems == []
    qlora = check(project, {"finetune.recipe": "qlora", "finetune.launcher": "none"})
    assert 60 < float(qlora.memory.split(" / ")[0]) < 72  # on one GPU
    fails(check(project, gpu_memory_gib=24), "finetune.max_tokens", "GiB per device", "exceeds 24 GiB")
    # 48 GB cards: the 32K rows fail, naming the key, the terms and the remedy that would fit
    at_48 = check(project, gpu_memory_gib=48)
    fails(at_48, "finetune.max_tokens", "exceeds 48 GiB", "logits", "checkpoints", "recomputed layer")
    fails(at_48, "finetune.max_tokens", "lower finetune.max_tokens to 15,360")
    # where moving the optimizer to CPU memory is enough, the preflight offers LongAlign's offload config
    fails(
        check(project, gpu_memory_gib=72), "finetune.max_tokens", "finetune.accelerate_config: deepspeed_zero3_offload"
    )
    offloaded = check(project, {"finetune.accelerate_config": "deepspeed_zero3_offload"}, gpu_memory_gib=72)
    assert (
        offloaded.problems == [] and float(offloaded.memory.split(" / ")[0]) < float(full.memory.split(" / ")[0]) - 10
    )
    # data parallel keeps a whole model and its Adam states per GPU: 16 bytes x 8B parameters
    fails(check(project, {"finetune.accelerate_config": "multi_gpu_ddp"}), "finetune.max_tokens", "not sharded")
    # a full fine-tuning checkpoint of 8B: optimizer shards and bf16 weights, 14 B per parameter
    assert 110 < float(full.disk) < 115 and float(qlora.disk) < 3
    assert float(full.eval_hours) < 0.1  # 16 test documents


def test_evaluation_hours_of_longbench_at_32k():
    """One pass over LongBench's 8 x 200 documents at 31.5K tokens on one GPU: hours, not minutes."""
    from types import SimpleNamespace

    from ctxsynth.evaluate.settings import PAPER_TASKS
    from ctxsynth.preflight.eval_cost import evaluation_hours
    from ctxsynth.prepare.settings import BenchmarkSettings

    facts = shape_facts(model_facts()["meta-llama/Llama-3.1-8B"])
    evaluate = SimpleNamespace(max_length=31500, limit=None)
    hours = evaluation_hours(facts, evaluate, BenchmarkSettings(), list(PAPER_TASKS))
    assert 1.0 < hours < 2.5
    limited = evaluation_hours(
        facts, SimpleNamespace(max_length=31500, limit=20), BenchmarkSettings(), list(PAPER_TASKS)
    )
    assert abs(limited - hours / 10) < 1e-9


def test_packed_32k_rows_through_sdpa_fail(project):
    fails(check(project, {"finetune.attn_implementation": "sdpa"}), "finetune.attn_implementation", "32,768-square")


def test_a_generator_window_too_short_fails(project):
    result = check(project, {"synthesize.sampling.max_new_tokens": 32768})
    fails(result, "synthesize.sampling.max_new_tokens", "Qwen/Qwen2.5-72B-Instruct has 32,768")
    warned = check(project, {"synthesize.openai.model": "THUDM/LongWriter-llama3.1-8b"})
    assert warned.problems == [] and any("--chat-template" in line for line in warned.warnings)


def test_unpinned_hub_revisions_warn_without_failing(project):
    result = check(project, {"fetch.model.revision": "main", "mix.general.revision": None})
    assert result.problems == [] and result.verdict == "ok, 2 warning(s)"
    keys = [line.split(": ")[2].split()[0] for line in result.warnings]
    assert keys == ["fetch.model.revision", "mix.general.revision"]


def test_unpinned_prior_long_data_and_release_warn_and_pinned_ones_do_not(project):
    prior_long = {"mix.variant": "prior_long", "mix.long_source.format": "longalign"}
    unpinned = check(project, {**prior_long, "mix.long_source.source": "THUDM/LongAlign-10k"})
    assert unpinned.problems == [] and unpinned.verdict == "ok, 1 warning(s)", unpinned.warnings
    assert "mix.long_source.revision" in unpinned.warnings[0] and "THUDM/LongAlign-10k" in unpinned.warnings[0]
    pinned = {**prior_long, "mix.long_source.source": "THUDM/LongAlign-10k", "mix.long_source.revision": "c" * 40}
    assert check(project, pinned).warnings == []
    release = check(project, {"synthesize.backend": "released"})
    assert [line.split(": ")[2].split()[0] for line in release.warnings] == ["synthesize.released.revision"]
    assert check(project, {"synthesize.backend": "released", "synthesize.released.revision": "d" * 40}).warnings == []


def test_model_facts_parameter_counts_match_their_shapes():
    for model, facts in model_facts().items():
        computed = shape_facts({**facts, "parameters": None})["parameters"]
        assert abs(computed - facts["parameters"]) / facts["parameters"] < 0.001, model


def test_the_command_prints_a_table_and_one_line_per_problem(project, capsys):
    plan = write_plan(project, {"finetune.launcher": "none"})
    argv = ["preflight", "g", "--scale", "gpu", "--plan", str(plan), "--gpus", "8"]
    assert commands.main(argv) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[2].startswith(f"{ROW} ") and "FAIL (2)" in out
    assert err.splitlines()[0] == (
        f"{ROW}: finetune.launcher: full fine-tuning of 8.0B parameters in one process; set finetune.launcher: "
        "accelerate with a distributed accelerate_config (deepspeed_zero3, fsdp, or a .yaml whose distributed_type "
        "is DEEPSPEED, FSDP, MULTI_CPU, MULTI_GPU)"
    )
    assert err.splitlines()[1].startswith(
        f"{ROW}: finetune.max_tokens: about 178.4 GiB per device"
    )  # 16 B x 8B + activations
    write_plan(project, {})
    assert commands.main(argv) == 0 and "| ok" in capsys.readouterr().out


def test_on_a_terminal_the_table_is_rich(project):
    styled = render([check(project)], styled=True)
    assert ROW in styled and "━" in styled and "| ok" not in styled
