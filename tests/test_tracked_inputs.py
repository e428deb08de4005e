"""Files that a parameter names are dependencies of the stage that reads them (issue 12, item 1).

(a) Each stage's library code refuses, before any work, a path that lies outside the stage's declared deps in the
    dvc.yaml of the working directory, naming the params key; a path under inputs/<kind> passes.
(b) The issue's scenario with real DVC: a pipeline whose stages declare exactly the inputs/<kind> deps of the
    repository's dvc.yaml; editing a file under inputs/<kind> makes `dvc status` report exactly the stages that read
    that kind (before the fix, `dvc status` said "Data and pipelines are up to date" after a seed file was edited).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import write_jsonl

from ctxsynth.core.io import InputError
from ctxsynth.core.settings import load_settings
from ctxsynth.evaluate.run import find_sources
from ctxsynth.evaluate.settings import EvalSettings
from ctxsynth.mix.general_source import load_general
from ctxsynth.mix.run import build_mix
from ctxsynth.mix.settings import MixSettings
from ctxsynth.prepare.model_convert import materialize_model, require_model_path
from ctxsynth.prepare.seeds import select_seeds
from ctxsynth.prepare.settings import ModelSource
from ctxsynth.synthesis.run import run_synthesis
from ctxsynth.synthesis.settings import SynthesizeSettings

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("seeds", "models", "general", "longbench", "released", "long_sft")
# Which stages read each kind of params-named input (inputs/README.md): what `dvc status` must report.
READERS = {
    "seeds": {"seed"},
    "models": {"fetch_model", "synthesize"},
    "general": {"mix"},
    "longbench": {"evaluate"},
    "released": {"synthesize"},
    "long_sft": {"mix"},
}
EMPTY_RESERVED = {"ids": [], "questions": [], "paragraphs": []}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def real_pipeline() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


@pytest.fixture
def pipeline_dir(tmp_path, monkeypatch):
    """A working directory like the repository's: its dvc.yaml, empty inputs/<kind> dirs, and files outside them."""
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    for kind in KINDS:
        (tmp_path / "inputs" / kind).mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_untracked(error: pytest.ExceptionInfo, key: str, where: str) -> None:
    assert (error.value.path, error.value.field) == ("params.yaml", key)
    assert "is not a dependency of stage" in str(error.value) and where in str(error.value)


def seed_rows(count: int = 3) -> list[dict]:
    return [{"instruction": f"Question {i}?", "answer": f"answer {i}", "task": "hotpotqa"} for i in range(count)]


def test_seed_source_paths_must_be_under_inputs_seeds(pipeline_dir):
    write_jsonl(pipeline_dir / "elsewhere" / "my_seeds.jsonl", seed_rows())
    # Checked before any source is read: the squad source's raw file does not even exist.
    sources = [
        {"type": "squad", "task": "squad_long", "count": 2},
        {"type": "jsonl", "path": "elsewhere/my_seeds.jsonl", "task": "hotpotqa"},
    ]
    with pytest.raises(InputError) as error:
        select_seeds(sources, pipeline_dir / "no-raw", EMPTY_RESERVED, seed=0)
    assert_untracked(error, "seed.sources[1].path", "inputs/seeds")

    paper = pipeline_dir / "elsewhere" / "paper"
    write_jsonl(paper / "seed_instruction" / "hotpotqa.jsonl", seed_rows())
    with pytest.raises(InputError) as error:
        select_seeds([{"type": "paper", "path": "elsewhere/paper"}], pipeline_dir, EMPTY_RESERVED, seed=0)
    assert_untracked(error, "seed.sources[0].path", "inputs/seeds")

    shutil.move(pipeline_dir / "elsewhere" / "my_seeds.jsonl", pipeline_dir / "inputs" / "seeds" / "my_seeds.jsonl")
    shutil.move(paper, pipeline_dir / "inputs" / "seeds" / "paper")
    seeds, _ = select_seeds(
        [
            {"type": "jsonl", "path": "inputs/seeds/my_seeds.jsonl", "task": "hotpotqa"},
            {"type": "paper", "path": "inputs/seeds/paper", "tasks": ["hotpotqa"]},
        ],
        pipeline_dir,
        EMPTY_RESERVED,
        seed=0,
    )
    assert len(seeds) == 6


