"""synthesize.backend: released. The paper authors' own synthesized contexts, matched to our seeds, as the records
every other backend writes (data/synth/contexts.jsonl), so mix, finetune and evaluate run unchanged on them.

What the release is, as verified (see also released_layouts.yaml):
- The hub collection "long-context-instruction-data-synthesis" of user Wenhao97 (linked from the README of
  NJUNLP/context-synthesis) holds gpt4o-mini-context-synthesis (1.6k rows in one file, `context-synthesis.jsonl`,
  7.14 MB), the gpt4o-mini-instruction-synthesis baseline, and `*-chat-format` sets for gpt4o-mini, qwen2.5-72b and
  longwriter-8b: from the hub's file listings, found with the docs search. Only gpt4o-mini-context-synthesis keeps
  one context per seed: the chat-format sets are what the authors' convert_to_chat_format.py writes, each relevant
  context joined with 9 shuffled others inside a LongBench prompt, which cannot be split back into per-seed contexts.
- The record layout is read from github:NJUNLP/context-synthesis, scripts/generate_synthetic_context.py (commit
  dcfc841): {"synthesis_task", "instruction", "answer", "synthesized_context"} per seed, in seed order; its
  convert_to_chat_format.py reads the same four fields. The hub file's own field names could not be read offline,
  so the layout is data (released_layouts.yaml, `synthesize.released.layout`), not code: a different release is a new
  entry there. The script for GPT-4o-mini (the Batch API) is not in that repository (its README: "coming soon").

Matching is by instruction and answer, with case, Unicode form and whitespace normalized: the seeds are the paper's
own, so a released record is the context of the seed with the same pair. Two seeds can share a pair (the paper's 1,600
hold one such duplicate): records are taken in file order, first those of the seed's own task, then any other. A seed
with no released context is kept with parse_status `not_released`, which the mix stage never uses (it takes `ok`
only); released records matching no seed are counted, as are malformed ones.

The generation cache is not filled: its keys name a model, a prompt, sampling and a seed, and the release's sampling is
not ours to claim. Records name the release instead (source, resolved commit, file, its sha256, line).
"""

from __future__ import annotations

import unicodedata
from collections import defaultdict

from ctxsynth.core.text import count_words
from ctxsynth.synthesis.contexts import PARSE_EMPTY, PARSE_NOT_RELEASED, PARSE_OK
from ctxsynth.synthesis.release_files import Release, ReleasedRecord, load_release

EXAMPLES = 5  # unmatched and malformed examples kept in metrics: ids and file:line only, never released text


def match_key(instruction: str, answer: str) -> tuple[str, str]:
    """What matches a seed to a released record: case, Unicode form and whitespace do not count; punctuation does."""

    def normal(text: str) -> str:
        return " ".join(unicodedata.normalize("NFC", text).casefold().split())

    return normal(instruction), normal(answer)


def match_release(seeds: list[dict], records: list[ReleasedRecord]) -> tuple[dict[int, ReleasedRecord], list[int]]:
    """({seed index: its released record}, indices of released records matching no seed). Two passes, each in seed
    order and file order: a seed takes a record of its own task first, then, if none is left, one of another task."""
    candidates: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        candidates[match_key(record.instruction, record.answer)].append(index)
    used: set[int] = set()
    matches: dict[int, ReleasedRecord] = {}
    for same_task in (True, False):
        for seed_index, seed in enumerate(seeds):
            if seed_index in matches:
                continue
            for index in candidates.get(match_key(seed["instruction"], seed["answer"]), []):
                if index not in used and (not same_task or records[index].task == seed["task"]):
                    used.add(index)
                    matches[seed_index] = records[index]
                    break
    return matches, [index for index in range(len(records)) if index not in used]


def released_record(seed: dict, released: ReleasedRecord | None, release: Release) -> dict:
    """One contexts.jsonl record: the seed's pair, the released context and where it came from."""
    context = released.context if released and released.context else None
    status = PARSE_NOT_RELEASED if released is None else (PARSE_OK if context else PARSE_EMPTY)
    origin: dict[str, object] = {"source": release.source, "revision": release.resolved_revision}
    if released is not None:
        origin.update(file=released.file, sha256=release.files[released.file], line=released.line)
    provenance = {"model": f"released:{release.source}", "backend": "released", "release": origin}
    return {
        "id": seed["id"],
        "task": seed["task"],
        "instruction": seed["instruction"],
        "answer": seed["answer"],
        "context": context,
        "parse_status": status,
        "raw_output": released.context if released else None,
        "finish_reason": None,
        "generated_tokens": 0,
        "words": count_words(context) if context else 0,
        "provenance": provenance,
    }


def release_report(seeds: list[dict], release: Release, matches: dict, unmatched: list[int]) -> dict:
    """metrics/synthesize.json `release`: what was read, what matched, what did not (counts and a few locations)."""
    unmatched_seeds = [seed for index, seed in enumerate(seeds) if index not in matches]
    cross_task = sum(record.task != seeds[index]["task"] for index, record in matches.items())
    by_reason: dict[str, int] = {}
    for item in release.malformed:
        reason = item.reason if item.field is None else f"{item.field}: {item.reason}"
        by_reason[reason] = by_reason.get(reason, 0) + 1
    return {
        **release.provenance(),
        "records": len(release.records) + len(release.malformed),
        "malformed": {
            "count": len(release.malformed),
            "reasons": dict(sorted(by_reason.items())),
            "examples": [{"file": m.file, "line": m.line, "field": m.field} for m in release.malformed[:EXAMPLES]],
        },
        "matched": len(matches),
        "matched_across_tasks": cross_task,
        "unmatched_seeds": {
            "count": len(unmatched_seeds),
            "examples": [{"id": seed["id"], "task": seed["task"]} for seed in unmatched_seeds[:EXAMPLES]],
        },
        "unmatched_released": {
            "count": len(unmatched),
            "examples": [
                {"file": release.records[i].file, "line": release.records[i].line, "task": release.records[i].task}
                for i in unmatched[:EXAMPLES]
            ],
        },
    }


def released_contexts(seeds: list[dict], settings) -> tuple[list[dict], dict]:
    """(a record for every seed, the release report) from the release `settings` (synthesize.released) names."""
    release = load_release(settings)
    matches, unmatched = match_release(seeds, release.records)
    records = [released_record(seed, matches.get(index), release) for index, seed in enumerate(seeds)]
    return records, release_report(seeds, release, matches, unmatched)
