"""`ctxsynth params`: every knob of the pipeline with its value in params.yaml, its default and what it means.

    ctxsynth params                 # every section
    ctxsynth params mix             # one section, or any dotted prefix: mix.general, synthesize.openai.serve
    ctxsynth params --changed       # only the keys whose value differs from the default

The meaning and the default come from the settings classes (ctxsynth/core/settings_docs.py reads the comment beside
each field), the value from params.yaml, so the file itself carries only why a run sets what it sets.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ctxsynth.core.io import InputError, read_yaml
from ctxsynth.core.settings import load_settings
from ctxsynth.core.settings_docs import Knob, knobs, plain
from ctxsynth.finetune.settings import FROM_RECIPE
from ctxsynth.preflight.params import SECTIONS

UNSET = "–"  # a key params.yaml does not set: the default applies


def value_at(params: dict, key: str) -> object:
    node: object = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return UNSET
        node = node[part]
    return node


def shown(value: object) -> str:
    if value is UNSET or value is dataclasses.MISSING:
        return UNSET
    if value is FROM_RECIPE:
        return "null"  # a finetune key left to its recipe (ctxsynth/finetune/recipes.yaml), as params.yaml spells it
    return json.dumps(value)


def selected(prefix: str | None) -> list[Knob]:
    found = [knob for section, cls in SECTIONS.items() for knob in knobs(cls, section)]
    if prefix:
        found = [knob for knob in found if knob.key == prefix or knob.key.startswith(prefix + ".")]
        if not found:
            raise InputError("params.yaml", f"no knob is named {prefix!r} or starts with it", field=prefix)
    return found


def effective(params: dict) -> dict:
    """Every section as its settings class reads params.yaml (null where a key means "the default", a recipe's
    values...), next to which a knob's default is compared: what a run actually changes."""
    return {
        section: plain(dataclasses.asdict(load_settings(cls, section, params.get(section) or {})))
        for section, cls in SECTIONS.items()
    }


def changed(knob: Knob, loaded: dict, defaults: dict) -> bool:
    return value_at(loaded, knob.key) != value_at(defaults, knob.key)


def render(rows: list[tuple[Knob, object, bool]]) -> str:
    lines = []
    for knob, value, differs in rows:
        here = shown(value) if value is not UNSET else shown(knob.default)
        marker = f"   (default {shown(knob.default)})" if differs else ""
        lines.append(f"{knob.key} = {here}{marker}")
        if knob.meaning:
            lines.append(f"    {knob.meaning}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefix", nargs="?", help="a section or dotted key prefix, e.g. mix.general")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--changed", action="store_true", help="only keys set away from their default")
    args = parser.parse_args(argv)
    params = read_yaml(args.params) or {}
    loaded, defaults = effective(params), effective({})
    rows = [(knob, value_at(params, knob.key), changed(knob, loaded, defaults)) for knob in selected(args.prefix)]
    if args.changed:
        rows = [row for row in rows if row[2]]
    try:
        print(render(rows))
    except BrokenPipeError:  # `ctxsynth params | head`
        sys.stderr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
