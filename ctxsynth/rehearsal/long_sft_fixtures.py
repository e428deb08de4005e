"""Small stand-ins, in their release layouts, for the prior long SFT datasets of the paper's main table (read by
mix.variant prior_long through ctxsynth.mix.long_sft), each under the file name its hub release uses:

- LongAlpaca-12k/LongAlpaca-12k.json: one JSON list (4-space indented) of {instruction, output, input, file};
- LongAlign-10k/long.jsonl: {messages: [{role, content}, ...]}, two of them multi-turn;
- LongMIT-128K/train.jsonl: {all_docs: [{id, content}], question, answer, type, language}.

All text is invented (long_sft_fixtures.yaml; filler sentences from fixtures.yaml). Like a real release, each file
holds one broken record (BROKEN), which the loader skips and counts. Lengths and filler are chosen by hashes of the
record's name, never `random` or `hash()`, so a rerun writes the same bytes (tests/test_rehearsal_inputs.py).

    python -m ctxsynth.rehearsal.fixtures      # rewrites these too (inputs/long_sft/rehearsal)
"""

from __future__ import annotations

import json
import shutil
from functools import cache
from pathlib import Path

import yaml

from ctxsynth.core.text import count_words, stable_int
from ctxsynth.rehearsal.filler import filler  # the same filler sentences as the other fixtures

RESOURCE = Path(__file__).with_name("long_sft_fixtures.yaml")
COMMAND = "python -m ctxsynth.rehearsal.fixtures"
KIND, REHEARSAL = "long_sft", "rehearsal"  # inputs/long_sft/rehearsal
FILES = {
    "longalpaca": "LongAlpaca-12k/LongAlpaca-12k.json",
    "longalign": "LongAlign-10k/long.jsonl",
    "longmit": "LongMIT-128K/train.jsonl",
}
DOCUMENT_WORDS = (300, 450)  # longalpaca and longalign documents; LongMIT's are several shorter passages
PASSAGE_WORDS = (90, 140)
DISTRACTOR_PASSAGES = 2  # LongMIT passages that hold no key sentence
BROKEN = {"longalpaca": 2, "longalign": 3, "longmit": 4}  # the record of each file that breaks its layout


@cache
def texts() -> dict:
    return yaml.safe_load(RESOURCE.read_text(encoding="utf-8"))


def document(key_sentences: list[str], genre: str, words: tuple[int, int], *key: object) -> str:
    """The key sentences early on (where a middle cut does not reach), padded with filler to a hashed length."""
    target = words[0] + stable_int(*key, "words") % (words[1] - words[0])
    count = 0
    while True:
        sentences = filler(genre, count, *key)
        sentences[min(2, len(sentences)) : min(2, len(sentences))] = key_sentences
        text = "\n\n".join(" ".join(sentences[start : start + 5]) for start in range(0, len(sentences), 5))
        if count_words(text) >= target:
            return text
        count += 1


def _doc_id(*key: object) -> str:
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    number = stable_int(*key)
    return "".join(alphabet[(number >> (6 * i)) % len(alphabet)] for i in range(10))


# ------------------------------------------------------------------------------------------------- the layouts


def longalpaca_rows() -> list[dict]:
    """instruction = framing + document + question; `input` and `file` null; the BROKEN record has no output."""
    section, rows = texts()["longalpaca"], []
    for index, entry in enumerate(section["records"]):
        framing = section["framing"][entry["framing"]]
        body = document(entry["key"], entry["genre"], DOCUMENT_WORDS, "longalpaca", index)
        instruction = f"{framing['begin']}{body}{framing['end']}Question: {entry['question']}"
        output = None if index == BROKEN["longalpaca"] else entry["output"]
        rows.append({"instruction": instruction, "output": output, "input": None, "file": None})
    return rows


def longalign_rows() -> list[dict]:
    """The document and the first request in the first user turn; the BROKEN record's last answer is null."""
    rows = []
    for index, entry in enumerate(texts()["longalign"]["records"]):
        body = document(entry["key"], entry["genre"], DOCUMENT_WORDS, "longalign", index)
        messages = []
        for number, turn in enumerate(entry["turns"]):
            user = f"{body}\n\n{turn['user']}" if number == 0 else turn["user"]
            messages += [{"role": "user", "content": user}, {"role": "assistant", "content": turn["assistant"]}]
        if index == BROKEN["longalign"]:
            messages[-1]["content"] = None
        rows.append({"messages": messages})
    return rows


def longmit_rows() -> list[dict]:
    """Each key passage and DISTRACTOR_PASSAGES others in a hashed order; the BROKEN record's first passage names
    its text `text` instead of `content`."""
    rows = []
    for index, entry in enumerate(texts()["longmit"]["records"]):
        key = ("longmit", index)
        passages = [
            document(sentences, "story", PASSAGE_WORDS, *key, n) for n, sentences in enumerate(entry["key_docs"])
        ]
        passages += [document([], "story", PASSAGE_WORDS, *key, "distractor", n) for n in range(DISTRACTOR_PASSAGES)]
        passages.sort(key=lambda text: stable_int(*key, "order", text))
        docs = [{"id": _doc_id(*key, n), "content": text} for n, text in enumerate(passages)]
        if index == BROKEN["longmit"]:
            docs[0] = {"id": docs[0]["id"], "text": docs[0]["content"]}
        fields = {"question": entry["question"], "answer": entry["answer"], "type": entry["type"], "language": "en"}
        rows.append({"all_docs": docs, **fields})
    return rows


# ---------------------------------------------------------------------------------------------------- writing


def write_long_sft_fixtures(inputs_dir: Path | str) -> Path:
    """(Re)write `inputs_dir`/long_sft/rehearsal whole, so a file dropped from the fixtures does not linger."""
    root = Path(inputs_dir) / KIND / REHEARSAL
    if root.exists():
        shutil.rmtree(root)
    for layout, rows in (
        ("longalpaca", longalpaca_rows()),
        ("longalign", longalign_rows()),
        ("longmit", longmit_rows()),
    ):
        path = root / FILES[layout]
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":  # LongAlpaca-12k.json: one JSON list
            text = json.dumps(rows, ensure_ascii=False, indent=4) + "\n"
        else:
            text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        path.write_text(text, encoding="utf-8", newline="\n")
    (root / "README.md").write_text(
        "LongAlpaca-12k's, LongAlign-10k's and LongMIT-128K's release layouts with invented documents, for the "
        f"prior_long rows of experiments/paper.yaml (mix.long_source). Written by `{COMMAND}`: edit "
        "ctxsynth/rehearsal/long_sft_fixtures.yaml, not these files.\n",
        encoding="utf-8",
    )
    return root
