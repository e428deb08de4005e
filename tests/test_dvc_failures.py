"""Bad settings and bad files under a real `dvc repro`, in a copy of this checkout: the failure is one `error:` line
from the stage that found it, and every output built before is there afterwards, byte for byte, whether DVC ran the
preflight first (`dvc repro seed`) or the stage alone (`dvc repro -s seed`, where DVC removes the stage's outputs
before running it and the stage puts them back). A mix-only change leaves the other stages' preflight verdicts, and
so those stages, untouched; an unchanged checkout is up to date."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fixtures import ESSAYS, make_hotpot, make_squad
from helpers import ROOT, write_jsonl

SEEDS_FILE = "inputs/seeds/mine/seeds.jsonl"
BUILT = ("data/preflight", "data/benchmark", "data/seed", "metrics/seed.json", "metrics/preflight.json")


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    # The stages' interpreter is named, not found on PATH: stages/python takes $CTXSYNTH_PYTHON first.
    env = {**os.environ, "CTXSYNTH_PYTHON": sys.executable, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True)


def snapshot(project: Path) -> dict[str, str]:
    files = {}
    for name in BUILT:
        path = project / name
        for file in sorted([path] if path.is_file() else path.rglob("*")):
            if file.is_file():
                files[str(file.relative_to(project))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return files


def small_params() -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["benchmark"].update(
        {"squad_long": {"count": 2, "target_words": 80}, "hotpotqa_long": {"count": 2, "target_words": 80}}
    )
    params["benchmark"]["niah"].update({"lengths": [60], "depths": [0.0]})
    params["seed"]["sources"] = [
        {"type": "squad", "task": "squad_long", "count": 3},
        {"type": "jsonl", "path": SEEDS_FILE, "task": "hotpotqa_long", "count": None},
    ]
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """This checkout's tracked files in a new git + DVC repository, its registry data replaced by small fixtures
    (committed as fetch_data's output), and the pipeline built up to the seed stage."""
    project = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True)
    for name in tracked.stdout.splitlines():
        source = ROOT / name
        if source.is_file() and not name.startswith(("data/", "metrics/", "tests/")) and name != "dvc.lock":
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, project / name)
    (project / "params.yaml").write_text(yaml.safe_dump(small_params(), sort_keys=False), encoding="utf-8")
    write_jsonl(project / SEEDS_FILE, [{"instruction": f"Question {i}?", "answer": f"answer {i}"} for i in range(4)])
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    raw = project / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "squad.json").write_text(json.dumps(make_squad(articles=5)))
    (raw / "hotpotqa.json").write_text(json.dumps(make_hotpot(14)))
    (raw / "PaulGrahamEssays.json").write_text(json.dumps({"text": ESSAYS}))
    for args in (("repro", "preflight"), ("commit", "-f", "fetch_data"), ("repro", "seed")):
        done = dvc(project, *args)
        assert done.returncode == 0, done.stderr[-3000:]
    return project


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error: ")]


def with_params(project: Path, change) -> str:
    """Apply `change` to the params mapping; return the file's previous text (to put back)."""
    path = project / "params.yaml"
    before = path.read_text(encoding="utf-8")
    params = yaml.safe_load(before)
    change(params)
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return before


def openai_with_prefix(params: dict) -> None:
    params["synthesize"]["backend"] = "openai"  # the default response_prefix "Context:" cannot go to a chat API


def unknown_section(params: dict) -> None:
    params["mixx"] = {"variant": "none"}


BAD_SETTINGS = {"backend and setting mismatch": openai_with_prefix, "unknown section": unknown_section}


@pytest.mark.parametrize("single", [False, True], ids=["repro", "repro -s"])
def test_bad_file_contents_cost_no_output(project, single):
    before, seeds = snapshot(project), project / SEEDS_FILE
    good = seeds.read_text(encoding="utf-8")
    seeds.write_text(good + '{"instruction": "Question 9?", "answer": \n', encoding="utf-8")
    try:
        result = dvc(project, "repro", *(["-s"] if single else []), "seed")
    finally:
        seeds.write_text(good, encoding="utf-8")
    assert result.returncode != 0 and "exited with 2" in result.stderr
    (line,) = error_lines(result)
    assert line.startswith(f"error: {SEEDS_FILE}, line 5: malformed JSON (cut off"), line
    assert snapshot(project) == before


