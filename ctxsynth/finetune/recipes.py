"""Fine-tuning recipes (recipes.yaml): named presets that fill the finetune keys left unset.

Resolution order, lowest to highest: the recipe named by `extends` (recursively), the recipe itself, then every key
params.yaml (or `dvc exp run -S`) sets to a non-null value (ctxsynth.finetune.settings.FinetuneSettings). The recipe
file is the only place the values of the recipe-driven keys are written.
"""

from __future__ import annotations

import os
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from ctxsynth.core.io import InputError

RECIPES_RESOURCE = "finetune/recipes.yaml"
DEFAULT_RECIPE = "cpu"


@lru_cache(maxsize=1)
def load_recipes() -> dict[str, dict]:
    text = resources.files("ctxsynth").joinpath(RECIPES_RESOURCE).read_text(encoding="utf-8")
    recipes = yaml.safe_load(text)
    for name, recipe in recipes.items():
        if not isinstance(recipe, dict) or not isinstance(recipe.get("values"), dict):
            raise InputError(f"ctxsynth/{RECIPES_RESOURCE}", "expected a mapping with 'values'", field=name)
    return recipes


def recipe_values(name: str, source: os.PathLike | str = "params.yaml") -> dict[str, Any]:
    recipes = load_recipes()
    chain: list[str] = []
    link: str | None = name  # then each recipe's `extends`, up to the one that extends none
    while link is not None:
        if link not in recipes:
            raise InputError(source, f"unknown recipe {link!r} (known: {', '.join(recipes)})", field="finetune.recipe")
        if link in chain:
            raise InputError(f"ctxsynth/{RECIPES_RESOURCE}", f"recipe cycle {' -> '.join(chain + [link])}", field=link)
        chain.append(link)
        link = recipes[link].get("extends")
    values: dict[str, Any] = {}
    for link in reversed(chain):
        values.update(recipes[link]["values"])
    return values
