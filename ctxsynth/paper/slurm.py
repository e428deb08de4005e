"""Experiment rows as Slurm jobs, side by side across a cluster:

    ctxsynth experiments run contexts --scale gpu --executor slurm [--slurm-arg=--account=x] [--slurm-origin URL]
    ctxsynth experiments status contexts      # pending, running, failed (with the log's last lines), done
    ctxsynth experiments cancel contexts

DVC's own way to run experiments away from the workspace is a copy of the repository that runs `dvc exp run` and
shares the result through git and DVC remotes (`dvc exp push` / `dvc exp pull`). Each planned run (row x seed) is one
job doing exactly that, in its own clone at <slurm dir>/work/<experiment> (the job script: job_script below):

    shared filesystem (default)  the clone's origin is this repository and its DVC cache is this repository's, so
                                 the job pushes only the experiment's git ref (`dvc exp push --no-cache origin`)
                                 and `dvc exp show`, `dvc metrics diff` and `ctxsynth report` see it here at once.
    no shared filesystem         `--slurm-origin URL`: the job clones that git remote, fetches the run cache and
    (--slurm-origin)             pulls what it needs from the default DVC remote (`dvc exp run --pull`), and pushes
                                 the experiment with its outputs and run cache to both; `dvc exp pull` brings each
                                 finished one here.

The clone is kept when a job dies (scancel, a node failure): a resubmitted job goes on in the same workspace with
`dvc repro`, which keeps the finetune stage's persistent checkpoints (it resumes from the last) and does not rerun
finished stages, then records the experiment with `dvc exp save` (`dvc exp run` would first reset the outputs to the
commit's).

Shared work is paid once by ordering, not by luck: runs whose synthesis is the same (the same fetch, seed,
benchmark and synthesize settings) would generate, and for the Batch API pay, the same contexts. The first of them is
submitted alone and the others wait for it (`--dependency=afterok`); when they start, DVC restores the synthesize
stage's outputs from the run cache the first one filled (shared through the cache directory or the DVC remote). The
generation cache is also safe under concurrent writers (each entry is one file, renamed into place atomically:
tests/test_slurm.py), but two jobs that start together would both miss it and both pay.

Job ids and log paths are recorded in metrics/paper_runs.json (under the group's `slurm`), which status, cancel and a
rerun read: a rerun submits only the runs that are neither finished (an experiment of that name here; with
--keep-finished also one collected in metrics/results.json) nor pending or running.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ctxsynth.core.io import InputError

SLURM_DIR = Path("slurm-runs")  # job scripts, logs and workspaces (git- and DVC-ignored)
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL"}
ACTIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING"}
# What decides a row's synthesis: the stages up to synthesize read only these sections (dvc.yaml).
SYNTHESIS_SECTIONS = ("fetch.", "seed.", "benchmark.", "synthesize.")


@dataclass
class JobSpec:
    name: str
    overrides: dict
    settings: list[str]  # `key=value` as `dvc exp run -S` takes them
    resources: dict
    after: str | None = None  # the experiment whose job this one waits for
    job_id: str | None = None
    log: str | None = None
    extra: list[str] = field(default_factory=list)


def resources_for(plan: dict, scale: str, overrides: dict, params: dict) -> dict:
    """The plan's `slurm` section for the scale, with `gpus: accelerate` resolved from the row's finetune launcher:
    its accelerate config's processes (none when the config runs on CPU), or one GPU without a launcher."""
    section = dict((plan.get("slurm") or {}).get(scale) or {})
    if not section:
        raise InputError("experiments/paper.yaml", f"no slurm resources for scale {scale}", field=f"slurm.{scale}")
    if section.get("gpus") == "accelerate":
        from ctxsynth.core.settings import load_settings
        from ctxsynth.finetune.settings import FinetuneSettings, read_accelerate_config
        from ctxsynth.preflight.rows import ACCELERATE_CONFIGS, with_overrides

        finetune = load_settings(FinetuneSettings, "finetune", with_overrides(params, overrides).get("finetune") or {})
        section["gpus"] = 1
        if finetune.launcher == "accelerate":
            _, config = read_accelerate_config(finetune.accelerate_config, ACCELERATE_CONFIGS)
            section["gpus"] = 0 if config.get("use_cpu") else int(config.get("num_processes") or 1)
    return section


def synthesis_key(overrides: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in overrides.items() if k.startswith(SYNTHESIS_SECTIONS)))


