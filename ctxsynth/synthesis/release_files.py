"""Released synthesized contexts as records on this machine (synthesize.backend: released).

Where the files come from (`synthesize.released.source`):
- a hub dataset id (online only): `revision` is resolved to a commit sha with `HfApi().dataset_info`, and every file
  is downloaded at that sha with `hf_hub_download`, so all files come from one commit, which is recorded;
- a directory under `inputs/released/`, a dependency of the synthesize stage in dvc.yaml, so `dvc repro` sees it change.

Each file's sha256 is checked against `synthesize.released.sha256` before it is read, and recorded either way. Records
are read by a layout of released_layouts.yaml (which JSON field holds task, instruction, answer, context). A malformed
record (not JSON, not an object, a field missing or not a string) is skipped and counted with its file, line and
field; when no usable record remains, the first one is the error.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import Path

import yaml

from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.hub import is_local, resolve_revision
from ctxsynth.core.io import InputError, decode_line, sha256_file
from ctxsynth.core.tasks import get_task

SOURCE_KEY = "synthesize.released.source"
VALUES = ("instruction", "answer", "context")  # the fields every layout maps; `task` may be null (one file per task)


@cache
def _layouts() -> dict:
    text = resources.files("ctxsynth.synthesis").joinpath("released_layouts.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def layout_names() -> list[str]:
    return list(_layouts()["layouts"])


def layout_fields(name: str) -> dict[str, str | None]:
    """{task, instruction, answer, context} -> the JSON field holding it in layout `name`."""
    return dict(_layouts()["layouts"][name]["fields"])


def layouts_version() -> int:
    return int(_layouts()["version"])


@dataclass(frozen=True)
class ReleasedRecord:
    file: str  # the release file, as synthesize.released.files names it
    line: int
    task: str | None  # our task name when the release's is known, else the release's own
    instruction: str
    answer: str
    context: str


@dataclass(frozen=True)
class Malformed:
    file: str
    line: int
    field: str | None
    reason: str  # what metrics count by
    detail: str = ""  # where in the line, for the error when nothing usable remains


@dataclass
class Release:
    source: str
    revision: str | None  # as pinned in params
    resolved_revision: str | None  # the hub commit sha the files were read at; None for a local directory
    layout: str
    files: dict[str, str]  # file -> sha256, in read order
    records: list[ReleasedRecord] = field(default_factory=list)
    malformed: list[Malformed] = field(default_factory=list)

    def provenance(self) -> dict:
        return {
            "source": self.source,
            "revision": self.revision,
            "resolved_revision": self.resolved_revision,
            "layout": self.layout,
            "layouts_version": layouts_version(),
            "files": dict(self.files),
        }


def hub_release_paths(source: str, revision: str | None, files: list[str]) -> tuple[dict[str, Path], str]:
    """Every file of hub dataset `source` at the commit `revision` resolves to now, and that sha."""
    try:
        from huggingface_hub import hf_hub_download

        sha = resolve_revision(source, revision, "dataset")
        paths = {
            name: Path(hf_hub_download(repo_id=source, filename=name, repo_type="dataset", revision=sha))
            for name in files
        }
    except Exception as error:  # offline, unknown repo or file, refused: one line naming the key
        message = " ".join(str(error).split())[:300]
        raise InputError(
            "params.yaml",
            f"cannot read hub dataset {source!r} (revision {revision or 'default'}; needs the network): "
            f"{type(error).__name__}: {message}",
            field=SOURCE_KEY,
        ) from None
    return paths, sha


def local_release_paths(source: str, files: list[str]) -> dict[str, Path]:
    """Every file in the release directory `source`, which must be a dependency of the synthesize stage."""
    directory = require_tracked(source, "synthesize", SOURCE_KEY)
    if not directory.is_dir():
        raise InputError("params.yaml", f"{source!r} is not a directory holding the release files", field=SOURCE_KEY)
    paths = {name: directory / name for name in files}
    for index, (name, path) in enumerate(paths.items()):
        if not path.is_file():
            raise InputError(
                "params.yaml", f"no file {name!r} in {source}", field=f"synthesize.released.files[{index}]"
            )
    return paths


def check_sha256(paths: dict[str, Path], expected: dict[str, str]) -> dict[str, str]:
    """file -> sha256 of every file; a file whose sha256 differs from its pinned one stops the run, naming it."""
    digests = {}
    for name, path in paths.items():
        digests[name] = sha256_file(path)
        if name in expected and digests[name] != expected[name]:
            raise InputError(
                path,
                f"sha256 is {digests[name]}, but synthesize.released.sha256 pins {expected[name]}: "
                "the file changed, or it is not the release you pinned",
            )
    return digests


def _task(value: str) -> str:
    try:
        return get_task(value).name
    except KeyError:  # a task we do not know still matches by instruction and answer
        return value


def read_release_file(path: Path, name: str, fields: dict[str, str | None]) -> tuple[list[ReleasedRecord], list]:
    """The usable records of one release file and its malformed ones (skipped, with line and field)."""
    records, malformed = [], []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(path, raw, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                detail = f" ({error.msg} at column {error.colno})"
                malformed.append(Malformed(name, number, None, "malformed JSON", detail))
                continue
            if not isinstance(row, dict):
                malformed.append(Malformed(name, number, None, f"expected a JSON object, got {type(row).__name__}"))
                continue
            wanted = ([] if fields.get("task") is None else ["task"]) + list(VALUES)
            bad = next((key for key in wanted if not isinstance(row.get(fields[key]), str)), None)
            if bad is not None:
                value = row.get(fields[bad])
                reason = "missing" if value is None else f"expected a string, got {type(value).__name__}"
                malformed.append(Malformed(name, number, fields[bad], reason))
                continue
            task = row[fields["task"]] if fields.get("task") else Path(name).stem
            records.append(
                ReleasedRecord(
                    file=name,
                    line=number,
                    task=_task(task),
                    instruction=row[fields["instruction"]],
                    answer=row[fields["answer"]],
                    context=row[fields["context"]].strip(),
                )
            )
    return records, malformed


def load_release(settings) -> Release:
    """The release `settings` (`synthesize.released`, a ReleasedSettings) names: files located, checked and read."""
    if is_local(settings.source):
        paths, resolved = local_release_paths(settings.source, settings.files), None
    else:
        paths, resolved = hub_release_paths(settings.source, settings.revision, settings.files)
    digests = check_sha256(paths, settings.sha256)
    release = Release(settings.source, settings.revision, resolved, settings.layout, digests)
    fields = layout_fields(settings.layout)
    for name, path in paths.items():
        records, malformed = read_release_file(path, name, fields)
        release.records += records
        release.malformed += malformed
    if not release.records:
        if release.malformed:
            first = release.malformed[0]
            raise InputError(
                paths[first.file],
                f"{first.reason}{first.detail}; no usable record in the release "
                f"({len(release.malformed)} malformed, layout {settings.layout!r})",
                line=first.line,
                field=first.field,
            )
        raise InputError(paths[settings.files[0]], "the release holds no records")
    return release
