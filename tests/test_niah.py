"""NIAH generator (ctxsynth.prepare.niah), the test sets built from it and the heatmap rows scored from predictions."""

import itertools
import random
import re

import pytest
from fixtures import ESSAYS

from ctxsynth.core.scoring import niah_heatmap
from ctxsynth.prepare import niah
from ctxsynth.prepare.benchmark import build_niah

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
)
HAYSTACK = " ".join(f"Sentence {i} is about {w}." for i, w in enumerate(WORDS.split() * 8))
# 600 distinct 6-letter words (the fixture essays alone have only a handful of long words)
MANY_WORDS = " ".join(
    "".join(letters) for letters in itertools.islice(itertools.product("bcdfgklmnprst", repeat=6), 0, 600 * 7919, 7919)
)
NEEDLE = re.compile(r"One of the special magic numbers for ([a-z]+-[a-z]+) is: (\d{7})\.")


def sample(subtask, seed=0, length=60, depth=0.5, needles=None):
    pool = niah.key_pool(ESSAYS + " " + HAYSTACK)
    return niah.make_sample(
        subtask, random.Random(seed), pool, niah.haystack_sentences(HAYSTACK), length, depth, needles
    )


@pytest.mark.parametrize(
    "subtask,needles,asked", [("single", 1, 1), ("multikey", 4, 1), ("multiquery", 3, 3), ("multivalue", 3, 3)]
)
def test_each_subtask_places_its_needles_and_asks_for_them(subtask, needles, asked):
    item = sample(subtask, needles=None if subtask == "single" else needles)
    placed = NEEDLE.findall(item["context"])
    assert len(placed) == needles and len(item["answers"]) == asked
    values = {value for _, value in placed}
    assert set(item["answers"]) <= values and len(values) == needles  # distinct values
    keys = [key for key, _ in placed]
    assert sorted(set(keys)) == sorted(item["needle_keys"])
    if subtask == "multivalue":  # one key, several values: all asked
        assert len(set(keys)) == 1 and set(item["answers"]) == values
    elif subtask == "multiquery":  # several keys, all asked in one question
        assert set(item["answers"]) == values and all(key in item["input"] for key in keys)
    else:  # single / multikey: only the first key is asked, the others only distract
        asked_key = next(key for key, value in placed if value == item["answers"][0])
        assert asked_key in item["input"] and sum(key in item["input"] for key in keys) == 1
    assert len(item["context"].split()) >= 60


def test_asked_needles_sit_at_their_depth():
    for depth in (0.0, 0.5, 1.0):
        item = sample("multikey", seed=3, length=200, depth=depth, needles=2)
        asked = f"is: {item['answers'][0]}."
        position = item["context"].index(asked) / len(item["context"])
        assert abs(position - depth) < 0.1, (depth, position)
    assert sample("single", length=200, depth=0.0)["context"].startswith("One of the special magic numbers")
    last = sample("single", length=200, depth=1.0)
    assert last["context"].endswith(f"is: {last['answers'][0]}.")


def test_needles_only_when_length_is_zero():
    item = sample("multiquery", length=0, needles=3)
    assert NEEDLE.sub("", item["context"]).strip() == ""
    assert len(NEEDLE.findall(item["context"])) == 3


def test_seeded_and_bad_arguments():
    assert sample("multikey", seed=7) == sample("multikey", seed=7)
    assert sample("multikey", seed=7) != sample("multikey", seed=8)
    with pytest.raises(ValueError, match="unknown NIAH subtask"):
        sample("multi")
    with pytest.raises(ValueError, match="at least 2"):
        sample("multivalue", needles=1)
    with pytest.raises(ValueError, match="depth"):
        sample("single", depth=1.5)
    with pytest.raises(ValueError, match="distinct unreserved keys"):
        niah.make_sample("multikey", random.Random(0), ["ab", "cd"], ["A b."], 0, 0.0, 2, exclude=["ab-cd"])


def test_training_keys_never_touch_test_keys():
    essays = ESSAYS + " " + MANY_WORDS
    sets = build_niah(essays, list(niah.SUBTASKS), [40, 80], [0.0, 1.0], 2, seed=1)
    test_keys = {key for rows in sets.values() for row in rows for key in row["needle_keys"]}
    pool = niah.disjoint_pool(niah.key_pool(essays), test_keys)
    assert len(pool) > 300 and not {w for key in test_keys for w in key.split("-")} & set(pool)
    rng = random.Random(0)
    for _ in range(50):
        item = niah.make_sample("multikey", rng, pool, niah.haystack_sentences(ESSAYS), 0, 0.0)
        assert not set(item["needle_keys"]) & test_keys


def test_test_sets_are_longbench_rows_and_cells_are_independent():
    sets = build_niah(ESSAYS, ["single", "multivalue"], [40, 80], [0.0, 0.5, 1.0], 1, seed=4)
    assert set(sets) == {"niah_single", "niah_multivalue"} and all(len(rows) == 6 for rows in sets.values())
    for task, rows in sets.items():
        for row in rows:
            assert row["dataset"] == task and row["length"] == len(row["context"].split())
            assert {"_id", "input", "context", "answers", "niah_length", "niah_depth", "needle_keys"} <= set(row)
    more = build_niah(ESSAYS, ["single", "multivalue"], [40, 80, 160], [0.0, 0.5, 1.0], 1, seed=4)
    for task, rows in sets.items():  # a new length adds cells, the old cells keep their samples
        assert more[task][:6] == rows
    assert build_niah(ESSAYS, ["single"], [40], [0.5], 1, seed=5) != build_niah(
        ESSAYS, ["single"], [40], [0.5], 1, seed=4
    )


def test_heatmap_rows_average_each_cell():
    def record(variant, task, length, depth, score):
        return {"variant": variant, "task": task, "niah_length": length, "niah_depth": depth, "score": score}

    predictions = [
        record("base", "niah_multikey", 250, 0.5, 100.0),
        record("base", "niah_multikey", 250, 0.5, 50.0),
        record("base", "niah_multikey", 1000, 0.0, 0.0),
        record("finetuned", "niah_single", 250, 1.0, 100.0),
        {"variant": "base", "task": "squad_long", "score": 80.0},
    ]
    assert niah_heatmap(predictions) == [
        {"model": "base", "subtask": "multikey", "length": 250, "depth": 0.5, "recall": 75.0},
        {"model": "base", "subtask": "multikey", "length": 1000, "depth": 0.0, "recall": 0.0},
        {"model": "finetuned", "subtask": "single", "length": 250, "depth": 1.0, "recall": 100.0},
    ]
