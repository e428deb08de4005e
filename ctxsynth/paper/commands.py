"""`ctxsynth experiments`: list, queue, run, check and budget the paper's experiment groups (experiments.py reads the
plan and queues the runs; slurm.py runs them as Slurm jobs).

    ctxsynth experiments list
    ctxsynth experiments queue main --scale cpu          # queue the rows, do not run them
    ctxsynth experiments run main --scale cpu --jobs 1   # queue, run the queue, wait, report failures
    ctxsynth experiments run main --rows context-synthesis human-context   # only these rows
    ctxsynth experiments run main --scale rehearsal      # the gpu rows with tiny stand-ins, on this CPU
    ctxsynth experiments run main --scale gpu --executor slurm [--slurm-arg=--account=x]   # one Slurm job a run
    ctxsynth experiments status main                     # its Slurm jobs: pending, running, failed (log), done
    ctxsynth experiments cancel main
    ctxsynth experiments preflight main --scale gpu --gpu-memory-gib 80   # every row checked, nothing queued
    ctxsynth experiments budget main --scale qlora   # GPU hours per row and expected half-widths (paper/budget.py)
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ctxsynth.core.dvc_deps import DVC
from ctxsynth.core.io import InputError
from ctxsynth.paper.experiments import (
    PLAN,
    REHEARSALS,
    RUNS_LOG,
    SCALES,
    check_committed,
    check_substitutions,
    collected_experiments,
    dvc_command,
    finished_experiments,
    hydra_value,
    load_plan,
    missing_cached_outputs,
    planned_entries,
    preflight_group,
    queue_group,
    record_run,
    reference_numbers,
    select_rows,
    wait_for,
    worker_environment,
)
from ctxsynth.paper.logs import failure_excerpt


def _servers_for(scale: str):
    """The rehearsal's fake OpenAI servers while its rows run (they call them from the queue's worker)."""
    if scale not in REHEARSALS:
        return contextlib.nullcontext()
    from ctxsynth.rehearsal.fake_openai import rehearsal_servers

    return rehearsal_servers()


def _rehearsal_key(scale: str) -> dict[str, str]:
    """The variable the rehearsal rows name as their Batch API key, for the queue workers (the fake server's key)."""
    if scale not in REHEARSALS:
        return {}
    from ctxsynth.rehearsal.fake_openai import REHEARSAL_KEY, REHEARSAL_KEY_ENV

    return {REHEARSAL_KEY_ENV: REHEARSAL_KEY}


def parse_arguments(argv: list[str] | None) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("list", "queue", "run", "preflight", "budget", "status", "cancel"))
    parser.add_argument("group", nargs="?")
    parser.add_argument("--scale", choices=SCALES, default="cpu")
    parser.add_argument("--rows", nargs="+", help="only these rows of the group (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="parallel queue workers (dvc queue start -j)")
    parser.add_argument("--poll", type=float, default=20.0)
    parser.add_argument("--plan", type=Path, default=PLAN)
    parser.add_argument("--dry-run", action="store_true", help="print the dvc commands only")
    parser.add_argument(
        "--keep-finished", action="store_true", help="do not rerun experiments that already finished (resume a group)"
    )
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="preflight: memory of one device")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="preflight: the base params")
    parser.add_argument("--gpus", type=int, help="preflight: GPUs per machine (default: the launcher config's)")
    parser.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="run: the DVC queue here, or one Slurm job a run",
    )
    parser.add_argument(
        "--slurm-arg", action="append", default=[], help="slurm: a site flag for every sbatch (--slurm-arg=--qos=x)"
    )
    parser.add_argument("--slurm-origin", help="slurm, no shared filesystem: the git remote the jobs clone and push to")
    return parser, parser.parse_args(argv)


def list_groups(plan: dict) -> None:
    numbers = reference_numbers()
    for group, spec in plan["groups"].items():
        print(f"{group} ({spec.get('finding', '')}): {spec.get('title', '')}")
        for scale in SCALES:
            for entry in planned_entries(plan, group, scale):
                produces = numbers.get((group, entry["row"])) if scale == "gpu" else None
                print(
                    f"  {entry['name']}: {len(entry['overrides'])} overrides"
                    + (f"; paper: {', '.join(produces)}" if produces else "")
                )


def check_runnable(plan: dict, args: argparse.Namespace) -> None:
    """Before anything is queued: rehearsal substitutions, rows at this scale, and (for `run`) the DVC cache that
    queued rows start from."""
    if args.scale in REHEARSALS:
        problems = check_substitutions(plan, args.group)
        if problems:
            raise InputError(args.plan, problems[0], field="rehearsal_substitutable")
    if not planned_entries(plan, args.group, args.scale):
        raise InputError(
            args.plan, f"group {args.group!r} has no rows at the {args.scale} scale", field=f"groups.{args.group}"
        )
    if args.action == "run" and not args.dry_run:
        missing = missing_cached_outputs()
        if missing:
            raise InputError(
                "dvc.lock",
                f"the DVC cache lacks {', '.join(missing[:3])}{' and more' if len(missing) > 3 else ''}: run "
                "`make repro` (or `dvc repro`) once first; queued rows start from the committed pipeline's outputs",
                field="outs",
            )


