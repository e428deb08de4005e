"""Small stand-ins, in the real layouts, for the data the paper-scale rows read: the paper's seed release, THUDM's
LongBench v1 and the hub's general SFT sets (HuggingFaceH4/ultrachat_200k, ShareGPT_Vicuna_unfiltered). All text is
invented (fixtures.yaml), so the fixtures can be committed; layouts and field names follow the real files, which is
what the loaders check.

A document is its key text (which holds the answer) padded with filler sentences of its genre. Filler is chosen by a
hash of the document's name, never by `random` or `hash()`, so a rerun writes the same bytes and the committed copies
can be checked against a fresh build (tests/test_rehearsal_inputs.py).

    python -m ctxsynth.rehearsal.fixtures      # rewrites inputs/{seeds,longbench,general}/rehearsal
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

from ctxsynth.core.text import count_words, stable_int
from ctxsynth.rehearsal.filler import filler, fixture_text, pick

REHEARSAL = "rehearsal"  # inputs/<kind>/rehearsal: the directory each kind's fixtures are written to
COMMAND = "python -m ctxsynth.rehearsal.fixtures"
# Context lengths in words: the longest need the middle cut at the rehearsal's evaluate.max_length (3500 tokens of the
# byte-level tiny model); key text sits early in every document, so the answer survives that cut.
LONGBENCH_WORDS = (300, 550)
SEED_CONTEXT_WORDS = 80
UNANSWERED_TURN_AT = 3  # ShareGPT conversations that get a real dump's defects (indices into its 12)
SPLIT_REPLY_AT = 7


def _grow(build: Callable[[int], str], target_words: int) -> str:
    """`build(n)` (a document with n filler units) for the smallest n that reaches `target_words`."""
    count = 0
    while count_words(document := build(count)) < target_words:
        count += 1
    return document


def _chunks(items: list[str], size: int) -> list[list[str]]:
    return [items[start : start + size] for start in range(0, len(items), size)]


# ------------------------------------------------------------------------------------------------- documents
# Key text goes near the start, where LongBench's middle cut does not reach.


def story(key_sentences: list[str], target_words: int, *key: object) -> str:
    def build(count: int) -> str:
        sentences = filler("story", count, *key)
        at = min(3, len(sentences))
        sentences[at:at] = key_sentences
        return "\n\n".join(" ".join(chunk) for chunk in _chunks(sentences, 5))

    return _grow(build, target_words)


def passages(key_passages: list[list[str]], target_words: int, *key: object) -> str:
    """LongBench's multi-document layout ("Passage i:", title, text) with the key passages among distractors."""

    def build(count: int) -> str:
        names = fixture_text()["filler"]
        items = [
            (pick(names["places"] + names["people"], *key, "title", index), " ".join(filler("story", 4, *key, index)))
            for index in range(count)
        ]
        for offset, (title, body) in enumerate(key_passages):
            items.insert(min(len(items), 1 + 2 * offset + stable_int(*key, "at", offset) % 2), (title, body))
        return "\n".join(f"Passage {number}:\n{title}\n{body}" for number, (title, body) in enumerate(items, 1))

    return _grow(build, target_words)


