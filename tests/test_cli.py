"""The `ctxsynth` command: its subcommands, and preflight listing every bad setting and untracked input at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def ctxsynth(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ctxsynth.cli", *args], cwd=cwd, capture_output=True, text=True)


def test_usage_and_unknown_command():
    assert ctxsynth("--help").returncode == 0
    result = ctxsynth("train")
    assert result.returncode == 2 and "unknown command 'train'" in result.stderr
    for name in ("preflight", "experiments", "report"):
        assert name in ctxsynth("--help").stdout


def test_experiments_list_runs_through_the_command():
    result = ctxsynth("experiments", "list")
    assert result.returncode == 0, result.stderr
    assert "main" in result.stdout and "pilot" in result.stdout


def test_the_shipped_params_pass_preflight():
    result = ctxsynth("preflight")
    assert result.returncode == 0, result.stderr
    assert "params.yaml is valid" in result.stdout


def project_copy(tmp_path: Path) -> Path:
    """dvc.yaml, params.yaml and inputs/ of this repository: what preflight reads."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copytree(ROOT / "inputs", tmp_path / "inputs")
    return tmp_path


def test_preflight_lists_every_problem_in_one_line_each(tmp_path):
    project = project_copy(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["lengths"]["bins"] = 10  # unknown key
    params["evaluate"]["batch_size"] = "one"  # wrong type
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert all(line.startswith("error: params.yaml") for line in lines)
    assert "lengths.bins" in lines[0] and "evaluate.batch_size" in lines[1]


def test_preflight_refuses_named_files_that_dvc_would_not_see(tmp_path):
    project = project_copy(tmp_path)
    (project / "my_seeds.jsonl").write_text('{"instruction": "q?", "answer": "a"}\n', encoding="utf-8")
    (project / "inputs" / "seeds" / "ok.jsonl").write_text('{"instruction": "q?", "answer": "a"}\n', encoding="utf-8")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["seed"]["sources"] = [
        {"type": "jsonl", "path": "inputs/seeds/ok.jsonl", "task": "hotpotqa_long"},
        {"type": "jsonl", "path": "my_seeds.jsonl", "task": "hotpotqa_long"},
    ]
    params["evaluate"]["longbench_dir"] = "inputs/longbench/missing"
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    lines = result.stderr.splitlines()
    assert result.returncode == 2 and len(lines) == 2, result.stderr
    assert "seed.sources[1].path" in lines[0] and "inputs/seeds" in lines[0] and "dvc repro" in lines[0]
    assert "evaluate.longbench_dir" in lines[1] and "is not a directory" in lines[1]


def test_preflight_warns_about_mismatched_chat_formats_and_unpinned_hub_models(tmp_path):
    project = project_copy(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["finetune"]["chat_template"] = "longalign"
    params["fetch"]["model"].update(source="hub", id="meta-llama/Llama-3.1-8B", revision="main")
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    assert result.returncode == 0, result.stderr  # warnings, not errors
    warnings = result.stderr.splitlines()
    assert len(warnings) == 2 and all(line.startswith("warning: ") for line in warnings)
    assert "evaluate.chat_template" in warnings[0] and "fetch.model.revision is 'main'" in warnings[1]
    params["fetch"]["model"]["revision"] = "0" * 40
    params["evaluate"]["chat_template"] = "longalign"
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    assert ctxsynth("preflight", cwd=project).stderr == ""


def test_the_preflight_stage_stops_a_row_before_anything_expensive(tmp_path):
    """In dvc.yaml, every stage runs after the preflight stage (it depends on its own verdict there); a row naming
    a LongBench copy that is not there fails that stage, with its key, and writes no report."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    for name, stage in stages.items():
        if name != "preflight":
            assert f"data/preflight/{name}.json" in stage["deps"], name
    project = project_copy(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["evaluate"].update(longbench_dir="inputs/longbench/LongBench", tasks=[])
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "preflight.py")], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 2 and "evaluate.longbench_dir" in done.stderr, done.stderr
    assert not (project / "metrics" / "preflight.json").exists()
    params["evaluate"].update(longbench_dir=None, tasks=["squad_long"])
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "preflight.py")], cwd=project, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert json.loads((project / "metrics" / "preflight.json").read_text())["sections"] == 9
    verdicts = sorted(path.stem for path in (project / "data" / "preflight").glob("*.json"))
    assert verdicts == sorted(name for name in stages if name != "preflight")


def test_preflight_accepts_a_named_file_that_an_earlier_stage_builds(tmp_path):
    """A queued experiment starts from an empty workspace: data/general/train.jsonl (the `general` stage's output)
    is not there yet when preflight runs, and must not stop the row; a missing file nothing builds still does."""
    project = project_copy(tmp_path)
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["mix"]["general"]["source"] = "data/general/train.jsonl"
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    assert result.returncode == 0, result.stderr
    params["mix"]["general"]["source"] = "inputs/general/missing.jsonl"
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    assert result.returncode == 2 and "mix.general.source" in result.stderr and "does not exist" in result.stderr


def test_preflight_reads_a_named_model_directory_config(tmp_path):
    """A model directory a parameter names is read as the stage will read it: a broken config.json is one line
    naming the file, before any stage runs."""
    project = project_copy(tmp_path)
    model = project / "inputs" / "models" / "mine"
    model.mkdir(parents=True)
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,\n', encoding="utf-8")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["fetch"]["model"].update(source="path", path="inputs/models/mine")
    (project / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: inputs/models/mine/config.json, line 2: malformed JSON"), result.stderr
    (model / "config.json").write_text('{"hidden_size": 64}\n', encoding="utf-8")
    result = ctxsynth("preflight", cwd=project)
    assert "field 'fetch.model.path': no model_type" in result.stderr and result.returncode == 2
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 64}\n', encoding="utf-8")
    assert ctxsynth("preflight", cwd=project).returncode == 0
