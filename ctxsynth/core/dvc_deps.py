"""Files that a parameter names must be dependencies of the stage that reads them, or `dvc repro` cannot see them
change. DVC cannot take a dependency list from params.yaml, so each such input lives under a directory the stage
declares in dvc.yaml (`inputs/seeds`, `inputs/models`, `inputs/general`, `inputs/longbench`, or a pipeline output
such as `data/general`); a path anywhere else is refused before any work, naming the key that gave it."""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

import yaml

from ctxsynth.core.io import InputError

PIPELINE = Path("dvc.yaml")
# The dvc installed beside this interpreter: a queue or `dvc add` started from `.venv/bin/python` works with the venv
# off PATH.
DVC = [sys.executable, "-m", "dvc"]


@lru_cache(maxsize=8)
def _stages(pipeline: Path, mtime: float) -> dict[str, dict]:
    return (yaml.safe_load(pipeline.read_text(encoding="utf-8")) or {}).get("stages", {})


def pipeline_stages(pipeline: Path = PIPELINE) -> dict[str, dict]:
    """The stages of dvc.yaml by name ({} where there is no pipeline: a library call, a test)."""
    return _stages(pipeline.resolve(), pipeline.stat().st_mtime) if pipeline.is_file() else {}


def _declared_deps(pipeline: Path, mtime: float) -> dict[str, list[Path]]:
    root = pipeline.resolve().parent
    return {name: [root / dep for dep in stage.get("deps", [])] for name, stage in _stages(pipeline, mtime).items()}


def _out_path(out: str | dict) -> str:
    return out if isinstance(out, str) else next(iter(out))


def producing_stage(path: os.PathLike | str, pipeline: Path = PIPELINE) -> str | None:
    """The stage of dvc.yaml whose declared output holds `path` (data/general/train.jsonl: `general`), or None.

    Such a file may not exist before `dvc repro` builds it (a fresh clone, a queued experiment's empty workspace),
    so a check made before the pipeline runs must not demand it."""
    if not pipeline.is_file():
        return None
    root = pipeline.resolve().parent
    resolved = Path(path).resolve()
    for name, stage in _stages(pipeline.resolve(), pipeline.stat().st_mtime).items():
        for out in stage.get("outs", []):
            target = root / _out_path(out)
            if resolved == target or target in resolved.parents:
                return name
    return None


def declared_deps(stage: str, pipeline: Path = PIPELINE) -> list[Path] | None:
    """The absolute dependency paths of `stage` in dvc.yaml; None outside a DVC pipeline (a library call, a test)."""
    if not pipeline.is_file():
        return None
    return _declared_deps(pipeline.resolve(), pipeline.stat().st_mtime).get(stage)


def require_tracked(
    path: os.PathLike | str,
    stage: str,
    key: str,
    source: str = "params.yaml",
    pipeline: Path = PIPELINE,
    built_by_pipeline: bool = False,
) -> Path:
    """`path` as given, once it is known to exist and to lie under one of `stage`'s declared dependencies.

    built_by_pipeline: a missing path is accepted when a stage of dvc.yaml outputs it (preflight runs first)."""
    path = Path(path)
    if not path.exists() and not (built_by_pipeline and producing_stage(path, pipeline)):
        raise InputError(source, f"{str(path)!r} does not exist", field=key)
    deps = declared_deps(stage, pipeline)
    if deps is None:
        return path
    resolved = path.resolve()
    if not any(resolved == dep or dep in resolved.parents for dep in deps):
        roots = sorted(
            str(dep.relative_to(pipeline.resolve().parent))
            for dep in deps
            if dep.is_dir() and dep.relative_to(pipeline.resolve().parent).parts[0] == "inputs"
        )
        where = " or ".join(roots) if roots else "a directory listed in its deps"
        inside = path.absolute().parent.resolve() / path.name  # the link itself, not its target
        if any(inside == dep or dep in inside.parents for dep in deps):  # under a dep, but a link leads out of it
            raise InputError(
                source,
                f"{str(path)!r} is a link to {str(resolved)!r}, outside the deps of stage {stage!r} in dvc.yaml: DVC "
                "would not see the file it points to change; copy the file itself there",
                field=key,
            )
        raise InputError(
            source,
            f"{str(path)!r} is not a dependency of stage {stage!r} in dvc.yaml, so `dvc repro` would not see it "
            f"change: move it under {where} (or add it to the stage's deps)",
            field=key,
        )
    return path
