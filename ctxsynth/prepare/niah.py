"""Needle-in-a-haystack samples, RULER style: the pilot study's test set and its training needles.

A needle is "One of the special magic numbers for {key} is: {value}." (niah.yaml); keys are two essay
words joined by a hyphen, values random 7-digit numbers. Four subtasks:

- single: one needle, asked for.
- multikey: the asked needle plus distractor needles with other keys (at random places in the haystack).
- multiquery: several needles, every key asked; every value expected.
- multivalue: several needles with one key and different values; every value expected.

The asked needles sit together at the sentence boundary nearest `depth` (0 = start, 1 = end) of a haystack of
about `length_words` words of the Paul Graham essays; `length_words == 0` gives the needles alone. The evaluation
set (ctxsynth.prepare.benchmark) and training samples (the mix stage) share this generator; `disjoint_pool` keeps
training keys from sharing any word with the test keys listed in data/benchmark/reserved.json (`niah_keys`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources
from typing import Literal, get_args

import yaml

Subtask = Literal["single", "multikey", "multiquery", "multivalue"]
SUBTASKS: tuple[Subtask, ...] = get_args(Subtask)
VALUE_RANGE = (1_000_000, 9_999_999)  # 7 digits, as RULER's numbers


@lru_cache(maxsize=1)
def texts() -> dict:
    """The versioned needle and question texts and default needle counts (niah.yaml)."""
    data = yaml.safe_load(resources.files("ctxsynth.prepare").joinpath("niah.yaml").read_text(encoding="utf-8"))
    if set(data["subtasks"]) != set(SUBTASKS):
        raise ValueError(f"niah.yaml must define exactly the subtasks {SUBTASKS}")
    return data


def task_name(subtask: str) -> str:
    """The subtask's name in tasks.yaml, eval.json and data/benchmark/<name>.jsonl."""
    return f"niah_{subtask}"


def key_pool(essays: str) -> list[str]:
    """Candidate key words: distinct lower-case alphabetic words of 6-12 letters (sorted: seeding stays stable)."""
    return sorted(set(re.findall(r"\b[a-z]{6,12}\b", essays.lower())))


def disjoint_pool(pool: Iterable[str], reserved_keys: Iterable[str]) -> list[str]:
    """The pool without any word of the reserved (test) keys: keys drawn from it never equal or share a word with
    a test key, so a model trained on them has not seen the test needles."""
    taken = {word for key in reserved_keys for word in key.split("-")}
    return [word for word in pool if word not in taken]


def haystack_sentences(essays: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(essays.split())) if s]


def needle_count(subtask: str, needles: int | None = None) -> int:
    """Needles per sample: 1 for single, else `needles` or the resource default (at least 2)."""
    if subtask not in SUBTASKS:
        raise ValueError(f"unknown NIAH subtask {subtask!r}; known: {', '.join(SUBTASKS)}")
    if subtask == "single":
        return 1
    count = int(needles if needles is not None else texts()["subtasks"][subtask]["needles"])
    if count < 2:
        raise ValueError(f"NIAH {subtask} needs at least 2 needles, got {count}")
    return count


def _draw_keys(rng: random.Random, keys: list[str], count: int, exclude: frozenset[str] | set[str]) -> list[str]:
    if len(keys) < 2:
        raise ValueError("the key pool needs at least 2 words")
    drawn: list[str] = []
    for _ in range(100 * count + 1000):  # bounded: a tiny pool with most keys excluded must fail, not spin
        key = "-".join(rng.sample(keys, 2))
        if key not in exclude and key not in drawn:
            drawn.append(key)
            if len(drawn) == count:
                return drawn
    raise ValueError(f"could not draw {count} distinct unreserved keys from a pool of {len(keys)} words")


def _draw_values(rng: random.Random, count: int) -> list[str]:
    values: list[str] = []
    while len(values) < count:
        value = str(rng.randint(*VALUE_RANGE))
        if value not in values:
            values.append(value)
    return values


def _haystack(rng: random.Random, sentences: list[str], length_words: int) -> list[str]:
    """Consecutive sentences from a random start (wrapping around) until length_words words."""
    if not sentences:
        raise ValueError("the haystack has no sentences")
    chosen, words, index = [], 0, rng.randrange(len(sentences))
    while words < length_words:
        sentence = sentences[index % len(sentences)]
        chosen.append(sentence)
        words += len(sentence.split())
        index += 1
    return chosen


def _join_keys(keys: list[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + " and " + keys[-1]


def make_sample(
    subtask: str,
    rng: random.Random,
    keys: list[str],
    haystack_sentences: list[str],
    length_words: int,
    depth: float,
    needles: int | None = None,
    exclude: Iterable[str] = (),
) -> dict:
    """One sample: {"input": question, "context": text, "answers": [values], "needle_keys": [every key placed]}.

    `keys` is the word pool (see key_pool / disjoint_pool), `exclude` whole keys never to use. Draws only from
    `rng`, so a seeded generator gives the same sample."""
    if not 0.0 <= float(depth) <= 1.0:
        raise ValueError(f"depth must be in [0, 1], got {depth}")
    if length_words < 0:
        raise ValueError(f"length_words must be >= 0, got {length_words}")
    count = needle_count(subtask, needles)
    spec = texts()["subtasks"][subtask]
    exclude = frozenset(exclude)
    if subtask == "multivalue":
        sample_keys = _draw_keys(rng, keys, 1, exclude) * count
    else:
        sample_keys = _draw_keys(rng, keys, count, exclude)
    values = _draw_values(rng, count)
    placed = [texts()["needle"].format(key=key, value=value) for key, value in zip(sample_keys, values)]
    asked = [0] if subtask in ("single", "multikey") else list(range(count))
    distractors = [i for i in range(count) if i not in asked]

    if length_words == 0:
        order = list(range(count))
        rng.shuffle(order)
        context = " ".join(placed[i] for i in order)
    else:
        haystack = _haystack(rng, haystack_sentences, length_words)
        at_depth = round(float(depth) * len(haystack))
        asked_order = list(asked)
        rng.shuffle(asked_order)
        # (position among the haystack sentences, tie-break, needle): the asked group keeps its place at `depth`
        inserts = [(at_depth, 0.5, placed[i]) for i in asked_order]
        inserts += [(rng.randint(0, len(haystack)), rng.random(), placed[i]) for i in distractors]
        inserts.sort(key=lambda insert: (insert[0], insert[1]))
        parts, cursor = [], 0
        for position, _, needle in inserts:
            parts += haystack[cursor:position] + [needle]
            cursor = position
        context = " ".join(parts + haystack[cursor:])
    asked_keys = list(dict.fromkeys(sample_keys[i] for i in asked))
    question = spec["question"].format(key=asked_keys[0], keys=_join_keys(asked_keys))
    return {
        "input": question,
        "context": context,
        "answers": [values[i] for i in asked],
        "needle_keys": list(dict.fromkeys(sample_keys)),
    }