@pytest.mark.parametrize("name", BAD_SETTINGS)
def test_a_bad_setting_stops_at_the_preflight_with_one_line(project, name):
    before = snapshot(project)
    previous = with_params(project, BAD_SETTINGS[name])
    try:
        result = dvc(project, "repro", "seed")
    finally:
        (project / "params.yaml").write_text(previous, encoding="utf-8")
    assert result.returncode != 0 and "failed to reproduce 'preflight'" in result.stderr
    assert len(error_lines(result)) == 1, result.stderr
    assert snapshot(project) == before


def test_a_stage_run_alone_refuses_an_unknown_section_and_keeps_its_outputs(project):
    """`dvc repro -s` skips the preflight: the stage itself names the unknown section, and puts its outputs back."""
    before = snapshot(project)

    def change(params: dict) -> None:
        unknown_section(params)
        params["seed"]["seed"] += 1  # so that DVC runs the stage at all

    previous = with_params(project, change)
    try:
        result = dvc(project, "repro", "-s", "seed")
    finally:
        (project / "params.yaml").write_text(previous, encoding="utf-8")
    assert result.returncode != 0 and "failed to reproduce 'seed'" in result.stderr
    (line,) = error_lines(result)
    assert "field 'mixx': unknown section (did you mean 'mix'?" in line
    assert snapshot(project) == before


BROKEN_YAML = {"syntax": "seed: {seed: 1\n", "duplicate": "seed: {seed: 1}\nseed: {seed: 2}\n"}


@pytest.mark.parametrize("text", BROKEN_YAML.values(), ids=BROKEN_YAML.keys())
def test_broken_params_yaml_runs_nothing(project, text):
    before = snapshot(project)
    path = project / "params.yaml"
    previous = path.read_text(encoding="utf-8")
    path.write_text(previous + text, encoding="utf-8")
    try:
        for args in (("repro", "seed"), ("repro", "-s", "seed")):
            assert dvc(project, *args).returncode != 0
    finally:
        path.write_text(previous, encoding="utf-8")
    assert snapshot(project) == before


def test_an_unchanged_checkout_is_up_to_date_and_a_mix_change_touches_mix_only(project):
    """The preflight is not always-changed: built stages stay up to date; a mix-only change that names one more
    file changes the mix verdict alone, so no other stage reruns because the preflight did."""
    assert dvc(project, "status", "-q", "--with-deps", "seed").returncode == 0, dvc(project, "status").stdout
    verdicts = {path.name: path.read_bytes() for path in (project / "data" / "preflight").iterdir()}
    general = "data/general/train.jsonl"  # built by the general stage later in the same repro
    previous = with_params(project, lambda params: params["mix"]["general"].update({"source": general}))
    try:
        assert dvc(project, "repro", "preflight").returncode == 0
        after = {path.name: path.read_bytes() for path in (project / "data" / "preflight").iterdir()}
        status = json.loads(dvc(project, "status", "--json", "--with-deps", "seed").stdout)
    finally:
        (project / "params.yaml").write_text(previous, encoding="utf-8")
        assert dvc(project, "repro", "preflight").returncode == 0
    assert {name for name in after if after[name] != verdicts[name]} == {"mix.json"}
    assert json.loads(after["mix.json"])["named_inputs"] == [general]
    assert status == {}  # the preflight reran; seed, benchmark and their verdicts did not change


def test_a_restore_that_breaks_never_hides_the_stage_error(monkeypatch, capsys):
    """Putting outputs back is a courtesy after the stage's own error: if it breaks (no dvc, a damaged cache), the
    stage still fails with its own message, plus one note saying how to restore by hand."""
    from ctxsynth.core import dvc_outputs
    from ctxsynth.core.errors import stage_main
    from ctxsynth.core.io import InputError

    monkeypatch.chdir(ROOT)
    command = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]["seed"]["cmd"].split()[1:]
    monkeypatch.setattr(sys, "argv", command)

    def broken(stage):
        raise RuntimeError("cache unreadable")

    monkeypatch.setattr(dvc_outputs, "restore_outputs", broken)

    @stage_main
    def failing_stage():
        raise InputError("seeds.jsonl", "malformed JSON", line=3)

    assert failing_stage() == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "error: seeds.jsonl, line 3: malformed JSON"
    assert lines[1].startswith("note: outputs not restored (RuntimeError: cache unreadable): `dvc checkout seed`")