def test_the_seed_stage_stops_with_one_line_naming_the_key(pipeline_dir):
    write_jsonl(pipeline_dir / "elsewhere" / "my_seeds.jsonl", seed_rows())
    source = {"type": "jsonl", "path": "elsewhere/my_seeds.jsonl", "task": "hotpotqa"}
    (pipeline_dir / "params.yaml").write_text(yaml.safe_dump({"seed": {"sources": [source]}}), encoding="utf-8")
    (pipeline_dir / "data" / "benchmark").mkdir(parents=True)
    (pipeline_dir / "data" / "benchmark" / "reserved.json").write_text(json.dumps(EMPTY_RESERVED))
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / "seed.py")], cwd=pipeline_dir, capture_output=True, text=True
    )
    assert result.returncode == 2 and not (pipeline_dir / "data" / "seed").exists()
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: params.yaml, field 'seed.sources[0].path': 'elsewhere/my_seeds.jsonl' is not a")


def test_fetch_model_path_must_be_under_inputs_models(pipeline_dir):
    (pipeline_dir / "elsewhere" / "model").mkdir()
    with pytest.raises(InputError) as error:
        materialize_model({"source": "path", "path": "elsewhere/model"}, pipeline_dir / "data" / "model")
    assert_untracked(error, "fetch.model.path", "inputs/models")
    assert not (pipeline_dir / "data").exists()  # refused before anything was written
    (pipeline_dir / "inputs" / "models" / "model").mkdir()
    assert require_model_path(ModelSource(source="path", path="inputs/models/model")) == Path("inputs/models/model")


@pytest.mark.parametrize("key", ["synthesize.generator", "synthesize.verify.judge_model"])
def test_synthesize_model_dirs_must_be_under_inputs_models(pipeline_dir, key):
    (pipeline_dir / "elsewhere" / "model").mkdir()
    (pipeline_dir / "data" / "model").mkdir(parents=True)  # the base model (a pipeline output, tracked as data/model)
    params = (
        {"generator": "elsewhere/model"}
        if key == "synthesize.generator"
        else {"verify": {"answerability": True, "judge_model": "elsewhere/model"}}
    )
    settings = load_settings(SynthesizeSettings, "synthesize", params)
    # Refused before the backend is built: data/model holds no model, loading it would fail differently.
    with pytest.raises(InputError) as error:
        run_synthesis([], pipeline_dir / "data" / "model", settings)
    assert_untracked(error, key, "inputs/models")


def test_mix_general_source_must_be_under_inputs_general_or_data_general(pipeline_dir):
    write_jsonl(pipeline_dir / "elsewhere" / "chat.jsonl", [CHAT])
    settings = load_settings(MixSettings, "mix", {"variant": "none", "general": {"source": "elsewhere/chat.jsonl"}})
    missing = pipeline_dir / "missing"
    with pytest.raises(InputError) as error:
        build_mix(settings, raw_dir=missing, reserved_path=missing, seeds_dir=missing, contexts_path=missing)
    assert_untracked(error, "mix.general.source", "inputs/general")
    for path in ("inputs/general/chat.jsonl", "data/general/train.jsonl"):  # the general stage's output is a dep
        write_jsonl(pipeline_dir / path, [CHAT])
        samples, report = load_general({"source": path}, long_samples=0, seed=0)
        assert len(samples) == 1 and report["source"] == path


def test_evaluate_longbench_dir_must_be_under_inputs_longbench(pipeline_dir):
    for root in ("elsewhere/LongBench", "inputs/longbench/LongBench"):
        write_jsonl(pipeline_dir / root / "data" / "hotpotqa.jsonl", [{}])
    settings = EvalSettings(tasks=[], longbench_dir="elsewhere/LongBench", longbench_tasks=["hotpotqa"])
    with pytest.raises(InputError) as error:
        find_sources(pipeline_dir / "data" / "benchmark", settings)
    assert_untracked(error, "evaluate.longbench_dir", "inputs/longbench")
    settings = EvalSettings(tasks=[], longbench_dir="inputs/longbench/LongBench", longbench_tasks=["hotpotqa"])
    assert find_sources(pipeline_dir / "data" / "benchmark", settings) == [
        ("hotpotqa", Path("inputs/longbench/LongBench/data/hotpotqa.jsonl"))
    ]


def test_every_params_named_input_kind_is_a_dep_of_its_readers():
    """The repository's dvc.yaml declares inputs/<kind> for exactly the stages that read that kind."""
    stages = real_pipeline()
    declared = {
        kind: {name for name, stage in stages.items() if f"inputs/{kind}" in stage.get("deps", [])} for kind in KINDS
    }
    assert declared == READERS


