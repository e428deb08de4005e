"""Prior long-context SFT datasets as the long samples of the mix (variant prior_long): the paper's main table adds
LongAlpaca-12k, LongAlign-10k and LongMIT to the same general data as context synthesis.

Each dataset is read in its own release layout (long_sft.yaml) and becomes single- or multi-turn chat samples:

- longalpaca (hub Yukang/LongAlpaca-12k, file LongAlpaca-12k.json): one JSON list of {instruction, output, input,
  file}; `instruction` holds the document and the question. Checked against dvlab-research/LongLoRA's
  supervised-fine-tune.py (`jload` of the one JSON file, sources = example["instruction"], targets =
  example["output"]; its Alpaca `input` prompt is commented out), the hub repo's file list (one 498 MB
  LongAlpaca-12k.json) and a third-party loader noting `input` and `file` null in the rows it sampled.
- longalign (hub THUDM/LongAlign-10k, file long.jsonl): JSON lines of {messages: [{role, content}, ...]}. Checked
  against THUDM/LongAlign's README (the `messages` format, saved as data/raw/long.jsonl) and pre_tokenize.py, which
  reads json.loads(line)['messages'], drops an odd trailing message and trains on every assistant turn: multi-turn
  conversations are kept whole here too.
- longmit (hub donmaclean/LongMIT-128K, file train.jsonl; paper arXiv 2409.01893, code github WowCZ/LongMIT):
  JSON lines of {all_docs: [{content, ...}], question, answer, type, language}. Checked against the dataset card's
  own conversion code (download_longmit_datasets): passages "Passage i:\\n" + content joined by newlines, the
  reasoning prompt for types inter_doc / intra_doc and the answer-only prompt otherwise, in en or zh.

A source is a hub dataset id, read with `datasets.load_dataset(source, split=, revision=sha)` at the commit sha its
revision resolves to (recorded), or a local .json / .jsonl / .parquet file under inputs/long_sft (its sha256 is
recorded). A record that breaks its layout is skipped and counted, with its line and field; a file where every
record does is an InputError. `count` records are kept, chosen by a seeded hash of the sample id.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path

import yaml

from ctxsynth.core.chat import validate_messages
from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.hub import is_local, resolve_revision
from ctxsynth.core.io import InputError, SkippedRecord, read_jsonl_numbered, read_text_utf8, sha256_file
from ctxsynth.core.settings import coerce
from ctxsynth.core.text import stable_int
from ctxsynth.mix.settings import PRIOR_LONG, LongSourceSettings

RESOURCE = Path(__file__).with_name("long_sft.yaml")
LOCAL_SUFFIXES = (".json", ".jsonl", ".parquet")  # a mix.long_source.source ending so, or an existing path, is local
KEY = "mix.long_source.source"
SKIPPED_EXAMPLES = 5  # how many skipped records the report lists (all are counted)


@lru_cache(maxsize=1)
def layouts() -> dict:
    return yaml.safe_load(RESOURCE.read_text(encoding="utf-8"))


def require_long_source(options: LongSourceSettings) -> None:
    """A local `mix.long_source.source` exists and lies under a dependency of the mix stage (inputs/long_sft), so
    `dvc repro` sees it change; a hub id is resolved when it is read."""
    if options.source and is_local(options.source, LOCAL_SUFFIXES):
        require_tracked(options.source, "mix", KEY)


# ------------------------------------------------------------------------------------------------------ reading


def read_json_list_numbered(path: Path) -> list[tuple[int, object]]:
    """(line, element) for each element of a file holding one JSON list (LongAlpaca-12k.json): the line each element
    starts on, so a bad record is found in the file as a JSONL record would be."""
    text = read_text_utf8(path)
    decoder = json.JSONDecoder()

    def skip(index: int) -> int:
        while index < len(text) and text[index] in " \t\r\n":
            index += 1
        return index

    def fail(index: int, message: str) -> InputError:
        return InputError(path, message, line=text.count("\n", 0, index) + 1)

    index = skip(0)
    if not text.startswith("[", index):
        raise fail(index, "expected one JSON list of records (LongAlpaca-12k.json's layout)")
    elements, index = [], skip(index + 1)
    while not text.startswith("]", index):
        try:
            element, end = decoder.raw_decode(text, index)
        except json.JSONDecodeError as error:
            raise fail(error.pos, f"malformed JSON ({error.msg})") from None
        elements.append((text.count("\n", 0, index) + 1, element))
        index = skip(end)
        if text.startswith(",", index):
            index = skip(index + 1)
        elif not text.startswith("]", index):
            raise fail(index, "expected ',' or ']' after a record")
    if skip(index + 1) != len(text):
        raise fail(index + 1, "text after the closing ']'")
    return elements


def read_records(options: LongSourceSettings) -> tuple[list[tuple[int, object]], dict]:
    """(line, record) pairs of the source, and what identifies what was read (file sha256 or hub commit sha)."""
    source = str(options.source)
    path = Path(source)
    if is_local(source, LOCAL_SUFFIXES):
        require_long_source(options)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq

            rows = [(index + 1, row) for index, row in enumerate(pq.read_table(path).to_pylist())]
        elif path.suffix == ".json":
            rows = read_json_list_numbered(path)
        else:
            rows = read_jsonl_numbered(path)
        return rows, {"sha256": sha256_file(path)}
    try:  # a hub dataset id, e.g. THUDM/LongAlign-10k (needs the network)
        import datasets

        revision = resolve_revision(source, options.revision, "dataset")
        dataset = datasets.load_dataset(source, split=options.split, revision=revision)
    except Exception as error:  # noqa: BLE001 - the message must name the parameter, whatever the cause
        raise InputError(
            "params.yaml",
            f"{source!r} is neither a .json / .jsonl / .parquet file nor a loadable hub dataset "
            f"({type(error).__name__}: {error})",
            field=KEY,
        ) from None
    return [(index + 1, dict(row)) for index, row in enumerate(dataset)], {"revision": revision}


# ------------------------------------------------------------------------------------------------- the layouts


def _text(record: dict, key: str, where: str, line: int) -> str:
    value = record.get(key)
    if not isinstance(value, str) or not value.strip():
        raise InputError(where, "missing, empty or not a string", line=line, field=key)
    return value


def longalpaca_messages(record: dict, where: str, line: int) -> list[dict]:
    """instruction (the document and the question; a non-empty `input` after a blank line) -> output."""
    instruction, output = _text(record, "instruction", where, line), _text(record, "output", where, line)
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise InputError(where, f"expected a string or null, got {type(extra).__name__}", line=line, field="input")
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]


def longalign_messages(record: dict, where: str, line: int) -> list[dict]:
    """Its own messages, every turn kept; as LongAlign's pre_tokenize.py does, an unanswered last turn is dropped."""
    messages = record.get("messages")
    if not isinstance(messages, list):
        raise InputError(where, "expected a list of {role, content}", line=line, field="messages")
    if len(messages) > 2 and isinstance(messages[-1], dict) and messages[-1].get("role") == "user":
        messages = messages[:-1]
    validate_messages(where, line, messages)
    return [{"role": message["role"], "content": message["content"]} for message in messages]