def article(key_sentences: list[str], target_words: int, *key: object) -> str:
    headings = ("Abstract", "1 Introduction", "2 Method", "3 Experiments", "4 Results", "5 Conclusion")

    def build(count: int) -> str:
        sentences = filler("science", count, *key)
        sections = _chunks(sentences, -(-len(sentences) // len(headings)) or 1)
        sections += [[] for _ in range(len(headings) - len(sections))]
        sections[2] = key_sentences + sections[2]  # the method section opens with the key fact
        return "\n\n".join(f"{heading}\n{' '.join(body)}".rstrip() for heading, body in zip(headings, sections))

    return _grow(build, target_words)


def report(agency: str, findings: str, target_words: int, *key: object) -> str:
    def build(count: int) -> str:
        sentences = filler("report", count, *key)
        half = len(sentences) // 2
        return "\n\n".join(
            [
                f"Review of the {agency}",
                "What We Found\n" + " ".join([findings, *sentences[:half]]),
                "Background\n" + " ".join(sentences[half:]),
                f"Recommendation\nThe {agency} should write a plan that covers the work that remains.",
            ]
        )

    return _grow(build, target_words)


def transcript(key_turns: list[str], target_words: int, *key: object) -> str:
    def build(count: int) -> str:
        turns = filler("meeting", count, *key)
        at = len(turns) // 4
        turns[at:at] = key_turns
        return "\n".join(turns)

    return _grow(build, target_words)


def news(lead: str, facts: list[str], target_words: int, *key: object, reports: int = 3) -> str:
    """Several reports of one event, separated by blank lines; the first opens with `lead`."""

    def build(count: int) -> str:
        sentences = filler("news", count, *key)
        bodies = [sentences[index::reports] for index in range(reports)]
        for index, fact in enumerate(facts):
            bodies[(index + 1) % reports].insert(0, fact)
        bodies[0].insert(0, lead)
        return "\n\n".join(" ".join(body) for body in bodies if body)

    return _grow(build, target_words)


def longbench_context(entry: dict, target_words: int, *key: object) -> str:
    """The context of one fixtures.yaml `longbench` entry, by the genre key it has."""
    if "story" in entry:
        return story(entry["story"], target_words, *key)
    if "article" in entry:
        return article(entry["article"], target_words, *key)
    if "passages" in entry:
        return passages(entry["passages"], target_words, *key)
    if "report" in entry:
        return report(entry["report"], entry["answer"], target_words, *key)
    if "transcript" in entry:
        return transcript(entry["transcript"], target_words, *key)
    return news(entry["answer"], entry["news"], target_words, *key)


# ------------------------------------------------------------------------------------------------- the layouts


def seed_rows(task: str) -> tuple[list[dict], list[dict] | None]:
    """The paper's release: seed_instruction rows and, line-aligned, seed_context rows (None: the task has none)."""
    entries = fixture_text()["seeds"][task]
    instructions = [{"instruction": entry["instruction"], "answer": entry["answer"]} for entry in entries]
    if "context" not in entries[0]:
        return instructions, None
    contexts = []
    for index, entry in enumerate(entries):
        key = ("seed", task, index)
        if task == "multinews":  # a summarization seed: its context is the news it summarizes
            context = news(entry["answer"], entry["context"], SEED_CONTEXT_WORDS, *key, reports=2)
        else:
            context = story(entry["context"], SEED_CONTEXT_WORDS, *key)
        contexts.append({"context": context})
    return instructions, contexts


def longbench_rows(task: str) -> list[dict]:
    """THUDM's record: input, context, answers, length (words), dataset, language, all_classes, _id."""
    low, high = LONGBENCH_WORDS
    rows = []
    for index, entry in enumerate(fixture_text()["longbench"][task]):
        context = longbench_context(entry, low + stable_int("longbench", task, index) % (high - low), task, index)
        rows.append(
            {
                "input": entry["input"],
                "context": context,
                "answers": [entry["answer"]],
                "length": count_words(context),
                "dataset": task,
                "language": "en",
                "all_classes": None,
                "_id": hashlib.sha256(f"rehearsal:{task}:{index}".encode()).hexdigest()[:48],
            }
        )
    return rows


def ultrachat_rows() -> list[dict]:
    """ultrachat_200k's record: prompt, prompt_id (the prompt's sha256), messages [{content, role}]."""
    rows = []
    for chat in fixture_text()["chats"][:12]:
        messages = []
        for turn in chat:
            messages += [{"content": turn["user"], "role": "user"}, {"content": turn["assistant"], "role": "assistant"}]
        prompt = chat[0]["user"]
        rows.append({"prompt": prompt, "prompt_id": hashlib.sha256(prompt.encode()).hexdigest(), "messages": messages})
    return rows


def _sharegpt_id(index: int) -> str:
    """An id shaped like ShareGPT's ("QWJhYvA_0": 7 letters or digits, then the part number)."""
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    number = stable_int("sharegpt", index)
    return "".join(alphabet[(number >> (6 * i)) % len(alphabet)] for i in range(7)) + "_0"


def sharegpt_rows() -> list[dict]:
    """ShareGPT's record: id, conversations [{from: human | gpt, value}], with two defects real dumps have: one
    conversation ends on an unanswered human turn (the loader drops that turn) and one has a reply split into two gpt
    turns in a row (the loader skips the conversation and counts it)."""
    rows = []
    for index, chat in enumerate(fixture_text()["chats"][12:]):
        turns = []
        for turn in chat:
            turns += [{"from": "human", "value": turn["user"]}, {"from": "gpt", "value": turn["assistant"]}]
        if index == UNANSWERED_TURN_AT:
            turns.append({"from": "human", "value": "Can you say that again?"})
        if index == SPLIT_REPLY_AT:
            turns.insert(2, {"from": "gpt", "value": "(continued)"})
        rows.append({"id": _sharegpt_id(index), "conversations": turns})
    return rows


# ---------------------------------------------------------------------------------------------------- writing


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_seeds(root: Path) -> None:
    for task in fixture_text()["seeds"]:
        instructions, contexts = seed_rows(task)
        _write_jsonl(root / "seed_instruction" / f"{task}.jsonl", instructions)
        if contexts is not None:
            _write_jsonl(root / "seed_context" / f"{task}.jsonl", contexts)


def write_longbench(root: Path) -> None:
    for task in fixture_text()["longbench"]:
        _write_jsonl(root / "data" / f"{task}.jsonl", longbench_rows(task))


def write_general(root: Path) -> None:
    _write_jsonl(root / "ultrachat.jsonl", ultrachat_rows())
    _write_jsonl(root / "sharegpt.jsonl", sharegpt_rows())


WRITERS = {
    "seeds": (write_seeds, "The paper's seed-release layout (seed_instruction/, seed_context/) with invented seeds"),
    "longbench": (write_longbench, "THUDM/LongBench v1's layout (data/<task>.jsonl) with invented documents"),
    "general": (write_general, "ultrachat_200k's and ShareGPT's layouts with invented conversations"),
}


def write_fixtures(inputs_dir: Path | str) -> list[Path]:
    """(Re)write `inputs_dir`/<kind>/rehearsal for seeds, longbench and general; return those directories. Each is
    generated whole and emptied first, so a file dropped from the fixtures does not linger."""
    written = []
    for kind, (write, what) in WRITERS.items():
        root = Path(inputs_dir) / kind / REHEARSAL
        if root.exists():
            shutil.rmtree(root)
        root.mkdir(parents=True)
        (root / "README.md").write_text(
            f"{what}, for the rehearsal rows of experiments/paper.yaml. Written by `{COMMAND}`: edit "
            "ctxsynth/rehearsal/fixtures.yaml, not these files.\n",
            encoding="utf-8",
        )
        write(root)
        written.append(root)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=Path, default=Path("inputs"), help="the inputs/ directory to write into")
    args = parser.parse_args(argv)
    from ctxsynth.rehearsal.long_sft_fixtures import write_long_sft_fixtures  # LongAlpaca, LongAlign, LongMIT
    from ctxsynth.rehearsal.release_fixtures import write_release_fixtures  # the paper's released contexts

    written = [*write_fixtures(args.inputs), write_release_fixtures(args.inputs), write_long_sft_fixtures(args.inputs)]
    for root in written:
        size = sum(path.stat().st_size for path in root.rglob("*") if path.is_file())
        print(f"{root}: {size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
