"""The rehearsal's students as data (stand_ins.yaml), apart from their builder (stand_ins.py) so that the settings
can check a name without importing what fetches."""

from __future__ import annotations

from functools import cache
from importlib import resources

import yaml


@cache
def stand_in_specs() -> dict:
    return yaml.safe_load(resources.files("ctxsynth.prepare").joinpath("stand_ins.yaml").read_text(encoding="utf-8"))


def stand_in_names() -> list[str]:
    return sorted(stand_in_specs()["stand_ins"])
