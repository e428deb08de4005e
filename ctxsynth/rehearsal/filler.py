"""The filler every rehearsal fixture pads its documents with: sentences of a genre from fixtures.yaml, their {slots},
people and places chosen by stable hashes of a key, never by `random` or `hash()`, so rebuilds are byte-identical.
One module that fixtures.py, long_sft_fixtures.py and release_fixtures.py all import (fixtures.py runs the other two
from its main, so they cannot import it back)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import yaml

from ctxsynth.core.text import stable_int

RESOURCE = Path(__file__).with_name("fixtures.yaml")


@cache
def fixture_text() -> dict:
    return yaml.safe_load(RESOURCE.read_text(encoding="utf-8"))


def pick(options: list, *key: object) -> str:
    return str(options[stable_int(*key) % len(options)])


def fill(template: str, *key: object) -> str:
    """`template` with its {slots}, people and places chosen by stable hashes of `key` (every fixture's rule)."""
    names = fixture_text()["filler"]
    values = {slot: pick(options, *key, slot) for slot, options in names["slots"].items()}
    person, place = pick(names["people"], *key, "person"), pick(names["places"], *key, "place")
    values.update(
        person=person,
        place=place,
        person2=pick([p for p in names["people"] if p != person], *key, "person2"),
        place2=pick([p for p in names["places"] if p != place], *key, "place2"),
    )
    return template.format_map(values)


def filler(genre: str, count: int, *key: object) -> list[str]:
    """`count` sentences of `genre`; the templates in a hashed order, so none repeats before all were used."""
    genre_templates = fixture_text()["filler"]["genres"][genre]
    templates = sorted(genre_templates, key=lambda template: stable_int(*key, "order", template))
    return [fill(templates[index % len(templates)], *key, index) for index in range(count)]
