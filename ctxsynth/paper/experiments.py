"""The paper's findings as DVC experiments: the plan (experiments/paper.yaml) resolved into runs per group and scale,
and the local DVC queue that runs them (`ctxsynth experiments`: paper/commands.py; Slurm: paper/slurm.py).

A row runs as `dvc exp run --queue -n <scale>-<group>-<row> -S key=value ...` (the group's overrides for the scale,
then the row's), so every row is an ordinary DVC experiment: `dvc exp show`, `dvc metrics diff`, `dvc exp push`.
Queued runs see only git-tracked files: commit before queueing.

Training seeds: the key `seeds` in a group's scale section or in a row (the row's wins; `seeds: null` turns the group's
off for that row) is not a parameter: `seeds: [0, 1, 2]` runs the row as three experiments
`<scale>-<group>-<row>-s<seed>`, each with `finetune.seed` and `mix.seed` (SEED_KEYS) set to its seed, and the report
groups them back into one row.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ctxsynth.core.dvc_deps import DVC
from ctxsynth.core.io import InputError

PLAN = Path("experiments/paper.yaml")
RUNS_LOG = Path("metrics/paper_runs.json")
RESULTS = Path("metrics/results.json")
SCALES = ("cpu", "gpu", "rehearsal", "qlora", "qlora-rehearsal")
# Derived scales, never written out in full: a scale's row is its base scale's row with the group's and the row's
# layers of these names applied in order (later wins). `qlora` is the paper's setting on one GPU, `rehearsal` and
# `qlora-rehearsal` their twins with stand-ins; a row the base scale lacks, the derived scale lacks too.
DERIVED = {
    "rehearsal": ("gpu", ("rehearsal",)),
    "qlora": ("gpu", ("qlora",)),
    "qlora-rehearsal": ("qlora", ("rehearsal", "qlora-rehearsal")),
}
REHEARSALS = ("rehearsal", "qlora-rehearsal")  # twins: they may differ from their base only in substitutable keys
_BARE = re.compile(r"^[A-Za-z0-9_./:@+-]+$")
_FINISHED = {"success", "failed"}


def load_plan(path: Path = PLAN) -> dict:
    plan = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    for group, spec in (plan.get("groups") or {}).items():
        for field in ("rows", "overrides"):
            if not isinstance(spec.get(field), dict):
                raise InputError(path, f"group {group!r} needs a mapping `{field}`", field=f"groups.{group}.{field}")
    return plan


SEEDS = "seeds"  # the reserved key of an overrides mapping: K training seeds, not a params.yaml path
SEED_KEYS = ("finetune.seed", "mix.seed")  # what one training seed sets: weights init and data order, mix shuffle


def experiment_name(scale: str, group: str, row: str, seed: int | None = None) -> str:
    return f"{scale}-{group}-{row}" + ("" if seed is None else f"-s{seed}")


def row_overrides(row: dict, scale: str) -> dict | None:
    """A row is either flat (all scales) or split by scale ({cpu: {...}, gpu: {...}}); None: no run at this scale."""
    if row and set(row) <= set(SCALES):
        return row.get(scale)
    return dict(row or {})


def derived_overrides(spec: dict, row: dict, scale: str) -> dict | None:
    """A derived scale's row (DERIVED): its base scale's row, then the group's and the row's layers in order (later
    wins: a stand-in replaces whatever the base row's value was). A row split by scale without an entry for a layer
    takes nothing from it; a flat row is the same at every scale. Rehearsal layers may only touch the plan's
    `rehearsal_substitutable` keys (sizes, model ids, where inputs and servers are): checked by check_substitutions."""
    base, layers = DERIVED[scale]
    if base in DERIVED:
        merged = derived_overrides(spec, row, base)
    else:
        own = row_overrides(row, base)
        merged = None if own is None else {**((spec["overrides"] or {}).get(base) or {}), **own}
    if merged is None:
        return None
    split_by_scale = bool(row) and set(row) <= set(SCALES)
    for layer in layers:
        merged.update((spec["overrides"] or {}).get(layer) or {})
        merged.update((row.get(layer) or {}) if split_by_scale else {})
    return merged


def check_substitutions(plan: dict, group: str) -> list[str]:
    """Keys in which a twin's row (REHEARSALS) differs from its base scale's row although they are not substitutable:
    one line each."""
    allowed = set(plan.get("rehearsal_substitutable") or [])
    problems = []
    for twin in REHEARSALS:
        base = DERIVED[twin][0]
        before_rows = {entry["row"]: entry["overrides"] for entry in planned_entries(plan, group, base)}
        for entry in planned_entries(plan, group, twin):
            before = before_rows[entry["row"]]
            for key in sorted(set(before) | set(entry["overrides"])):
                if key in SEED_KEYS or key in allowed or before.get(key) == entry["overrides"].get(key):
                    continue
                problems.append(
                    f"{entry['name']}: {key} differs from the {base} row and is not rehearsal_substitutable"
                )
    return problems


def _seed_list(value, group: str, row: str, scale: str) -> list[int] | None:
    field = f"groups.{group}.{SEEDS}"
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(seed, int) and not isinstance(seed, bool) for seed in value)
        or len(set(value)) != len(value)
    ):
        raise InputError(PLAN, f"row {row!r} at {scale}: `{SEEDS}` must be a list of distinct integers", field=field)
    return list(value)


def planned_entries(plan: dict, group: str, scale: str) -> list[dict]:
    """{name, row, seed, overrides} per experiment of a group at this scale, in file order; a row with K seeds gives
    K entries (seed None: the row runs once, under its plain name, with the seeds params.yaml gives)."""
    if group not in plan["groups"]:
        raise InputError(PLAN, f"no group {group!r}; groups: {', '.join(plan['groups'])}", field="groups")
    spec = plan["groups"][group]
    common = (spec["overrides"] or {}).get(scale) or {}
    entries = []
    for row, overrides in spec["rows"].items():
        if scale in DERIVED:
            merged = derived_overrides(spec, overrides, scale)
            if merged is None:
                continue
        else:
            own = row_overrides(overrides, scale)
            if own is None:
                continue
            merged = {**common, **own}
        seeds = _seed_list(merged.pop(SEEDS, None), group, row, scale)
        if seeds is None:
            entries.append({"name": experiment_name(scale, group, row), "row": row, "seed": None, "overrides": merged})
            continue
        clash = [key for key in SEED_KEYS if key in merged]
        if clash:
            raise InputError(
                PLAN, f"row {row!r} at {scale} sets {', '.join(clash)} and `{SEEDS}`: give one", field=f"groups.{group}"
            )
        for seed in seeds:
            entries.append(
                {
                    "name": experiment_name(scale, group, row, seed),
                    "row": row,
                    "seed": seed,
                    "overrides": {**merged, **dict.fromkeys(SEED_KEYS, seed)},
                }
            )
    return entries


def planned_runs(plan: dict, group: str, scale: str) -> list[tuple[str, dict]]:
    """(experiment name, overrides) per experiment of a group at this scale (one per seed of a seeded row)."""
    return [(entry["name"], entry["overrides"]) for entry in planned_entries(plan, group, scale)]


def hydra_value(value) -> str:
    """A YAML value written in the override grammar `dvc exp run -S` parses (Hydra's)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _BARE.match(text) and text.lower() not in ("null", "true", "false") and not _looks_numeric(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def queue_command(name: str, overrides: dict) -> list[str]:
    command = [*DVC, "exp", "run", "--queue", "-n", name]
    for key, value in overrides.items():
        command += ["-S", f"{key}={hydra_value(value)}"]
    return command


def dvc_command(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run([*DVC, *args], check=check, text=True, capture_output=True)


def queue_status() -> dict[str, str]:
    """Experiment name -> lower-case status, from `dvc queue status`."""
    statuses = {}
    for line in dvc_command("queue", "status").stdout.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[-1].lower() in {"queued", "running", "success", "failed"}:
            statuses[fields[1]] = fields[-1].lower()
    return statuses


def check_committed() -> None:
    """Queued runs copy git-tracked files only: an uncommitted new module would be missing from every run."""
    status = subprocess.run(
        [
            "git",
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            "ctxsynth",
            "stages",
            "experiments",
            "dvc.yaml",
            "params.yaml",
        ],
        text=True,
        capture_output=True,
    ).stdout
    untracked = [line[3:] for line in status.splitlines() if line.startswith("??")]
    if untracked:
        raise SystemExit(
            "experiments: queued runs see only git-tracked files; add or remove these first: "
            + ", ".join(untracked[:8])
        )


def select_rows(plan: dict, group: str, scale: str, rows: list[str] | None) -> list[tuple[str, dict]]:
    """The group's runs at this scale, or only the named rows with all their seeds (an unknown row is an error, not a
    silent no-op)."""
    entries = planned_entries(plan, group, scale)
    if not rows:
        return [(entry["name"], entry["overrides"]) for entry in entries]
    known = list(dict.fromkeys(entry["row"] for entry in entries))
    unknown = [row for row in rows if row not in known]
    if unknown:
        raise InputError(
            PLAN,
            f"group {group!r} has no row {', '.join(unknown)} at scale {scale}; rows: " + ", ".join(known),
            field=f"groups.{group}.rows",
        )
    return [(entry["name"], entry["overrides"]) for entry in entries if entry["row"] in rows]


def finished_experiments() -> set[str]:
    """Names of the experiments that ran to the end and are kept as refs, on any commit (`dvc exp list -A`): a commit
    made while a group runs must not make its finished rows look missing."""
    return set(dvc_command("exp", "list", "--all-commits", "--name-only", check=False).stdout.split())


def planned_names(plan: dict) -> dict[str, dict]:
    """Experiment name -> {group, row, seed, scale, overrides} for every experiment (row x seed) of every group at
    every scale; seed is None for a row run once."""
    names = {}
    for group in plan["groups"]:
        for scale in SCALES:
            for entry in planned_entries(plan, group, scale):
                names[entry["name"]] = {
                    "group": group,
                    "row": entry["row"],
                    "seed": entry["seed"],
                    "scale": scale,
                    "overrides": entry["overrides"],
                    "order": len(names),
                }
    return names


def collected_experiments(plan: dict, results: Path | None = None) -> set[str]:
    """Names of the experiments already collected into the committed results file with their per-document scores and
    the overrides the plan gives them now: refs stay on the machine that ran them, so on a fresh clone this is what a
    resumed group must not pay for again (the report renders these rows from the file, ctxsynth/paper/collect.py)."""
    results = results or RESULTS
    if not results.is_file():
        return set()
    stored = json.loads(results.read_text(encoding="utf-8")).get("experiments") or {}
    planned = planned_names(plan)
    return {
        name
        for name, row in stored.items()
        if row.get("per_document") and name in planned and row.get("overrides") == planned[name]["overrides"]
    }


def missing_cached_outputs(lock: Path = Path("dvc.lock")) -> list[str]:
    """Outputs of the committed dvc.lock, with a file inside them that another stage depends on (data/benchmark
    holding reserved.json), whose content is not in the DVC cache. A queued row starts from that lock, and DVC reads
    such a directory's listing from the cache to hash the file: on a fresh clone every row fails until `dvc repro`
    has built them once."""
    if not lock.is_file():
        return []
    stages = yaml.safe_load(lock.read_text(encoding="utf-8")).get("stages") or {}
    deps = {dep["path"] for stage in stages.values() for dep in stage.get("deps") or []}
    cache = Path(dvc_command("cache", "dir", check=False).stdout.strip() or ".dvc/cache") / "files" / "md5"
    missing = []
    for name, stage in stages.items():
        for out in stage.get("outs") or []:
            md5, inside = out.get("md5") or "", [d for d in deps if d.startswith(out["path"] + "/")]
            if md5.endswith(".dir") and inside and not (cache / md5[:2] / md5[2:]).exists():
                missing.append(f"{out['path']} ({name})")
    return missing


def queue_group(
    plan: dict,
    group: str,
    scale: str,
    dry_run: bool = False,
    rows: list[str] | None = None,
    keep_finished: bool = False,
) -> list[str]:
    """Queue the selected rows; keep_finished: leave out experiments that already finished (a rerun after a kill), as
    local refs or as runs collected into the committed results file (a resume on another clone)."""
    selected = select_rows(plan, group, scale, rows)
    if not dry_run:
        check_committed()
    finished = finished_experiments() | collected_experiments(plan) if keep_finished and not dry_run else set()
    names = []
    for name, overrides in selected:
        if name in finished:
            print(f"{name}: finished earlier, kept")
            continue
        command = queue_command(name, overrides)
        print(" ".join(command))
        if not dry_run:
            # A finished experiment of the same name would make the queue refuse the new one: replace it.
            dvc_command("exp", "remove", name, check=False)
            subprocess.run(command, check=True)
        names.append(name)
    return names


def wait_for(names: list[str], poll_seconds: float) -> dict[str, str]:
    """Experiment name -> final queue status ("unknown": no longer in the queue)."""
    from ctxsynth.paper.logs import report_until_finished

    def read() -> dict[str, str]:
        statuses = queue_status()
        return {name: statuses.get(name, "unknown") for name in names}

    return report_until_finished(read, lambda status: status in _FINISHED or status == "unknown", poll_seconds)


def run_history(entry: dict) -> list[dict]:
    """One group's runs, oldest first (an entry written before partial runs existed is one run of all its rows)."""
    if "history" in entry:
        return entry["history"]
    return [
        {
            "scale": entry["scale"],
            "wall_seconds": entry["wall_seconds"],
            "finished": entry["finished"],
            "rows": sorted(entry["statuses"]),
        }
    ]


def record_run(
    group: str,
    scale: str,
    started: float,
    outcome: dict[str, str],
    path: Path = RUNS_LOG,
    environment: dict[str, str] | None = None,
    jobs: int = 1,
    note: str | None = None,
) -> None:
    """How long each run of a group took here, and how it ran (queue workers, threads each: on 2 cores they changed the
    wall time by 1.3x), for the report, the README and benchmarks/cpu_budget.py (metrics/paper_runs.json)."""
    from ctxsynth.core.io import write_json

    runs = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    entry = runs.get(group) or {}
    history = run_history(entry) if entry else []
    history.append(
        {
            "scale": scale,
            "wall_seconds": round(time.time() - started),
            "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "rows": sorted(outcome),
            "note": (note or f"{jobs} queue worker{'s' if jobs > 1 else ''}")
            + f", OMP_NUM_THREADS={(environment or {}).get('OMP_NUM_THREADS', 'unset (all cores)')}",
        }
    )
    runs[group] = {**entry, "statuses": {**entry.get("statuses", {}), **outcome}, "history": history}
    write_json(path, runs)


def preflight_group(
    plan: dict,
    group: str,
    scale: str,
    params_path: Path,
    gpu_memory_gib: float,
    rows: list[str] | None = None,
    gpus: int | None = None,
) -> int:
    """Every run of the group checked with its resolved params (ctxsynth/preflight/rows.py); a table, then one
    line per problem naming the row and the key; exit 2 on any problem."""
    from ctxsynth.core.io import read_text_utf8
    from ctxsynth.preflight.environment import cuda_available
    from ctxsynth.preflight.rows import check_row, render, with_overrides

    params = yaml.safe_load(read_text_utf8(params_path))
    results = [
        check_row(name, with_overrides(params, overrides), gpu_memory_gib, gpus)
        for name, overrides in select_rows(plan, group, scale, rows)
    ]
    print(render(results))
    for line in [line for result in results for line in result.warnings + result.problems]:
        print(line, file=sys.stderr)
    engines = sorted({engine for result in results for engine in result.engines})
    if engines and not cuda_available():
        print("engines the rows need that this machine lacks (no CUDA device here: notes for the GPU machine):")
        for key, message in engines:
            print(f"  {key}: {message}")
    return 2 if any(result.problems for result in results) else 0


def reference_numbers() -> dict[tuple[str, str], list[str]]:
    """(group, row) -> the paper's numbers its gpu row produces ("LLaMA3.1-8B 38.57"), from paper_reference.yaml,
    whose tables name per column the group that produces it."""
    from importlib import resources

    text = resources.files("ctxsynth.paper").joinpath("paper_reference.yaml").read_text(encoding="utf-8")
    produced: dict[tuple[str, str], list[str]] = {}
    for table in yaml.safe_load(text).values():
        if not isinstance(table, dict) or "groups" not in table:
            continue
        for row, values in table["rows"].items():
            for group, column, value in zip(table["groups"], table["columns"], values, strict=True):
                produced.setdefault((group, row), []).append(f"{column} {value:.2f}")
    return produced


def worker_environment(jobs: int, cpus: int | None = None) -> dict[str, str]:
    """The queue workers' environment: this interpreter's bin first on PATH, and the cores split between them unless
    the user set a thread count.

    torch sizes its thread pool to every core; two workers that each do so spin against each other and train
    several times slower than one. Like any change of machine, the thread count may move the last bits of trained
    weights (float sums in another order); the data artifacts do not depend on it.
    """
    env = dict(os.environ)
    # The workers start `dvc` by name, and stages/python falls back to python3 on PATH in a queue's temporary
    # workspace (no .venv there): both must be this interpreter's, venv or not.
    bin_dir = str(Path(sys.executable).parent)
    others = [entry for entry in env.get("PATH", "").split(os.pathsep) if entry and entry != bin_dir]
    env["PATH"] = os.pathsep.join([bin_dir, *others])
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (cpus or os.cpu_count() or 1) // jobs))
    return env
