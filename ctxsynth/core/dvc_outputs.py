"""A stage that fails puts back what `dvc repro` removed before running it.

DVC deletes a stage's outputs before it starts the command, so a stage that stops on bad input (`dvc repro -s`
skips the preflight) would leave the last good data gone. Instead, a failing stage script restores every cached
output that dvc.lock records and that is missing now, from the DVC cache (the md5 dvc.lock names). The git-tracked
metrics and plots are never removed: dvc.yaml marks them `persist` (DVC's run cache, which skips a stage whose
inputs it has seen before, does not serve such stages; the generation and lm-eval caches still do). What cannot be
put back is named with the command that would.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import yaml

from ctxsynth.core.dvc_deps import PIPELINE, pipeline_stages

LOCK = Path("dvc.lock")


def running_stage(argv: list[str], pipeline: Path = PIPELINE) -> str | None:
    """The stage of dvc.yaml whose command this process runs (`stages/python <script> <args>`: argv is the rest)."""
    stages = pipeline_stages(pipeline)
    return next((name for name, stage in stages.items() if str(stage.get("cmd", "")).split()[1:] == argv), None)


def locked_outputs(stage: str, lock: Path = LOCK) -> list[dict]:
    """What dvc.lock recorded for `stage`'s outputs at its last successful run: path and md5 of each."""
    if not lock.is_file():
        return []
    stages = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})
    return [out for out in (stages.get(stage) or {}).get("outs", []) if "md5" in out]


def _cache_path(md5: str) -> Path | None:
    from dvc.repo import Repo  # reading the cache's location takes no lock: safe inside a running `dvc repro`

    path = Path(Repo(".").cache.local.oid_to_path(md5))
    return path if path.is_file() else None


def _copy_into_place(files: dict[str, Path], target: Path, directory: bool) -> None:
    """Copy {relative path: source} to `target` (a directory, or the one file), renamed into place at the end."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for relative, source in files.items():
            destination = staging / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        os.replace(staging if directory else staging / target.name, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_from_cache(path: Path, md5: str) -> bool:
    manifest = _cache_path(md5)
    if manifest is None:
        return False
    if not md5.endswith(".dir"):
        _copy_into_place({path.name: manifest}, path, directory=False)
        return True
    entries = json.loads(manifest.read_text(encoding="utf-8"))
    files = {entry["relpath"]: _cache_path(entry["md5"]) for entry in entries}
    if any(source is None for source in files.values()):
        return False
    _copy_into_place({name: source for name, source in files.items() if source is not None}, path, directory=True)
    return True


def restore_outputs(stage: str) -> tuple[list[str], list[str]]:
    """Put back every output of `stage` that dvc.lock records and that is missing: (restored, not restorable)."""
    restored: list[str] = []
    lost: list[str] = []
    for out in locked_outputs(stage):
        path = Path(out["path"])
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        (restored if restore_from_cache(path, out["md5"]) else lost).append(str(path))
    return restored, lost