def longmit_messages(record: dict, where: str, line: int) -> list[dict]:
    """The card's prompt around its numbered passages and question -> answer."""
    layout = layouts()["longmit"]
    docs = record.get("all_docs")
    if not isinstance(docs, list) or not docs:
        raise InputError(where, "expected a non-empty list of documents", line=line, field="all_docs")
    for index, doc in enumerate(docs):
        if not isinstance(doc, dict) or not isinstance(doc.get("content"), str):
            raise InputError(where, "missing or not a string", line=line, field=f"all_docs[{index}].content")
    question, answer = _text(record, "question", where, line), _text(record, "answer", where, line)
    language, kind = record.get("language"), record.get("type")
    if language not in layout["passage_label"]:
        known = " or ".join(layout["passage_label"])
        raise InputError(where, f"expected {known}, got {language!r}", line=line, field="language")
    if not isinstance(kind, str):
        raise InputError(where, "missing or not a string", line=line, field="type")
    label = layout["passage_label"][language]
    passages = "\n".join(label.format(number=number) + doc["content"] for number, doc in enumerate(docs, 1))
    prompt = layout["prompts"]["reasoning" if kind in layout["reasoning_types"] else "answer_only"][language]
    return [
        {"role": "user", "content": prompt.format(passages=passages, question=question)},
        {"role": "assistant", "content": answer},
    ]


CONVERTERS = {"longalpaca": longalpaca_messages, "longalign": longalign_messages, "longmit": longmit_messages}


# ----------------------------------------------------------------------------------------------------- loading


def load_long_sft(options: LongSourceSettings | Mapping | None, seed: int) -> tuple[list[dict], dict]:
    """The chat samples `mix.long_source` names, in file order, and their provenance; ([], {}) when source is null."""
    options = coerce(LongSourceSettings, options or {}, "mix.long_source")
    if not options.source:
        return [], {}
    source, layout = str(options.source), str(options.format)
    convert = CONVERTERS[layout]
    rows, identity = read_records(options)
    kept = []
    skipped: list[SkippedRecord] = []
    for line, record in rows:
        try:
            if not isinstance(record, dict):
                raise InputError(source, f"expected a JSON object, got {type(record).__name__}", line=line)
            messages = convert(record, source, line)
        except InputError as error:  # real releases hold a few broken records: skipped and counted, not fatal
            skipped.append({"line": line, "field": error.field, "reason": str(error).split(": ", 1)[-1]})
            continue
        sample_id = f"{layout}:{line}"
        kept.append(
            (line, {"id": sample_id, "task": layout, "variant": PRIOR_LONG, "source": source, "messages": messages})
        )
    if rows and not kept:
        first = skipped[0]
        raise InputError(
            source,
            f"{first['reason']} (no usable record: all {len(rows)} break the {layout} layout)",
            line=first["line"],
            field=first["field"],
        )
    if options.count is not None and options.count < len(kept):
        kept = sorted(kept, key=lambda pair: stable_int(seed, "mix", "long_source", pair[1]["id"]))[: options.count]
    samples = [sample for _, sample in sorted(kept, key=lambda pair: pair[0])]
    report = {
        "format": layout,
        "source": source,
        "layouts_version": layouts()["version"],
        "count": options.count,
        "available": len(rows),
        "skipped": len(skipped),
        "samples": len(samples),
        **identity,  # revision (the hub commit sha read) or sha256 (the local file's)
    }
    if skipped:
        report["skipped_examples"] = skipped[:SKIPPED_EXAMPLES]
    return samples, report
