"""Content-addressed cache of generations: reruns and experiments never pay twice, killed runs resume.

One JSON file per key under `root/<key[:2]>/<key>.json`, written atomically. An entry stores its own key and a
checksum of its payload; an entry that fails either check is treated as missing (and regenerated), not trusted.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ctxsynth.core.io import atomic_path, dumps, sha256_text


def cache_key(**parts) -> str:
    """sha256 of the canonical JSON of everything that determines a generation."""
    return sha256_text(dumps(parts))


def generation_settings(backend) -> dict:
    """What, besides its `model_id`, changes a backend's outputs (transformers: device and dtype; vllm: dtype and
    max_model_len; a server: nothing we control): part of every stored key, so a change misses the cache."""
    return dict(getattr(backend, "generation_settings", None) or {})


def stored_key(request_key: str, generation: dict) -> str:
    """The key a generation is cached under: the request's key (its content: model, prompt, sampling, seed) with the
    backend's `generation_settings`. The request key alone seeds an item's sampling (transformers, vllm), so another
    device or dtype misses the cache while the item still draws the same random numbers."""
    return cache_key(request=request_key, generation=generation)


def batch_provenance(generation: dict) -> dict:
    """The paid batch a generation came from ({"batch_id": ...}), for a record's provenance; {} otherwise."""
    return {"batch_id": generation["batch_id"]} if generation.get("batch_id") else {}


class GenerationCache:
    def __init__(self, root: os.PathLike | str):
        self.root = Path(root)
        self.corrupt = 0

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        path = self._path(key)
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
            valid = entry["key"] == key and entry["checksum"] == sha256_text(dumps(entry["value"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            self.corrupt += 1
            return None
        return entry["value"]

    def put(self, key: str, value: dict) -> None:
        entry = {"key": key, "checksum": sha256_text(dumps(value)), "value": value}
        with atomic_path(self._path(key)) as tmp:
            tmp.write_text(dumps(entry), encoding="utf-8")
