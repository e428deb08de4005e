"""Experiment rows as Slurm jobs (ctxsynth/paper/slurm.py): the job script and sbatch flags, the resources from the
plan, the synthesis a group's rows share paid once, a generation cache safe under concurrent writers; and against a
real one-node Slurm (scripts/slurm/start-local-slurm.sh: Debian's slurm-wlm and munge), a small DVC project's rows run
as jobs on a shared filesystem and through a git remote, a killed job resumes, status and cancel."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from ctxsynth.generation.cache import GenerationCache
from ctxsynth.paper import slurm
from ctxsynth.paper.experiments import load_plan, planned_entries

ROOT = Path(__file__).resolve().parents[1]
DVC = str(Path(sys.executable).parent / "dvc")


def spec(name: str, overrides: dict, **resources) -> slurm.JobSpec:
    settings = [f"{key}={value}" for key, value in overrides.items()]
    return slurm.JobSpec(name=name, overrides=overrides, settings=settings, resources=resources)


def test_runs_that_share_a_synthesis_wait_for_the_first():
    runs = [
        spec("n1", {"mix.num_contexts": 1, "synthesize.target_words": 60}),
        spec("n5", {"mix.num_contexts": 5, "synthesize.target_words": 60}),
        spec("other", {"mix.num_contexts": 5, "synthesize.target_words": 90}),
        spec("n10", {"mix.num_contexts": 10, "synthesize.target_words": 60}),
    ]
    ordered = slurm.order_by_synthesis(runs)
    assert [(run.name, run.after) for run in ordered] == [("n1", None), ("n5", "n1"), ("other", None), ("n10", "n1")]
    # a run of an earlier submission still going counts as the first
    again = slurm.order_by_synthesis(
        [spec("n5", {"synthesize.target_words": 60})], {slurm.synthesis_key({"synthesize.target_words": 60}): "n1"}
    )
    assert again[0].after == "n1"


def test_the_sbatch_command_carries_the_resources_the_dependency_and_site_flags(tmp_path):
    job = spec("gpu-main-r", {}, partition="gpu", time="24:00:00", cpus_per_task=16, mem="120G", gpus=8)
    job.extra = ["--account=lab"]
    command = slurm.sbatch_command(job, tmp_path / "r.sh", tmp_path / "r-%j.log", "42")
    assert command[:3] == ["sbatch", "--parsable", "--job-name=gpu-main-r"]
    for flag in (
        "--partition=gpu",
        "--time=24:00:00",
        "--cpus-per-task=16",
        "--mem=120G",
        "--gres=gpu:8",
        "--dependency=afterok:42",
        "--kill-on-invalid-dep=yes",
        "--account=lab",
    ):
        assert flag in command
    assert command[-1] == str(tmp_path / "r.sh")
    cpu = slurm.sbatch_command(spec("c", {}, partition=None, gpus=0), tmp_path / "c.sh", tmp_path / "c.log", None)
    assert not [flag for flag in cpu if flag.startswith(("--partition", "--gres", "--dependency"))]


def test_the_gpus_a_job_asks_for_follow_the_rows_accelerate_config(monkeypatch):
    monkeypatch.chdir(ROOT)
    plan = load_plan(ROOT / "experiments/paper.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))

    def gpus(scale: str) -> int:
        (entry, *_) = planned_entries(plan, "main", scale)
        return slurm.resources_for(plan, scale, entry["overrides"], params)["gpus"]

    assert gpus("gpu") == 8  # deepspeed_zero3: 8 processes
    assert gpus("qlora") == 1  # no launcher: one GPU
    assert gpus("rehearsal") == 0 and gpus("qlora-rehearsal") == 0
    with pytest.raises(Exception, match="no slurm resources"):
        slurm.resources_for({"slurm": {}}, "gpu", {}, params)


def test_the_job_script_clones_runs_and_pushes_the_experiment(tmp_path):
    site = slurm.Site(root=tmp_path, commit="abc123", python="/py", dvc="/dvc", slurm_dir=tmp_path / "slurm")
    shared = slurm.job_script(site, "rehearsal-contexts-n1", ["mix.num_contexts=1", "seed.sources=[{a:1}]"])
    assert f"git clone -q --no-checkout {tmp_path}" in shared and "git checkout -q --detach abc123" in shared
    assert f'"$dvc" cache dir --local {tmp_path / ".dvc" / "cache"}' in shared
    assert "exp run -n rehearsal-contexts-n1 -S mix.num_contexts=1 -S 'seed.sources=[{a:1}]'" in shared
    assert shared.rstrip().endswith('"$dvc" exp push --no-cache origin rehearsal-contexts-n1')
    remote = slurm.job_script(
        slurm.Site(tmp_path, "abc123", "/py", "/dvc", tmp_path / "slurm", origin="git@host:lab/repo.git"), "x", []
    )
    assert "git clone -q --no-checkout git@host:lab/repo.git" in remote and "fetch -q --run-cache" in remote
    assert '"$dvc" exp run --pull -n x' in remote
    assert remote.rstrip().endswith('"$dvc" exp push --run-cache origin x')


def _put_many(root: str, key: str, writer: int) -> None:
    cache = GenerationCache(root)
    for attempt in range(200):
        cache.put(key, {"text": f"from writer {writer}", "attempt": attempt})


def test_the_generation_cache_is_safe_under_concurrent_writers(tmp_path):
    """Two jobs finishing the same entry at once: every read sees a whole, valid entry, and one file remains."""
    key = "ab" + "0" * 62
    writers = [multiprocessing.Process(target=_put_many, args=(str(tmp_path), key, n)) for n in range(4)]
    for writer in writers:
        writer.start()
    reader, seen = GenerationCache(tmp_path), 0
    while any(writer.is_alive() for writer in writers):
        value = reader.get(key)
        if value is not None:
            assert value["text"].startswith("from writer ")
            seen += 1
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    assert reader.corrupt == 0 and reader.get(key) is not None and seen > 0
    assert [path.name for path in (tmp_path / "ab").iterdir()] == [f"{key}.json"]  # no temporary file left


# --- against a real one-node Slurm ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    """A one-node Slurm started by the repository's script; skipped, with its reason, where it cannot start."""
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        pytest.skip("no Slurm and no apt-get to install it (Debian's slurm-wlm, munge)")
    started = subprocess.run(
        ["bash", str(ROOT / "scripts/slurm/start-local-slurm.sh")], text=True, capture_output=True, timeout=600
    )
    if started.returncode != 0:
        pytest.skip("a local Slurm could not start: " + (started.stderr.strip().splitlines() or ["?"])[-1])
    conf = started.stdout.strip().splitlines()[-1].removeprefix("export SLURM_CONF=").strip("'\"")
    os.environ["SLURM_CONF"] = conf
    yield conf