def order_by_synthesis(specs: list[JobSpec], running: dict[tuple, str] | None = None) -> list[JobSpec]:
    """The first run of each synthesis goes alone; the others name it in `after` (submitted with afterok).
    `running`: synthesis key -> a run of an earlier submission still pending or running, which goes first."""
    first: dict[tuple, str] = dict(running or {})
    for spec in specs:
        key = synthesis_key(spec.overrides)
        if key in first:
            spec.after = first[key]
        else:
            first[key] = spec.name
    return specs


@dataclass(frozen=True)
class Site:
    """Where the jobs run from: the repository's root and commit, the interpreter and DVC they call, the directory of
    scripts, logs and workspaces, and the git remote to clone when the cluster shares no filesystem with this one."""

    root: Path
    commit: str
    python: str
    dvc: str
    slurm_dir: Path
    origin: str | None = None  # None: a shared filesystem (clone this repository, share its DVC cache)

    @property
    def shared(self) -> bool:
        return self.origin is None


def job_script(site: Site, name: str, settings: list[str]) -> str:
    """The job: its clone (kept across attempts), the submitted commit, `dvc exp run -S <settings>`, `dvc exp push`."""
    quote = shlex.quote
    work = site.slurm_dir / "work" / name
    settings_args = " ".join(f"-S {quote(setting)}" for setting in settings)
    origin = str(site.root) if site.shared else site.origin
    lines = [
        "#!/usr/bin/env bash",
        f"# {name}: one planned run, submitted from {site.root} at {site.commit} (ctxsynth/paper/slurm.py).",
        "set -euo pipefail",
        f"export CTXSYNTH_PYTHON={quote(site.python)}",
        f"dvc={quote(site.dvc)}",
        f"work={quote(str(work))}",
        "# The clone is kept: a resubmitted job resumes in it (persistent checkpoints, finished stages).",
        f'[ -d "$work/.git" ] || git clone -q --no-checkout {quote(str(origin))} "$work"',
        'cd "$work"',
        "git fetch -q origin",
        f"git checkout -q --detach {site.commit}",
    ]
    if site.shared:
        lines.append(f'"$dvc" cache dir --local {quote(str(site.root / ".dvc" / "cache"))}')
    else:  # the run cache other jobs pushed (a synthesis paid once); `--pull` brings the outputs it restores
        lines.append('"$dvc" fetch -q --run-cache')
    pull = "" if site.shared else " --pull"
    lines += [
        f'"$dvc" exp remove {quote(name)} >/dev/null 2>&1 || true',
        "# A resubmission after a kill: params.yaml holds this run's settings already, and `dvc repro` keeps the",
        "# persistent outputs (`dvc exp run` would reset them from the commit): resume, then save the experiment.",
        "if [ -f .git/ctxsynth-attempted ]; then",
        f'  "$dvc" repro{pull}',
        "  git add -A  # what `dvc exp run` would commit: metrics kept in git, the outputs' .gitignore entries",
        f'  "$dvc" exp save -f -n {quote(name)}',
        "else",
        "  touch .git/ctxsynth-attempted",
        f'  "$dvc" exp run{pull} -n {quote(name)} {settings_args}',
        "fi",
        f'"$dvc" exp push --no-cache origin {quote(name)}'
        if site.shared
        else f'"$dvc" exp push --run-cache origin {quote(name)}',
    ]
    return "\n".join(lines) + "\n"


def sbatch_command(spec: JobSpec, script: Path, log: Path, dependency: str | None) -> list[str]:
    resources = spec.resources
    command = ["sbatch", "--parsable", f"--job-name={spec.name}", f"--output={log}", f"--chdir={script.parent}"]
    if resources.get("partition"):
        command.append(f"--partition={resources['partition']}")
    for key, flag in (("time", "--time"), ("cpus_per_task", "--cpus-per-task"), ("mem", "--mem")):
        if resources.get(key) not in (None, ""):
            command.append(f"{flag}={resources[key]}")
    if int(resources.get("gpus") or 0):
        command.append(f"--gres=gpu:{int(resources['gpus'])}")
    if dependency:
        command += [f"--dependency=afterok:{dependency}", "--kill-on-invalid-dep=yes"]
    return [*command, *spec.extra, str(script)]