# --------------------------------------------------------------------------------------------- real DVC, end to end


def dvc(workdir: Path, *args: str) -> str:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=workdir, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def changed_deps(workdir: Path) -> dict[str, set[str]]:
    """{stage: the deps `dvc status` reports changed}."""
    status = json.loads(dvc(workdir, "status", "--json") or "{}")
    changed: dict[str, set[str]] = {}
    for stage, entries in status.items():
        for entry in entries:
            if isinstance(entry, dict):
                changed.setdefault(stage, set()).update(entry.get("changed deps", {}))
    return changed


def test_dvc_status_sees_an_edited_input_file_and_names_the_stages_that_read_it(tmp_path):
    """The issue's scenario: a user's own seed file under inputs/seeds, edited after `dvc repro`. Each stage of the
    test pipeline has exactly the inputs/<kind> deps the repository's dvc.yaml declares for it."""
    pytest.importorskip("dvc")
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    stages = {}
    for name, stage in real_pipeline().items():
        inputs = [dep for dep in stage.get("deps", []) if str(dep).startswith("inputs/")]
        if inputs:
            stages[name] = {"cmd": f"echo {name} > {name}.out", "deps": inputs, "outs": [f"{name}.out"]}
    assert set(stages) == set().union(*READERS.values())
    files = {
        "seeds": tmp_path / "inputs" / "seeds" / "my_seeds.jsonl",
        "models": tmp_path / "inputs" / "models" / "my-model" / "config.json",
        "general": tmp_path / "inputs" / "general" / "chat.jsonl",
        "longbench": tmp_path / "inputs" / "longbench" / "data" / "hotpotqa.jsonl",
        "released": tmp_path / "inputs" / "released" / "mine" / "context-synthesis.jsonl",
        "long_sft": tmp_path / "inputs" / "long_sft" / "LongAlign-10k" / "long.jsonl",
    }
    write_jsonl(files["seeds"], seed_rows(5))
    write_jsonl(files["models"], [{"model_type": "llama"}])
    write_jsonl(files["general"], [CHAT])
    write_jsonl(files["longbench"], [{"_id": "a", "input": "q", "context": "c", "answers": ["a"]}])
    write_jsonl(files["released"], [{"synthesis_task": "hotpotqa", "instruction": "q", "answer": "a"}])
    write_jsonl(files["long_sft"], [CHAT])
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}), encoding="utf-8")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    dvc(tmp_path, "init", "-q")
    dvc(tmp_path, "repro", "-q")
    assert changed_deps(tmp_path) == {}

    # The issue: a sixth line appended to the user's seed file; only the seed stage must rerun.
    with files["seeds"].open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(seed_rows(6)[-1]) + "\n")
    assert changed_deps(tmp_path) == {"seed": {"inputs/seeds"}}

    # Every other kind edited at once: each changed dep is reported for exactly the stages that read it.
    for kind in ("models", "general", "longbench", "released", "long_sft"):
        with files[kind].open("a", encoding="utf-8") as handle:
            handle.write("{}\n")
    changed = changed_deps(tmp_path)
    for kind in KINDS:
        assert {stage for stage, deps in changed.items() if f"inputs/{kind}" in deps} == READERS[kind], kind


def test_a_link_inside_a_dependency_to_a_file_outside_is_named_as_a_link(tmp_path, monkeypatch):
    """A symlink under inputs/seeds passes the path check but DVC hashes the link's target's content only through the
    link; a file outside the deps that it points to is named as the link it is, with what to do."""
    from ctxsynth.core.dvc_deps import require_tracked

    (tmp_path / "dvc.yaml").write_text("stages:\n  seed:\n    cmd: x\n    deps: [inputs/seeds]\n")
    outside = write_jsonl(tmp_path / "elsewhere" / "mine.jsonl", [{"instruction": "q", "answer": "a"}])
    (tmp_path / "inputs" / "seeds").mkdir(parents=True)
    (tmp_path / "inputs" / "seeds" / "mine.jsonl").symlink_to(outside)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as error:
        require_tracked("inputs/seeds/mine.jsonl", "seed", "seed.sources[0].path", pipeline=tmp_path / "dvc.yaml")
    assert "is a link to" in str(error.value) and "copy the file itself there" in str(error.value)
    assert "move it under" not in str(error.value)
