"""The hub and this machine, decided in one place: whether a parameter names a local path or a hub repository, the
commit sha a hub revision resolves to (what was read is recorded, even when the params named a branch or nothing),
and a model's identity (its name and a content hash over every weight file), the key caches and provenance record.

Nothing here downloads: the fetch and read functions of each stage do, at the sha resolved here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ctxsynth.core.io import sha256_file, sha256_text


def is_local(source: str, suffixes: tuple[str, ...] = ()) -> bool:
    """A path on this machine rather than a hub id ("owner/name"): it exists, ends with one of the local `suffixes`,
    or cannot be a hub id (a relative or absolute path, no owner, or more than one slash)."""
    return (
        os.path.exists(source)
        or source.endswith(suffixes)
        or source.startswith((".", "/", "inputs/", "data/"))
        or source.count("/") != 1
    )


def resolve_revision(repo_id: str, revision: str | None, repo_type: str) -> str:
    """The commit sha that `revision` (None: the default branch) of hub `repo_type` ("model" or "dataset")
    `repo_id` resolves to now; needs the network. Raises whatever huggingface_hub raises: each caller turns it into
    a one-line error naming its own parameter."""
    from huggingface_hub import HfApi

    api = HfApi()
    info_of = api.model_info if repo_type == "model" else api.dataset_info
    info = info_of(repo_id, revision=revision)
    if not info.sha:
        raise ValueError(f"the hub returned no commit sha for revision {revision!r}")
    return info.sha


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