def submit(
    site: Site, specs: list[JobSpec], active: dict[str, str], env: dict[str, str] | None = None
) -> list[JobSpec]:
    """sbatch each spec in order (a dependency is submitted before its dependents); `active` names the jobs of
    earlier submissions still pending or running, which a dependent may wait for too."""
    scripts = site.slurm_dir / "jobs"
    scripts.mkdir(parents=True, exist_ok=True)
    (site.slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    ids = dict(active)
    for spec in specs:
        script = scripts / f"{spec.name}.sh"
        script.write_text(job_script(site, spec.name, spec.settings), encoding="utf-8")
        script.chmod(0o755)
        log = (site.slurm_dir / "logs" / f"{spec.name}-%j.log").resolve()
        command = sbatch_command(spec, script.resolve(), log, ids.get(spec.after) if spec.after else None)
        result = subprocess.run(command, text=True, capture_output=True, env=env)  # the job inherits this environment
        if result.returncode != 0:
            raise SystemExit(f"sbatch {spec.name}: {result.stderr.strip() or result.stdout.strip()}")
        spec.job_id = result.stdout.strip().split(";")[0]
        spec.log = str(log).replace("%j", spec.job_id)
        ids[spec.name] = spec.job_id
        waits = f", after {spec.after} ({ids[spec.after]})" if spec.after in ids else ""
        print(f"{spec.name}: job {spec.job_id}{waits}, log {spec.log}", flush=True)
    return specs


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, text=True, capture_output=True)


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Job id -> Slurm state (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED, ...): squeue for the live ones, then
    sacct (accounting, or without slurmdbd the completion log), then scontrol (finished jobs it still holds,
    MinJobAge); UNKNOWN otherwise."""
    states: dict[str, str] = {}
    wanted = set(job_ids)
    for line in _run(["squeue", "-h", "-o", "%i|%T"]).stdout.splitlines():
        job, _, state = line.partition("|")
        if job in wanted:
            states[job] = state.strip()
    rest = [job for job in job_ids if job not in states]
    if rest:
        query = ["-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(rest)]
        sacct = _run(["sacct", *query])
        if sacct.returncode != 0:  # no slurmdbd: the job completion log (JobCompType=jobcomp/filetxt) still answers
            sacct = _run(["sacct", "-c", *query])
        for line in sacct.stdout.splitlines() if sacct.returncode == 0 else []:
            job, _, state = line.partition("|")
            if job in wanted and state:
                states[job] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    for job in [job for job in job_ids if job not in states]:
        shown = _run(["scontrol", "show", "job", "-o", job]).stdout
        state = next((part.split("=", 1)[1] for part in shown.split() if part.startswith("JobState=")), None)
        states[job] = state or "UNKNOWN"
    return states


def log_tail(path: str | None, lines: int = 25) -> str:
    from ctxsynth.paper.logs import failure_excerpt

    if not path or not Path(path).is_file():
        return f"(no log at {path})"
    return failure_excerpt(Path(path).read_text(encoding="utf-8", errors="replace"), tail=lines)


def wait_for_jobs(jobs: dict[str, str], poll_seconds: float) -> dict[str, str]:
    """Experiment name -> final Slurm state, polling until every job is in a terminal state."""
    from ctxsynth.paper.logs import report_until_finished

    def read() -> dict[str, str]:
        states = job_states(list(jobs.values()))
        return {name: states.get(job, "UNKNOWN") for name, job in jobs.items()}

    return report_until_finished(read, lambda state: state in TERMINAL or state == "UNKNOWN", poll_seconds)


def recorded_jobs(group: str, runs_log: Path) -> dict[str, dict]:
    """Experiment name -> {job, log, scale, submitted} of the group's Slurm submissions (the latest per run)."""
    import json

    if not runs_log.is_file():
        return {}
    return dict((json.loads(runs_log.read_text(encoding="utf-8")).get(group) or {}).get("slurm") or {})


def group_jobs(group: str, runs_log: Path) -> tuple[dict[str, dict], dict[str, str], dict[str, str]]:
    """The group's recorded jobs (name -> record), their states (job id -> state) and the pending or running ones
    (name -> job id)."""
    recorded = recorded_jobs(group, runs_log)
    states = job_states([entry["job"] for entry in recorded.values()]) if recorded else {}
    active = {name: entry["job"] for name, entry in recorded.items() if states.get(entry["job"]) in ACTIVE}
    return recorded, states, active


def record_jobs(group: str, scale: str, specs: list[JobSpec], runs_log: Path) -> None:
    import json

    from ctxsynth.core.io import write_json

    runs = json.loads(runs_log.read_text(encoding="utf-8")) if runs_log.is_file() else {}
    entry = runs.setdefault(group, {})
    jobs = entry.setdefault("slurm", {})
    submitted = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    for spec in specs:
        jobs[spec.name] = {"job": spec.job_id, "log": spec.log, "scale": scale, "submitted": submitted}
    write_json(runs_log, runs)


