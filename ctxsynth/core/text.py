"""Small text utilities shared by seeds, benchmarks and synthesis."""

from __future__ import annotations

import hashlib
import re
import string

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)


def normalize_text(text: str) -> str:
    """SQuAD/LongBench answer normalization: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def count_words(text: str) -> int:
    """Whitespace words: LongBench's `length` unit for English."""
    return len(text.split())


def stable_int(*parts: object) -> int:
    """A hash of `parts` that, unlike hash(), does not change with PYTHONHASHSEED."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little")


def rng_for(seed: int, *scope: object) -> np.random.Generator:
    """An independent generator per (seed, scope): adding a task never reshuffles another task."""
    return np.random.default_rng([int(seed), stable_int(*scope)])
