"""The mix stage's general data (`mix.general`): the short instruction data the paper's long samples are added to.

`load_general` reads a chat-format JSONL or Parquet file, or a hub dataset (online only), in `messages` format or
ShareGPT's `conversations` format, and takes a count or a ratio of the long samples. A file must be a dependency of
the mix stage (inputs/general, or data/general from the `general` stage); a hub dataset is read at the commit sha its
default branch resolves to, recorded as `revision` in the report (metrics/mix.json).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ctxsynth.core.chat import general_chat_sample, validate_messages
from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.hub import is_local, resolve_revision
from ctxsynth.core.io import InputError, SkippedRecord, read_jsonl_numbered
from ctxsynth.core.settings import coerce
from ctxsynth.core.text import stable_int
from ctxsynth.mix.settings import GeneralSourceSettings

LOCAL_SUFFIXES = (".jsonl", ".parquet")  # a mix.general.source ending so, or an existing path, is a local file
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


def _normalize_messages(record: dict, where: str, line: int | None) -> list[dict]:
    if isinstance(record.get("messages"), list):
        for index, message in enumerate(record["messages"]):
            if not isinstance(message, dict):
                raise InputError(where, "expected an object", line=line, field=f"messages[{index}]")
        return [{"role": m.get("role"), "content": m.get("content")} for m in record["messages"]]
    turns = record.get("conversations")
    if isinstance(turns, list):
        messages = []
        for index, turn in enumerate(turns):
            role = SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise InputError(
                    where, f"unknown speaker {turn.get('from')!r}", line=line, field=f"conversations[{index}].from"
                )
            messages.append({"role": role, "content": turn.get("value")})
        return messages
    raise InputError(
        where,
        "no chat turns: expected `messages` (role/content) or `conversations` (from/value)",
        line=line,
        field="messages",
    )


def require_general_source(options: GeneralSourceSettings) -> None:
    """A local `mix.general.source` exists and is a dependency of the mix stage (inputs/general, or the general
    stage's data/general), so `dvc repro` sees it change; a hub id is resolved when it is read."""
    source = options.source
    if not source or not is_local(str(source), LOCAL_SUFFIXES):
        return
    path = Path(source)
    if not path.exists():
        raise InputError(
            "params.yaml",
            f"{str(source)!r}: no such file (build data/general/train.jsonl with the `general` stage, or name a "
            "chat-format JSONL / Parquet file under inputs/general, or a hub dataset)",
            field="mix.general.source",
        )
    require_tracked(path, "mix", "mix.general.source")


def _read_rows(
    source: str, split: str, pinned: str | None = None, data_files: str | None = None
) -> tuple[list[tuple[int, dict]], str | None]:
    """(line, row) pairs of `source`, and the commit sha a hub dataset was read at (None for a local file)."""
    path = Path(source)
    if is_local(source, LOCAL_SUFFIXES):
        require_general_source(GeneralSourceSettings(source=source))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return [(index + 1, row) for index, row in enumerate(pq.read_table(path).to_pylist())], None
        return read_jsonl_numbered(path), None
    try:  # a hub dataset name, e.g. HuggingFaceH4/ultrachat_200k (needs the network)
        import datasets

        revision = resolve_revision(source, pinned, "dataset")
        # Without data_files a repository of several JSON dumps (ShareGPT_Vicuna_unfiltered) is read whole.
        files = {"data_files": data_files} if data_files else {}
        dataset = datasets.load_dataset(source, split=split, revision=revision, **files)
    except Exception as error:  # noqa: BLE001 - the message must name the parameter, whatever the cause
        raise InputError(
            "params.yaml",
            f"mix.general.source {source!r} is neither a .jsonl / .parquet file nor a "
            f"loadable hub dataset ({type(error).__name__}: {error})",
            field="mix.general.source",
        ) from None
    return [(index + 1, dict(row)) for index, row in enumerate(dataset)], revision


def load_general(
    options: GeneralSourceSettings | Mapping | None, long_samples: int, seed: int
) -> tuple[list[dict], dict]:
    """The general samples `mix.general` asks for: {source, split, count | ratio}; ([], {}) when source is null."""
    options = coerce(GeneralSourceSettings, options or {}, "mix.general")
    source = options.source
    if not source:
        return [], {}
    count, ratio = options.count, options.ratio
    rows, revision = _read_rows(str(source), options.split or "train", options.revision, options.data_files)
    samples, trimmed = [], 0
    skipped: list[SkippedRecord] = []
    for line, record in rows:
        # Real chat dumps (ShareGPT above all) hold broken conversations: as LongAlign does, a trailing unanswered
        # user turn is dropped, and a conversation that still breaks the schema is skipped and counted, not fatal.
        try:
            messages = _normalize_messages(record, str(source), line)
            if isinstance(messages, list) and len(messages) > 2 and (messages[-1] or {}).get("role") == "user":
                messages, trimmed = messages[:-1], trimmed + 1
            validate_messages(str(source), line, messages)
        except InputError as error:
            skipped.append({"line": line, "field": error.field, "reason": str(error).split(": ", 1)[-1]})
            continue
        sample_id = str(record.get("id") or f"general:{Path(str(source)).stem}:{line}")
        samples.append(general_chat_sample(sample_id, str(record.get("source") or source), messages))
    if rows and not samples:
        first = skipped[0]
        raise InputError(
            str(source),
            f"{first['reason']} (no usable conversation: all {len(rows)} break the chat schema)",
            line=first["line"],
            field=first["field"],
        )
    wanted = int(count) if count is not None else (round(float(ratio) * long_samples) if ratio is not None else None)
    if wanted is not None and wanted < len(samples):
        samples = sorted(samples, key=lambda s: stable_int(seed, "mix", "general", s["id"]))[:wanted]
    samples.sort(key=lambda s: s["id"])
    report = {"source": str(source), "available": len(rows), "samples": len(samples)}
    if skipped or trimmed:  # what was left out or cut, and why (the first few, to find them in the source)
        report["skipped"] = len(skipped)
        report["trailing_user_turns_dropped"] = trimmed
        report["skipped_examples"] = skipped[:5]
    if revision is not None:
        report["revision"] = revision  # the hub dataset's commit sha: what was read, not just its name
    return samples, report
