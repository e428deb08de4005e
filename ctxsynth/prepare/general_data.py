"""General SFT data: the short instruction data the paper's long samples are added to (its "general data").

The paper uses ShareGPT / UltraChat from the hub. Offline, the registry data offers SQuAD v2, so `build_squad_chat`
turns answerable questions into single-turn chat samples answered from their own paragraph (a few hundred tokens
each). Paragraphs holding an evaluation item or a seed are left out: general data never leaks a test answer, and the
"general data only" row never sees the seeds' own pairs.

`load_general` reads what `mix.general` names: a chat-format JSONL or Parquet file, or a hub dataset (online only),
in `messages` format or ShareGPT's `conversations` format, and takes a count or a ratio of the long samples. A file
must be a dependency of the mix stage (inputs/general, or data/general from the `general` stage); a hub dataset is
read at the commit sha its default branch resolves to, recorded as `revision` in the report (metrics/mix.json).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import yaml

from ctxsynth.core.chat import validate_messages
from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.io import InputError, read_json, read_jsonl_numbered, sha256_file
from ctxsynth.core.settings import coerce
from ctxsynth.core.text import count_words, stable_int
from ctxsynth.prepare.benchmark import squad_paragraphs
from ctxsynth.prepare.settings import GeneralSettings, GeneralSourceSettings

RESOURCE = Path(__file__).with_name("general_data.yaml")
LOCAL_SUFFIXES = (".jsonl", ".parquet")  # a mix.general.source ending so, or an existing path, is a local file
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@lru_cache(maxsize=1)
def templates() -> dict:
    return yaml.safe_load(RESOURCE.read_text(encoding="utf-8"))


def chat_sample(sample_id: str, source: str, messages: list[dict]) -> dict:
    return {"id": sample_id, "task": "general", "variant": "general", "source": source, "messages": messages}


def build_squad_chat(
    squad: dict,
    exclude_question_ids: set[str],
    exclude_paragraphs: set[str],
    count: int | None,
    seed: int,
    max_paragraph_words: int = 400,
) -> tuple[list[dict], dict]:
    """Up to `count` SQuAD chat samples (one question per paragraph), ranked by a seeded hash of the question id."""
    template = templates()["squad_chat"]["template"]
    candidates, excluded = [], 0
    for paragraph in squad_paragraphs(squad):
        if paragraph["key"] in exclude_paragraphs or exclude_question_ids.intersection(paragraph["all_question_ids"]):
            excluded += 1
            continue
        if not paragraph["questions"] or count_words(paragraph["text"]) > max_paragraph_words:
            continue
        # One question per paragraph: many samples from one paragraph would teach that paragraph, not the format.
        question = min(paragraph["questions"], key=lambda q: stable_int(seed, "general", q["id"]))
        candidates.append((paragraph, question))
    candidates.sort(key=lambda pair: stable_int(seed, "general", pair[1]["id"]))
    chosen = candidates if count is None else candidates[: int(count)]
    samples = [
        chat_sample(
            f"general:squad:{q['id']}",
            "squad_chat",
            [
                {"role": "user", "content": template.format(paragraph=p["text"], question=q["question"])},
                {"role": "assistant", "content": q["answers"][0].strip()},
            ],
        )
        for p, q in chosen
    ]
    samples.sort(key=lambda s: s["id"])
    report = {"paragraphs_excluded": excluded, "candidates": len(candidates), "samples": len(samples)}
    return samples, report


def build_general(
    raw_dir: Path, reserved: dict, seeds: list[dict], settings: GeneralSettings
) -> tuple[list[dict], dict]:
    """The `general` stage: SQuAD chat samples that share no paragraph with an evaluation item or a SQuAD seed;
    returns the samples and their provenance (data/general/provenance.json)."""
    seed_ids = {record["id"].split(":", 1)[1] for record in seeds if record["id"].startswith("squad:")}
    squad_path = Path(raw_dir) / "squad.json"
    samples, report = build_squad_chat(
        read_json(squad_path),
        set(reserved.get("ids", [])) | seed_ids,
        set(reserved.get("paragraphs", [])),
        settings.count,
        settings.seed,
        settings.max_paragraph_words,
    )
    provenance = {
        "source": "squad_chat",
        "squad_sha256": sha256_file(squad_path),
        "templates_version": templates()["version"],
        "params": dataclasses.asdict(settings),
        "excluded_seed_questions": len(seed_ids),
        **report,
    }
    return samples, provenance


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


def is_local_source(source: str) -> bool:
    """A `mix.general.source` naming a local file (rather than a hub dataset id)."""
    return source.endswith(LOCAL_SUFFIXES) or Path(source).exists()


def require_general_source(options: GeneralSourceSettings) -> None:
    """A local `mix.general.source` exists and is a dependency of the mix stage (inputs/general, or the general
    stage's data/general), so `dvc repro` sees it change; a hub id is resolved when it is read."""
    source = options.source
    if not source or not is_local_source(str(source)):
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


def hub_dataset_revision(source: str, revision: str | None = None) -> str:
    """The commit sha `revision` of the hub dataset `source` names (null: its default branch now); the dataset is then
    loaded at that sha, so what was read is recorded even when the params named a branch or nothing."""
    from huggingface_hub import HfApi

    sha = HfApi().dataset_info(source, revision=revision).sha
    if not sha:
        raise ValueError("the hub returned no commit sha")
    return sha


def _read_rows(
    source: str, split: str, pinned: str | None = None, data_files: str | None = None
) -> tuple[list[tuple[int | None, dict]], str | None]:
    """(line, row) pairs of `source`, and the commit sha a hub dataset was read at (None for a local file)."""
    path = Path(source)
    if is_local_source(source):
        require_general_source(GeneralSourceSettings(source=source))
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            return [(index + 1, row) for index, row in enumerate(pq.read_table(path).to_pylist())], None
        return read_jsonl_numbered(path), None
    try:  # a hub dataset name, e.g. HuggingFaceH4/ultrachat_200k (needs the network)
        import datasets

        revision = hub_dataset_revision(source, pinned)
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
    samples, skipped, trimmed = [], [], 0
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
        samples.append(chat_sample(sample_id, str(record.get("source") or source), messages))
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