# A DVC project of two stages: `synth` generates through the generation cache (GENERATIONS) and counts its runs and
# its generations in files outside the repository (the synthesis a group's rows share must run once); `train` keeps
# a persistent checkpoint and, on its first attempt with `train.hold`, waits to be killed there, so a resubmitted job
# shows that it resumed.
SYNTH = """
import os, pathlib, yaml
from ctxsynth.generation.cache import GenerationCache, cache_key
params = yaml.safe_load(open("params.yaml"))
with open(os.environ["SYNTH_STAGE_RUNS"], "a") as runs:
    runs.write("run\\n")
cache, key = GenerationCache(os.environ["GENERATIONS"]), cache_key(words=params["synth"]["words"])
if cache.get(key) is None:  # a generation: counted, then cached for every other run
    with open(os.environ["SYNTH_RUNS"], "a") as runs:
        runs.write("run\\n")
    cache.put(key, {"text": f"contexts of {params['synth']['words']} words"})
pathlib.Path("data").mkdir(exist_ok=True)
pathlib.Path("data/synth.txt").write_text(cache.get(key)["text"] + "\\n")
"""
TRAIN = """
import json, pathlib, time, yaml
params = yaml.safe_load(open("params.yaml"))
checkpoint = pathlib.Path("ckpt/step")
resumed = checkpoint.exists()
checkpoint.parent.mkdir(exist_ok=True)
checkpoint.write_text("1")
if params["train"]["hold"] and not resumed:
    time.sleep(600)
json.dump({"lr": params["train"]["lr"], "resumed": resumed, "synth": open("data/synth.txt").read().strip()},
          open("metrics.json", "w"))
"""


def job_env(tmp_path: Path) -> dict[str, str]:
    """What the jobs count in: generations, synth stage runs, and the shared generation cache."""
    paths = {"SYNTH_RUNS": "generations", "SYNTH_STAGE_RUNS": "synth-stage-runs", "GENERATIONS": "generation-cache"}
    return {**os.environ, **{name: str(tmp_path / leaf) for name, leaf in paths.items()}}


