"""Hub models and datasets record the commit sha their revision resolved to, and are read at that sha (issue 12,
item 8). No network here: the huggingface_hub, transformers and datasets calls the code makes are stand-ins."""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest

from ctxsynth.core.io import InputError
from ctxsynth.mix.general_source import load_general
from ctxsynth.prepare.fetch import FetchError
from ctxsynth.prepare.model_convert import materialize_model

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHfApi:
    calls: list = []
    files: list = ["config.json", "model.safetensors", "tokenizer.json"]  # the repository's file list

    def list_repo_files(self, repo_id, revision=None, **kwargs):
        self.calls.append(("files", repo_id, revision))
        return list(self.files)

    def model_info(self, repo_id, revision=None, **kwargs):
        self.calls.append(("model", repo_id, revision))
        return types.SimpleNamespace(id=repo_id, sha=SHA)

    def dataset_info(self, repo_id, revision=None, **kwargs):
        self.calls.append(("dataset", repo_id, revision))
        return types.SimpleNamespace(id=repo_id, sha=SHA)


@pytest.fixture
def hub(monkeypatch):
    import huggingface_hub

    FakeHfApi.calls = []
    FakeHfApi.files = ["config.json", "model.safetensors", "tokenizer.json"]
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_a_hub_model_is_downloaded_as_it_is_at_its_resolved_commit(hub, tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    import huggingface_hub

    downloads = []

    def snapshot_download(repo_id, revision=None, local_dir=None, allow_patterns=None, **kwargs):
        downloads.append((repo_id, revision, tuple(allow_patterns)))
        shutil.copytree(tiny_model_dir, local_dir)
        (Path(local_dir) / ".cache").mkdir()  # huggingface_hub's metadata: not part of the model
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    spec = {"source": "hub", "id": "org/model", "revision": "main"}
    provenance = materialize_model(spec, tmp_path / "model")
    assert hub.calls == [("model", "org/model", "main"), ("files", "org/model", SHA)]
    assert [(repo, revision) for repo, revision, _ in downloads] == [("org/model", SHA)]  # one commit for all files
    assert "*.safetensors" in downloads[0][2] and not any(".bin" in pattern for pattern in downloads[0][2])
    assert provenance["revision"] == "main" and provenance["resolved_revision"] == SHA
    assert provenance["name"] == "org/model" and not (tmp_path / "model" / ".cache").exists()
    for path in tiny_model_dir.iterdir():  # taken as it is: no fp32 rebuild
        assert (tmp_path / "model" / path.name).read_bytes() == path.read_bytes()
    json.dumps(provenance)  # written as data/model/provenance.json


def test_a_hub_model_without_safetensors_is_downloaded_as_bin_and_converted(hub, tmp_path, monkeypatch):
    """THUDM/LongAlign-7B-64k-base ships only pytorch_model.bin: the download asks for it, fetch converts it."""
    import huggingface_hub
    import torch
    from tiny_model import tiny_llama

    hub.files = ["config.json", "pytorch_model.bin", "tokenizer.model", "tokenizer_config.json"]
    model = tiny_llama("float16", vocab_size=64)
    patterns = []

    def snapshot_download(repo_id, revision=None, local_dir=None, allow_patterns=None, **kwargs):
        patterns.extend(allow_patterns)
        Path(local_dir).mkdir(parents=True)
        model.config.save_pretrained(local_dir)
        torch.save(model.state_dict(), Path(local_dir) / "pytorch_model.bin")
        return local_dir

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    provenance = materialize_model({"source": "hub", "id": "THUDM/LongAlign-7B-64k-base"}, tmp_path / "model")
    assert "pytorch_model*.bin" in patterns and provenance["converted_from"] == ["pytorch_model.bin"]
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.json", "model.safetensors"]


def test_a_local_model_keeps_its_dtype_and_shards(tiny_model_dir, tmp_path, monkeypatch):
    import torch
    from transformers import AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    local = tmp_path / "inputs" / "models" / "bf16"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16)
    model.save_pretrained(local, max_shard_size="10KB")  # several shards and an index
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (local / name).write_bytes((tiny_model_dir / name).read_bytes())
    shards = sorted(p.name for p in local.glob("*.safetensors"))
    assert len(shards) > 1
    provenance = materialize_model({"source": "path", "path": str(local)}, tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").glob("*.safetensors")) == shards
    assert (tmp_path / "model" / "model.safetensors.index.json").is_file()
    assert json.loads((tmp_path / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    assert len(provenance["weights_sha256"]) == 64
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert reloaded.dtype == torch.bfloat16


def test_an_unresolvable_hub_model_is_a_fetch_error(monkeypatch, tmp_path):
    import huggingface_hub

    class Offline:
        def model_info(self, *args, **kwargs):
            raise OSError("no network")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(FetchError, match="fetch.model.id 'org/model'.*no network"):
        materialize_model({"source": "hub", "id": "org/model"}, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_a_hub_dataset_is_loaded_at_and_records_its_resolved_commit(hub, monkeypatch, tmp_path):
    import datasets

    monkeypatch.chdir(tmp_path)
    loaded = []
    rows = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": "a"}]} for i in range(3)
    ]

    def load_dataset(path, split=None, revision=None, **kwargs):
        loaded.append((path, split, revision))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    samples, report = load_general({"source": "org/chat", "split": "train_sft"}, long_samples=0, seed=0)
    assert hub.calls == [("dataset", "org/chat", None)]
    assert loaded == [("org/chat", "train_sft", SHA)]
    assert len(samples) == 3 and report == {"source": "org/chat", "available": 3, "samples": 3, "revision": SHA}
    # a pinned revision is what the hub is asked for (a tag or branch resolves to its commit, which is recorded)
    load_general({"source": "org/chat", "split": "train_sft", "revision": "v1.0"}, long_samples=0, seed=0)
    assert hub.calls[-1] == ("dataset", "org/chat", "v1.0") and loaded[-1] == ("org/chat", "train_sft", SHA)


def test_a_local_general_file_has_no_revision(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    row = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    (tmp_path / "chat.jsonl").write_text(json.dumps(row) + "\n")
    assert "revision" not in load_general({"source": "chat.jsonl"}, 0, 0)[1]


def test_an_unresolvable_hub_dataset_names_the_key(monkeypatch, tmp_path):
    import huggingface_hub

    class Offline:
        def dataset_info(self, *args, **kwargs):
            raise OSError("no network")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    with pytest.raises(InputError, match="no network") as error:
        load_general({"source": "org/chat"}, 0, 0)
    assert error.value.field == "mix.general.source"
