"""Hub models and datasets record the commit sha their revision resolved to, and are read at that sha (issue 12,
item 8). No network here: the huggingface_hub, transformers and datasets calls the code makes are stand-ins."""

from __future__ import annotations

import json
import types

import pytest

from ctxsynth.core.io import InputError
from ctxsynth.prepare.fetch import FetchError
from ctxsynth.prepare.general_data import load_general
from ctxsynth.prepare.model_convert import materialize_model

SHA = "0123456789abcdef0123456789abcdef01234567"


class FakeHfApi:
    calls: list = []

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
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


def test_a_hub_model_is_loaded_at_and_records_its_resolved_commit(hub, tiny_model_dir, tmp_path, monkeypatch):
    import transformers

    loaded = []
    for cls in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = cls.from_pretrained

        def from_pretrained(name, revision=None, _original=original, **kwargs):
            loaded.append((name, revision))
            return _original(tiny_model_dir)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)
    spec = {"source": "hub", "id": "org/model", "revision": "main"}
    provenance = materialize_model(spec, tmp_path / "model")
    assert hub.calls == [("model", "org/model", "main")]
    assert loaded == [("org/model", SHA), ("org/model", SHA)]  # tokenizer and weights from the same commit
    assert provenance["revision"] == "main" and provenance["resolved_revision"] == SHA
    assert provenance["name"] == "org/model" and (tmp_path / "model" / "model.safetensors").is_file()
    json.dumps(provenance)  # written as data/model/provenance.json


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