def count(env: dict[str, str], name: str) -> int:
    path = Path(env[name])
    return path.read_text().count("run") if path.exists() else 0


def make_project(path: Path, remote: Path | None = None) -> Path:
    path.mkdir(parents=True)
    run = lambda *command: subprocess.run(command, cwd=path, check=True, capture_output=True, text=True)  # noqa: E731
    run("git", "init", "-q", "-b", "main")
    run("git", "config", "user.email", "t@example.org")
    run("git", "config", "user.name", "t")
    run(DVC, "init", "-q")
    (path / "synth.py").write_text(SYNTH)
    (path / "train.py").write_text(TRAIN)
    (path / "params.yaml").write_text("synth: {words: 60}\ntrain: {lr: 1, hold: false}\n")
    stages = {
        "synth": {
            "cmd": f"{sys.executable} synth.py",
            "deps": ["synth.py"],
            "params": ["synth"],
            "outs": ["data/synth.txt"],
        },
        "train": {
            "cmd": f"{sys.executable} train.py",
            "deps": ["train.py", "data/synth.txt"],
            "params": ["train"],
            "outs": [{"ckpt": {"persist": True}}],
            "metrics": [{"metrics.json": {"cache": False}}],
        },
    }
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    if remote is not None:
        run(DVC, "remote", "add", "-d", "store", str(remote))
    run("git", "add", "-A")
    run("git", "commit", "-qm", "project")
    return path


def site_for(project: Path, origin: str | None = None) -> slurm.Site:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, text=True, capture_output=True, check=True)
    return slurm.Site(project, commit.stdout.strip(), sys.executable, DVC, project / "slurm-runs", origin=origin)


def experiment_metrics(project: Path) -> dict[str, dict]:
    shown = subprocess.run([DVC, "exp", "show", "--json"], cwd=project, text=True, capture_output=True, check=True)
    found = {}
    for baseline in json.loads(shown.stdout):
        for experiment in baseline.get("experiments") or []:
            for revision in experiment.get("revs") or []:
                data = revision.get("data") or {}
                metrics = ((data.get("metrics") or {}).get("metrics.json") or {}).get("data")
                if revision.get("name") and metrics:
                    found[revision["name"]] = metrics
    return found


def rows(lr_values: list[int], hold: bool = False) -> list[slurm.JobSpec]:
    return [
        spec(f"row-lr{lr}", {"synth.words": 60, "train.lr": lr, "train.hold": hold}, cpus_per_task=1, time="10:00")
        for lr in lr_values
    ]


def test_rows_run_as_jobs_on_a_shared_filesystem_and_share_one_generation(cluster, tmp_path, monkeypatch):
    """Two runs needing the same generation, submitted at once: one generation, one synth stage run (the second
    waits with afterok and takes the stage from DVC's run cache), a valid cache entry."""
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    env = job_env(tmp_path)
    outcome = slurm.run_group(site_for(project), rows([1, 2]), set(), "g", "cpu", project / "runs.json", 1, env)
    assert outcome == {"row-lr1": "COMPLETED", "row-lr2": "COMPLETED"}
    metrics = experiment_metrics(project)  # ordinary DVC experiments of this repository, seen at once
    assert metrics["row-lr1"]["lr"] == 1 and metrics["row-lr2"]["lr"] == 2
    assert count(env, "SYNTH_RUNS") == 1 and count(env, "SYNTH_STAGE_RUNS") == 1
    cache = GenerationCache(env["GENERATIONS"])
    (entry,) = Path(env["GENERATIONS"]).glob("*/*.json")
    assert cache.get(entry.stem) == {"text": "contexts of 60 words"} and cache.corrupt == 0
    recorded = slurm.recorded_jobs("g", project / "runs.json")
    assert set(recorded) == {"row-lr1", "row-lr2"} and all(Path(job["log"]).is_file() for job in recorded.values())
    finished = set(metrics)
    assert slurm.status_lines("g", project / "runs.json", finished) == [
        f"{name}: done (job {recorded[name]['job']})" for name in ("row-lr1", "row-lr2")
    ]
    # a rerun submits nothing that is finished
    again = slurm.run_group(site_for(project), rows([1, 2]), finished, "g", "cpu", project / "runs.json", 1, env)
    assert again == {} and slurm.recorded_jobs("g", project / "runs.json") == recorded


