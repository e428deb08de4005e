"""Seed instruction-answer pairs from configurable sources, disjoint from every evaluation item.

A seed record: {id, task, instruction, answer, context (human context or null), source}.
Sources (params `seed.sources`, a list):
- paper:    a directory in the paper's layout (seed_instruction/<task>.jsonl, optional seed_context/<task>.jsonl)
- squad:    answerable SQuAD v2 dev questions with their human paragraph
- hotpotqa: HotpotQA dev-distractor questions with their gold and distractor paragraphs
- jsonl:    any file with `instruction`, `answer`, optional `context` and `task`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.io import InputError, read_json, read_jsonl_numbered
from ctxsynth.core.settings import coerce
from ctxsynth.core.tasks import get_task
from ctxsynth.core.text import normalize_text, stable_int
from ctxsynth.prepare.benchmark import format_passages, hotpot_passage, squad_paragraphs
from ctxsynth.prepare.settings import SeedSource


def seed_record(task: str, item_id: str, instruction: str, answer: str, context: str | None, source: str) -> dict:
    return {
        "id": item_id,
        "task": task,
        "instruction": instruction,
        "answer": answer,
        "context": context,
        "source": source,
    }


def _task_name(name: str, where: str) -> str:
    try:
        return get_task(name).name
    except KeyError as error:
        raise InputError(where, str(error.args[0]), field="task") from None


def _string_field(record: dict, field: str, path: Path, line: int) -> str:
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise InputError(path, "must be a non-empty string", line=line, field=field)
    return value


def load_paper_seeds(directory: Path, tasks: list[str] | None, key: str = "seed.sources[].tasks") -> list[dict]:
    """The paper's seed release in `directory`; every name in `tasks` (the params key `key`) must match a file."""
    instructions_dir = directory / "seed_instruction"
    if not instructions_dir.is_dir():
        raise InputError(directory, "not a paper seed directory (no seed_instruction/ inside)")
    files = sorted(instructions_dir.glob("*.jsonl"))
    wanted = set(tasks) if tasks else None
    stems = {path.stem for path in files}
    for index, name in enumerate(tasks or []):
        if name not in stems:
            raise InputError(
                "params.yaml",
                f"no seed file {name}.jsonl in {instructions_dir} (available: {', '.join(sorted(stems)) or 'none'})",
                field=f"{key}[{index}]",
            )
    records = []
    for path in files:
        if wanted is not None and path.stem not in wanted:
            continue
        task = _task_name(path.stem, str(path))
        rows = read_jsonl_numbered(path, required=("instruction", "answer"))
        if not rows:
            raise InputError(path, "empty task: no seeds")
        context_path = directory / "seed_context" / path.name
        contexts = [None] * len(rows)
        if context_path.is_file():
            context_rows = read_jsonl_numbered(context_path, required=("context",))
            if [line for line, _ in context_rows] != [line for line, _ in rows]:
                raise InputError(
                    context_path,
                    f"has {len(context_rows)} records but {path.name} has {len(rows)} "
                    "(or blank lines elsewhere); the files must be line-aligned",
                )
            contexts = [row["context"] for _, row in context_rows]
        for (line, row), context in zip(rows, contexts):
            records.append(
                seed_record(
                    task,
                    f"paper:{path.stem}:{line}",
                    _string_field(row, "instruction", path, line),
                    _string_field(row, "answer", path, line),
                    context,
                    "paper",
                )
            )
    if wanted is not None and not records:
        raise InputError(instructions_dir, f"no seed files for tasks {sorted(wanted)}")
    return records


def load_squad_seeds(squad_path: Path, task: str) -> list[dict]:
    records = []
    for paragraph in squad_paragraphs(read_json(squad_path)):
        for question in paragraph["questions"]:
            records.append(
                seed_record(
                    task,
                    f"squad:{question['id']}",
                    question["question"],
                    question["answers"][0],
                    paragraph["text"],
                    "squad",
                )
            )
            records[-1]["paragraph"] = paragraph["key"]
    return records


def load_hotpotqa_seeds(hotpot_path: Path, task: str) -> list[dict]:
    records = []
    for example in read_json(hotpot_path):
        context = format_passages([hotpot_passage(t, s) for t, s in example["context"]])
        records.append(
            seed_record(
                task, f"hotpotqa:{example['_id']}", example["question"].strip(), example["answer"], context, "hotpotqa"
            )
        )
    return records


def load_jsonl_seeds(path: Path, default_task: str | None) -> list[dict]:
    rows = read_jsonl_numbered(path, required=("instruction", "answer"))
    if not rows:
        raise InputError(path, "empty file: no seeds")
    records = []
    for line, row in rows:
        task = row.get("task") or default_task
        if not task:
            raise InputError(path, "no task given (set it per line or as the source's `task`)", line=line, field="task")
        context = row.get("context")
        if context is not None and not isinstance(context, str):
            raise InputError(path, "must be a string or null", line=line, field="context")
        records.append(
            seed_record(
                _task_name(task, f"{path}, line {line}"),
                str(row.get("id", f"jsonl:{path.stem}:{line}")),
                _string_field(row, "instruction", path, line),
                _string_field(row, "answer", path, line),
                context,
                "jsonl",
            )
        )
    return records


