"""Versioned generator prompts (prompts.yaml)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class PromptSpec:
    name: str
    version: str
    system: str
    user: str
    marker: str

    def messages(self, **fields) -> list[dict]:
        return [{"role": "system", "content": self.system}, {"role": "user", "content": self.user.format(**fields)}]


@cache
def get_prompt(name: str) -> PromptSpec:
    data = yaml.safe_load(resources.files("ctxsynth.synthesis").joinpath("prompts.yaml").read_text(encoding="utf-8"))
    if name not in data:
        raise KeyError(f"unknown prompt {name!r}; known prompts: {', '.join(data)}")
    entry = data[name]
    return PromptSpec(
        name=name,
        version=str(entry["version"]),
        system=entry["system"],
        user=entry["user"],
        marker=entry.get("marker", ""),
    )
