"""A small stand-in, in its layout, for the paper's released synthesized contexts (the hub's
Wenhao97/gpt4o-mini-context-synthesis, read by synthesize.backend: released): one `context-synthesis.jsonl` whose
records are what the authors' generate_synthetic_context.py writes, {synthesis_task, instruction, answer,
synthesized_context}, one per rehearsal seed (inputs/seeds/rehearsal), in the script's task order.

All text is invented: each context is built from the seed's fixtures.yaml entry and that file's filler sentences, in
the genre of its task, and holds the answer. Like a real release it is not quite clean, which is what the loader and
the matcher are tested on:
- one seed has no record (NOT_RELEASED): it is kept with parse_status not_released and never enters the mix;
- one record's instruction differs from its seed in case and spacing only (RESPACED): it still matches;
- one record matches no seed (UNMATCHED): it is counted, not used;
- one line is cut short (TRUNCATED_AFTER), as an interrupted append leaves it: skipped and counted as malformed.

    python -m ctxsynth.rehearsal.fixtures      # rewrites this fixture too (inputs/released/rehearsal)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ctxsynth.core.text import count_words
from ctxsynth.rehearsal.filler import fill, fixture_text, pick

COMMAND = "python -m ctxsynth.rehearsal.fixtures"
KIND, REHEARSAL = "released", "rehearsal"  # inputs/released/rehearsal
RELEASE_FILE = "context-synthesis.jsonl"  # the hub release's file name
CONTEXT_WORDS = 160
# generate_synthetic_context.py walks the tasks in this order and appends one record per seed
TASK_ORDER = ("narrativeqa", "qasper", "hotpotqa", "2wikiqa", "musique", "govreport", "qmsum", "multinews")
GENRES = {"qasper": "science", "govreport": "report", "qmsum": "meeting", "multinews": "news"}  # others: story
NOT_RELEASED = ("qasper", 3)
RESPACED = ("hotpotqa", 1)
TRUNCATED_AFTER = ("musique", 1)
TRUNCATED_CHARS = 70
UNMATCHED = {
    "synthesis_task": "hotpotqa",
    "instruction": "Which harbour did the ferry Morwen Star sail from on its first crossing?",
    "answer": "Quillan Bay",
    "key": ["The ferry Morwen Star made its first crossing from Quillan Bay on a grey spring morning."],
}


def filler_sentence(genre: str, *key: object) -> str:
    """One sentence of `genre` from fixtures.yaml, its template and slots chosen by stable hashes of `key`."""
    return fill(pick(fixture_text()["filler"]["genres"][genre], *key, "template"), *key)


def document(genre: str, key_sentences: list[str], *key: object) -> str:
    """Key sentences early (as a generator that answers the question would put them) among filler of `genre`, in
    paragraphs of five sentences, grown to CONTEXT_WORDS."""
    sentences = [filler_sentence(genre, *key, 0), *key_sentences]
    while count_words(" ".join(sentences)) < CONTEXT_WORDS:
        sentences.append(filler_sentence(genre, *key, len(sentences)))
    return "\n\n".join(" ".join(sentences[start : start + 5]) for start in range(0, len(sentences), 5))


def key_sentences(task: str, entry: dict) -> list[str]:
    """What a context must hold: the seed's own facts where it has them, else a sentence with the answer."""
    answer = entry["answer"]
    if task == "multinews":
        return [answer, *entry["context"]]
    if "context" in entry:
        return list(entry["context"])
    return {
        "govreport": [f"What We Found: {answer}"],
        "qmsum": [f"Secretary: For the minutes: {answer}"],
        "qasper": [f"The notes on this point are brief: {answer}."],
    }.get(task, [f"Asked about it years later, the valley's old people said only this: {answer}."])


def synthesized_context(task: str, index: int, entry: dict) -> str:
    """An invented 'synthesized' context for seed `index` of `task`, in its task's genre, holding the answer."""
    return document(GENRES.get(task, "story"), key_sentences(task, entry), "released", task, index)


def respace(text: str) -> str:
    """`text` in lower case with doubled spaces: the same pair to the matcher, other bytes in the file."""
    return "  ".join(text.lower().split(" "))


def release_lines() -> list[str]:
    """The release file's lines, as the authors' script writes them (json.dump, default separators)."""
    seeds = fixture_text()["seeds"]
    lines = []
    for task in TASK_ORDER:
        for index, entry in enumerate(seeds[task]):
            if (task, index) == NOT_RELEASED:
                continue
            record = {
                "synthesis_task": task,
                "instruction": respace(entry["instruction"]) if (task, index) == RESPACED else entry["instruction"],
                "answer": entry["answer"],
                "synthesized_context": synthesized_context(task, index, entry),
            }
            lines.append(json.dumps(record))
            if (task, index) == TRUNCATED_AFTER:
                lines.append(lines[-1][:TRUNCATED_CHARS])
        if task == UNMATCHED["synthesis_task"]:
            context = document("story", UNMATCHED["key"], "released", "unmatched")
            record = {name: UNMATCHED[name] for name in ("synthesis_task", "instruction", "answer")}
            lines.append(json.dumps({**record, "synthesized_context": context}))
    return lines


def write_release_fixtures(inputs_dir: Path | str) -> Path:
    """(Re)write `inputs_dir`/released/rehearsal whole; return it."""
    root = Path(inputs_dir) / KIND / REHEARSAL
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    (root / "README.md").write_text(
        "The layout of the paper's released contexts (Wenhao97/gpt4o-mini-context-synthesis: context-synthesis.jsonl "
        "with synthesis_task, instruction, answer, synthesized_context) with invented contexts for the seeds in "
        f"inputs/seeds/rehearsal, for synthesize.backend: released. Written by `{COMMAND}`: edit "
        "ctxsynth/rehearsal/release_fixtures.py, not these files.\n",
        encoding="utf-8",
    )
    with (root / RELEASE_FILE).open("w", encoding="utf-8", newline="\n") as handle:
        handle.writelines(line + "\n" for line in release_lines())
    return root
