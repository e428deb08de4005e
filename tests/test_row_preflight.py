"""`ctxsynth experiments preflight`: every gpu and rehearsal row passes where its inputs are present, and each defect
of the paper-scale rows, reintroduced, fails with a line naming the row and the key."""

import shutil
from pathlib import Path

import pytest
import yaml

from ctxsynth.paper.experiments import load_plan, planned_entries, preflight_group
from ctxsynth.paper.row_checks import check_row, with_overrides

ROOT = Path(__file__).resolve().parents[1]
PLAN = ROOT / "experiments" / "paper.yaml"
ROW = "gpu-main-context-synthesis"


@pytest.fixture
def project(tmp_path, monkeypatch):
    """This repository's dvc.yaml, params, inputs and launcher configs, with the paper's seed release and LongBench
    where the gpu rows expect them (the rehearsal fixtures, in the same layouts)."""
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(ROOT / "inputs", tmp_path / "inputs")
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    shutil.copytree(tmp_path / "inputs/seeds/rehearsal", tmp_path / "inputs/seeds/context_synthesis")
    shutil.copytree(tmp_path / "inputs/longbench/rehearsal", tmp_path / "inputs/longbench/LongBench")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def gpu_row(**changes):
    plan = load_plan(PLAN)
    overrides = next(e["overrides"] for e in planned_entries(plan, "main", "gpu") if e["name"] == ROW)
    params = with_overrides(yaml.safe_load((ROOT / "params.yaml").read_text()), {**overrides, **changes})
    return params


@pytest.mark.parametrize("scale", ["gpu", "rehearsal"])
def test_every_row_passes_with_its_inputs_in_place(project, scale, capsys):
    plan = load_plan(PLAN)
    for group in plan["groups"]:
        if planned_entries(plan, group, scale):
            assert preflight_group(plan, group, scale, Path("params.yaml"), 80.0) == 0, capsys.readouterr().err
    assert "ok" in capsys.readouterr().out


def test_the_gpu_row_as_planned_passes(project):
    result = check_row(ROW, gpu_row(), 80.0)
    assert result.problems == [] and result.launcher == "accelerate: DEEPSPEED x 8"
    assert any("fetch.model.revision" in w for w in result.warnings)  # unpinned: a warning, not a failure


def _fails(result, key):
    assert any(line.startswith(f"{ROW}: ") and key in line for line in result.problems), result.problems


def test_missing_longbench_fails_before_anything_runs(project):
    shutil.rmtree(project / "inputs/longbench/LongBench")
    _fails(check_row(ROW, gpu_row(), 80.0), "evaluate.longbench_dir")


def test_nothing_to_score_fails(project):
    _fails(check_row(ROW, gpu_row(**{"evaluate.longbench_dir": None}), 80.0), "nothing to score")


def test_a_window_too_short_fails(project):
    # the old pilot model: a 32K window for 65,536-token packs and a 32,768-token evaluation prompt
    params = gpu_row(**{"fetch.model.id": "togethercomputer/LLaMA-2-7B-32K", "finetune.max_tokens": 65536})
    result = check_row(ROW, with_overrides(params, {"evaluate.max_length": 32768}), 80.0)
    _fails(result, "finetune.max_tokens")
    _fails(result, "evaluate.max_length")


def test_a_base_model_without_a_named_chat_template_fails(project):
    _fails(check_row(ROW, gpu_row(**{"finetune.chat_template": "model"}), 80.0), "finetune.chat_template")


def test_full_fine_tuning_of_8b_in_one_process_fails(project):
    _fails(check_row(ROW, gpu_row(**{"finetune.launcher": "none"}), 80.0), "finetune.launcher")


def test_an_undistributed_accelerate_config_fails(project):
    _fails(check_row(ROW, gpu_row(**{"finetune.accelerate_config": "single_gpu"}), 80.0), "finetune.launcher")


def test_packed_32k_rows_through_sdpa_fail(project):
    _fails(check_row(ROW, gpu_row(**{"finetune.attn_implementation": "sdpa"}), 80.0), "attn_implementation")


def test_too_little_memory_per_device_fails(project):
    result = check_row(ROW, gpu_row(), 24.0)
    _fails(result, "GiB per device")
    assert 30 < float(result.memory) < 50  # ZeRO-3 over 8 devices, 32K tokens: docs/scaling.md works out ~37 GB


def test_an_unknown_hub_model_fails(project):
    _fails(check_row(ROW, gpu_row(**{"fetch.model.id": "someone/unknown-7b"}), 80.0), "model_facts.yaml")
