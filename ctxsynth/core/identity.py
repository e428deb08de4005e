"""Model identity: a model directory's name and content hash, the key that caches and provenance record."""

from __future__ import annotations

import json
from pathlib import Path

from ctxsynth.core.io import sha256_file, sha256_text


def weights_sha256(model_dir: Path) -> str | None:
    """The weights' content hash: the single file's sha256, or one hash over every shard's name and sha256."""
    shards = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    if [path.name for path in shards] in (["model.safetensors"], ["pytorch_model.bin"]):
        return sha256_file(shards[0])
    return sha256_text("\n".join(f"{path.name} {sha256_file(path)}" for path in shards)) if shards else None


def model_identity(model_dir: Path | str) -> str:
    """Name and content hash of a model directory: the fetch stage's provenance, else a hash of the weights."""
    model_dir = Path(model_dir)
    provenance_path = model_dir / "provenance.json"
    provenance = json.loads(provenance_path.read_text(encoding="utf-8")) if provenance_path.is_file() else {}
    name = provenance.get("model_name") or provenance.get("name") or model_dir.name
    version = provenance.get("member_sha256") or provenance.get("weights_sha256")
    if not version:
        version = weights_sha256(model_dir)  # every shard: two models that differ in a later shard differ here
        if not version:
            raise FileNotFoundError(f"{model_dir}: no provenance.json and no weights to identify the model by")
    return f"{name}@{version}"