def run_queued(names: list[str], args: argparse.Namespace) -> int:
    """Start the queue's workers, wait for the group's runs, record them; the failed ones' log tails are printed."""
    started = time.time()
    with _servers_for(args.scale):
        environment = {**worker_environment(args.jobs), **_rehearsal_key(args.scale)}
        subprocess.run([*DVC, "queue", "start", "-j", str(args.jobs)], check=True, env=environment)
        outcome = wait_for(names, args.poll)
    record_run(args.group, args.scale, started, outcome, environment=environment, jobs=args.jobs)
    failed = [name for name, status in outcome.items() if status != "success"]
    for name in failed:
        print(f"--- {name}: {outcome[name]}; from `dvc queue logs {name}`:")
        print(failure_excerpt(dvc_command("queue", "logs", name, check=False).stdout))
    return 1 if failed else 0


def run_on_slurm(plan: dict, args: argparse.Namespace) -> int:
    """Every selected run as one Slurm job (ctxsynth/paper/slurm.py), after the row preflight; waits and records."""
    from ctxsynth.paper import slurm

    check_committed()
    params = yaml.safe_load(args.params.read_text(encoding="utf-8"))
    specs = [
        slurm.JobSpec(
            name=name,
            overrides=overrides,
            settings=[f"{key}={hydra_value(value)}" for key, value in overrides.items()],
            resources=slurm.resources_for(plan, args.scale, overrides, params),
            extra=list(args.slurm_arg),
        )
        for name, overrides in select_rows(plan, args.group, args.scale, args.rows)
    ]
    problems = slurm.cluster_problems(specs, args.scale, args.plan)  # the cluster first: one sinfo call
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2
    if preflight_group(plan, args.group, args.scale, args.params, args.gpu_memory_gib, args.rows, args.gpus):
        print("experiments: the row preflight failed: nothing submitted", file=sys.stderr)
        return 2
    # Done: an experiment of that name here; with --keep-finished also a run collected in metrics/results.json
    # (finished on another clone), as for the local queue.
    finished = finished_experiments() | (collected_experiments(plan) if args.keep_finished else set())
    for spec in specs:
        if spec.name not in finished:  # a failed earlier attempt's ref would refuse the job's push
            dvc_command("exp", "remove", spec.name, check=False)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], text=True, capture_output=True, check=True).stdout.strip()
    site = slurm.Site(
        root=Path.cwd().resolve(),
        commit=commit,
        python=sys.executable,
        dvc=str(Path(sys.executable).parent / "dvc"),
        slurm_dir=slurm.SLURM_DIR.resolve(),
        origin=args.slurm_origin,
    )
    started = time.time()
    with _servers_for(args.scale):
        environment = {**worker_environment(1), **_rehearsal_key(args.scale)}
        outcome = slurm.run_group(site, specs, finished, args.group, args.scale, RUNS_LOG, args.poll, environment)
    statuses = {name: "success" if state == "COMPLETED" else "failed" for name, state in outcome.items()}
    record_run(args.group, args.scale, started, statuses, environment=environment, note="one Slurm job a run")
    for name in [name for name, status in statuses.items() if status == "failed"]:
        job = slurm.recorded_jobs(args.group, RUNS_LOG).get(name) or {}
        print(f"--- {name}: {outcome[name].lower()}; from {job.get('log')}:")
        print(slurm.log_tail(job.get("log")))
    return 1 if "failed" in statuses.values() else 0


def slurm_status(group: str, action: str) -> int:
    from ctxsynth.paper import slurm

    if action == "cancel":
        cancelled = slurm.cancel(group, RUNS_LOG)
        print(f"cancelled: {', '.join(cancelled)}" if cancelled else "no pending or running job of this group")
        return 0
    lines = slurm.status_lines(group, RUNS_LOG, finished_experiments())
    print("\n".join(lines) if lines else f"no Slurm job recorded for {group} ({RUNS_LOG})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, args = parse_arguments(argv)
    plan = load_plan(args.plan)
    if args.action == "list":
        list_groups(plan)
        return 0
    if not args.group:
        parser.error("name a group: " + ", ".join(plan["groups"]))
    if args.action == "preflight":
        return preflight_group(plan, args.group, args.scale, args.params, args.gpu_memory_gib, args.rows, args.gpus)
    if args.action == "budget":
        from ctxsynth.paper.budget import budget_main

        return budget_main(planned_entries(plan, args.group, args.scale), args.group, args.params)
    if args.action in ("status", "cancel"):
        return slurm_status(args.group, args.action)
    check_runnable(plan, args)
    if args.action == "run" and args.executor == "slurm" and not args.dry_run:
        return run_on_slurm(plan, args)
    names = queue_group(plan, args.group, args.scale, args.dry_run, args.rows, args.keep_finished)
    if args.action == "queue" or args.dry_run:
        return 0
    return run_queued(names, args)


if __name__ == "__main__":
    sys.exit(main())