def load_source(source: SeedSource, raw_dir: Path, key: str = "seed.sources[]") -> list[dict]:
    """The records of one `seed.sources` entry (`key` names it in errors)."""
    if source.type == "paper":
        return load_paper_seeds(Path(source.path), source.tasks, f"{key}.tasks")
    if source.type == "squad":
        return load_squad_seeds(raw_dir / "squad.json", _task_name(source.resolved_task, "params.yaml"))
    if source.type == "hotpotqa":
        return load_hotpotqa_seeds(raw_dir / "hotpotqa.json", _task_name(source.resolved_task, "params.yaml"))
    return load_jsonl_seeds(Path(source.path), source.resolved_task)  # jsonl: the settings allow nothing else


def is_reserved(record: dict, reserved: dict) -> bool:
    source_id = record["id"].split(":", 1)[-1]
    return (
        source_id in reserved["ids"]
        or normalize_text(record["instruction"]) in reserved["questions"]
        or record.get("paragraph") in reserved["paragraphs"]
    )


def require_source_paths(sources: Sequence[SeedSource]) -> None:
    """Every file a `seed.sources[i].path` names exists and is a dependency of the seed stage (inputs/seeds), so
    `dvc repro` sees it change; checked for all sources before any is read."""
    for index, source in enumerate(sources):
        if source.path:
            require_tracked(source.path, "seed", f"seed.sources[{index}].path")


def select_seeds(
    sources: Sequence[SeedSource | Mapping], raw_dir: Path, reserved: dict, seed: int
) -> tuple[list[dict], dict]:
    """Load every source (`seed.sources`), drop reserved items, sample `count` per (source, task) with a seeded
    generator. A source that yields nothing (no records, or only items reserved for evaluation) is an error."""
    sources = [coerce(SeedSource, source, f"seed.sources[{index}]") for index, source in enumerate(sources)]
    require_source_paths(sources)
    reserved = {
        "ids": set(reserved.get("ids", [])),
        "questions": set(reserved.get("questions", [])),
        "paragraphs": set(reserved.get("paragraphs", [])),
    }
    selected, report = [], {}
    for index, source in enumerate(sources):
        key = f"seed.sources[{index}]"
        records = load_source(source, raw_dir, key)
        if not records:
            raise InputError("params.yaml", f"the {source.type} source yields no seeds", field=key)
        if all(is_reserved(record, reserved) for record in records):
            raise InputError(
                "params.yaml",
                f"the {source.type} source yields no seeds: all {len(records)} are reserved for evaluation",
                field=key,
            )
        by_task: dict[str, list[dict]] = {}
        for record in records:
            by_task.setdefault(record["task"], []).append(record)
        for task in sorted(by_task):
            kept = [r for r in by_task[task] if not is_reserved(r, reserved)]
            removed = len(by_task[task]) - len(kept)
            count = source.count
            if count is not None and count < len(kept):
                # Rank by a seeded hash of each id rather than drawing positions: reserving a different evaluation
                # item, or adding items to a source, then changes only the seeds it touches (and their generations).
                ranked = sorted(kept, key=lambda r: stable_int(seed, source.type, task, r["id"]))
                chosen = {r["id"] for r in ranked[: int(count)]}
                kept = [r for r in kept if r["id"] in chosen]
            for record in kept:
                record.pop("paragraph", None)
            selected += kept
            entry = report.setdefault(task, {"available": 0, "removed_reserved": 0, "selected": 0})
            entry["available"] += len(by_task[task])
            entry["removed_reserved"] += removed
            entry["selected"] += len(kept)
    ids = [r["id"] for r in selected]
    if len(ids) != len(set(ids)):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise InputError("params.yaml", f"seed ids repeat across sources: {duplicates}", field="seed.sources")
    return selected, report


def seeds_by_task(seeds: list[dict]) -> dict[str, list[dict]]:
    """The selected seeds grouped per task, tasks in sorted order (one data/seed/<task>.jsonl each)."""
    by_task: dict[str, list[dict]] = {}
    for record in seeds:
        by_task.setdefault(record["task"], []).append(record)
    return dict(sorted(by_task.items()))


def seed_metrics(seeds: list[dict], report: dict) -> dict:
    """metrics/seed.json: per-task counts, the total, and how many items were removed as reserved for evaluation."""
    return {
        "tasks": report,
        "total": len(seeds),
        "removed_reserved": sum(entry["removed_reserved"] for entry in report.values()),
    }


def read_seed_dir(directory: Path) -> list[dict]:
    """The seed stage's output: every data/seed/<task>.jsonl, in task order."""
    return [
        record
        for path in sorted(Path(directory).glob("*.jsonl"))
        for _, record in read_jsonl_numbered(path, required=("id", "task", "instruction", "answer"))
    ]