def test_rows_run_through_a_git_remote_without_a_shared_filesystem(cluster, tmp_path, monkeypatch):
    store = tmp_path / "dvc-store"
    project = make_project(tmp_path / "project", remote=store)
    origin = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(project), str(origin)], check=True)
    monkeypatch.chdir(project)
    env = job_env(tmp_path)
    site = site_for(project, origin=str(origin))
    outcome = slurm.run_group(site, rows([1, 2]), set(), "g", "cpu", project / "runs.json", 1, env)
    assert outcome == {"row-lr1": "COMPLETED", "row-lr2": "COMPLETED"}
    assert count(env, "SYNTH_STAGE_RUNS") == 1  # the run cache and the outputs went through the DVC remote
    metrics = experiment_metrics(project)  # pulled here with `dvc exp pull`
    assert metrics["row-lr2"] == {"lr": 2, "resumed": False, "synth": "contexts of 60 words"}
    listed = subprocess.run(["git", "ls-remote", str(origin)], text=True, capture_output=True, check=True).stdout
    assert listed.count("refs/exps/") == 2


def test_a_cancelled_job_is_the_one_a_rerun_submits_and_it_resumes(cluster, tmp_path, monkeypatch):
    project = make_project(tmp_path / "project")
    monkeypatch.chdir(project)
    env = job_env(tmp_path)
    site, runs_log = site_for(project), project / "runs.json"
    assert slurm.run_group(site, rows([1]), set(), "g", "cpu", runs_log, 1, env) == {"row-lr1": "COMPLETED"}
    first = slurm.recorded_jobs("g", runs_log)["row-lr1"]
    (held,) = slurm.submit(site, rows([3], hold=True), {}, env)
    slurm.record_jobs("g", "cpu", [held], runs_log)
    checkpoint = site.slurm_dir / "work" / "row-lr3" / "ckpt" / "step"
    deadline = time.time() + 120
    while not checkpoint.exists() and time.time() < deadline:
        time.sleep(1)
    assert checkpoint.exists(), slurm.log_tail(held.log)
    assert f"row-lr3: running (job {held.job_id}, log {held.log})" in slurm.status_lines("g", runs_log, {"row-lr1"})
    assert slurm.cancel("g", runs_log) == ["row-lr3"]  # killed mid-run, as a node failure would
    deadline = time.time() + 60
    while slurm.job_states([str(held.job_id)])[str(held.job_id)] not in slurm.TERMINAL and time.time() < deadline:
        time.sleep(1)
    lines = slurm.status_lines("g", runs_log, {"row-lr1"})
    assert f"row-lr3: cancelled (job {held.job_id}); the end of {held.log}:" in lines
    finished = set(experiment_metrics(project))
    assert finished == {"row-lr1"}
    outcome = slurm.run_group(site, rows([1]) + rows([3], hold=True), finished, "g", "cpu", runs_log, 1, env)
    assert outcome == {"row-lr3": "COMPLETED"}  # exactly the cancelled run
    assert experiment_metrics(project)["row-lr3"]["resumed"] is True  # not held again: it went on from its checkpoint
    recorded = slurm.recorded_jobs("g", runs_log)
    assert recorded["row-lr3"]["job"] != held.job_id and recorded["row-lr1"] == first


def test_bad_cluster_input_is_one_line_before_anything_is_submitted(cluster, monkeypatch, tmp_path):
    wrong_partition = spec("gpu-main-r", {}, partition="a100", gpus=0)
    (line,) = slurm.cluster_problems([wrong_partition], "gpu", "experiments/paper.yaml")
    assert line.startswith("error: experiments/paper.yaml, field 'slurm.gpu.partition': no partition 'a100'")
    assert "debug" in line
    (line,) = slurm.cluster_problems([spec("gpu-main-r", {}, partition=None, gpus=8)], "gpu", "experiments/paper.yaml")
    assert line == (
        "error: gpu-main-r: asks for 8 GPUs (finetune.accelerate_config), and no node of partition 'debug' has more "
        "than 0"
    )
    assert slurm.cluster_problems([spec("cpu-r", {}, partition="debug", gpus=0)], "cpu", "p.yaml") == []
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    (line,) = slurm.cluster_problems([spec("cpu-r", {}, gpus=0)], "cpu", "p.yaml")
    assert "`sbatch` is not on PATH" in line
