"""The versioned task registry (tasks.yaml): templates, budgets, metrics and categories."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml


@dataclass(frozen=True)
class TaskSpec:
    name: str
    template: str
    category: str
    metric: str
    max_new_tokens: int
    aliases: tuple[str, ...]

    def render(self, context: str, instruction: str) -> str:
        return self.template.format(context=context, input=instruction)


@lru_cache(maxsize=1)
def _registry() -> tuple[int, dict[str, TaskSpec]]:
    data = yaml.safe_load(resources.files("ctxsynth.core").joinpath("tasks.yaml").read_text(encoding="utf-8"))
    specs = {
        name: TaskSpec(
            name=name,
            template=entry["template"],
            category=entry["category"],
            metric=entry["metric"],
            max_new_tokens=int(entry["max_new_tokens"]),
            aliases=tuple(entry.get("aliases", [])),
        )
        for name, entry in data["tasks"].items()
    }
    return int(data["version"]), specs


def templates_version() -> int:
    return _registry()[0]


def get_task(name: str) -> TaskSpec:
    """Look a task up by its name or an alias (the paper's seed files say `2wikiqa`, LongBench says `2wikimqa`)."""
    specs = _registry()[1]
    if name in specs:
        return specs[name]
    for spec in specs.values():
        if name in spec.aliases:
            return spec
    raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(specs)}")