def run_group(
    site: Site,
    planned: list[JobSpec],
    finished: set[str],
    group: str,
    scale: str,
    runs_log: Path,
    poll_seconds: float = 20.0,
    env: dict[str, str] | None = None,
) -> dict[str, str]:
    """Submit the planned runs that are neither finished nor pending or running, wait for them (and for those of an
    earlier submission still going), bring the experiments here without a shared filesystem; name -> final state."""
    recorded, states, active = group_jobs(group, runs_log)
    keys = {spec.name: synthesis_key(spec.overrides) for spec in planned}
    todo = []
    for spec in planned:
        if spec.name in finished:
            print(f"{spec.name}: finished earlier, kept")
        elif spec.name in active:
            print(f"{spec.name}: job {active[spec.name]} is {states[active[spec.name]].lower()}, left alone")
        else:
            todo.append(spec)
    running = {keys[name]: name for name in active if name in keys}
    submitted = submit(site, order_by_synthesis(todo, running), active, env)
    record_jobs(group, scale, submitted, runs_log)
    jobs = {**{name: job for name, job in active.items() if name in keys}, **{s.name: str(s.job_id) for s in submitted}}
    outcome = wait_for_jobs(jobs, poll_seconds) if jobs else {}
    if not site.shared:
        for name in [name for name, state in outcome.items() if state == "COMPLETED"]:
            pulled = _run([site.dvc, "exp", "pull", str(site.origin), name])
            if pulled.returncode != 0:
                outcome[name] = "NOT PULLED"
                print(f"{name}: dvc exp pull {site.origin} {name}: {pulled.stderr.strip()}")
    return outcome


def status_lines(group: str, runs_log: Path, finished: set[str]) -> list[str]:
    """One line per recorded run of the group: done, pending, running, or failed with its log's last lines."""
    recorded, states, _ = group_jobs(group, runs_log)
    lines = []
    for name, entry in recorded.items():
        state = states.get(entry["job"], "UNKNOWN")
        if name in finished:
            lines.append(f"{name}: done (job {entry['job']})")
        elif state in ACTIVE:
            lines.append(f"{name}: {state.lower()} (job {entry['job']}, log {entry['log']})")
        elif state == "COMPLETED":
            lines.append(f"{name}: completed, but no experiment here yet (job {entry['job']}): dvc exp pull it")
        else:
            lines.append(f"{name}: {state.lower()} (job {entry['job']}); the end of {entry['log']}:")
            lines += ["    " + line for line in log_tail(entry["log"]).splitlines()]
    return lines


def cancel(group: str, runs_log: Path) -> list[str]:
    """scancel the group's pending and running jobs; their names."""
    _, _, active = group_jobs(group, runs_log)
    if active:
        subprocess.run(["scancel", *active.values()], check=True)
    return sorted(active)


def cluster_problems(specs: list[JobSpec], scale: str, plan_path: os.PathLike | str) -> list[str]:
    """Before any submission, one line per problem: no `sbatch` here, a partition the cluster does not have, a run
    asking for more GPUs than any node of its partition holds."""
    import shutil

    if shutil.which("sbatch") is None:
        return ["--executor slurm: `sbatch` is not on PATH (run on a Slurm login node, or load its module)"]
    partitions, nodes = cluster_partitions()
    problems = []
    for spec in specs:
        partition = spec.resources.get("partition") or partitions.get("*")
        if partition not in partitions:
            known = ", ".join(sorted(name for name in partitions if name != "*"))
            problems.append(
                f"error: {plan_path}, field 'slurm.{scale}.partition': no partition {partition!r} (the cluster has: "
                f"{known}; null: the default)"
            )
            break
        gpus, most = int(spec.resources.get("gpus") or 0), max(nodes.get(partition, [0]))
        if gpus > most:
            problems.append(
                f"error: {spec.name}: asks for {gpus} GPUs (finetune.accelerate_config), and no node of partition "
                f"{partition!r} has more than {most}"
            )
    return problems


def cluster_partitions() -> tuple[dict[str, str], dict[str, list[int]]]:
    """({partition: partition, and "*": the default one}, {partition: GPUs of each node}) from `sinfo`."""
    partitions: dict[str, str] = {}
    nodes: dict[str, list[int]] = {}
    listing = _run(["sinfo", "-h", "-N", "-o", "%P|%G"]).stdout.splitlines()
    for line in listing:
        name, _, gres = line.partition("|")
        default = name.endswith("*")
        name = name.rstrip("*")
        partitions[name] = name
        if default:
            partitions["*"] = name
        gpus = sum(int(part.split(":")[-1].split("(")[0]) for part in gres.split(",") if part.startswith("gpu"))
        nodes.setdefault(name, []).append(gpus)
    return partitions, nodes
