"""A key goes only where its settings send it: each backend reads exactly the variable its `api_key_env` names
(null: none), never falls back to OPENAI_API_KEY, stops with one line when the named variable is unset, and writes
the key to no record, metric, cache, batch state or log."""

from __future__ import annotations

import pytest

from ctxsynth.core.io import InputError
from ctxsynth.core.settings import load_settings
from ctxsynth.rehearsal.batch_server import BatchServer
from ctxsynth.rehearsal.chat_server import ChatServer
from ctxsynth.synthesis.run import run_synthesis
from ctxsynth.synthesis.settings import SynthesizeSettings

SEEDS = [
    {"id": f"s{i}", "task": "hotpotqa", "instruction": f"Question {i}?", "answer": f"answer {i}"} for i in range(3)
]
OPENAI_CANARY, LOCAL_CANARY = "sk-canary-openai-7f3a9c", "sk-canary-local-51d2e8"


def chat_settings(url: str, cache, api_key_env: str | None) -> SynthesizeSettings:
    openai = {"base_urls": [url], "model": "served-model", "model_id": "model@1", "api_key_env": api_key_env}
    values = {"backend": "openai", "response_prefix": "", "cache_dir": str(cache), "openai": openai}
    return load_settings(SynthesizeSettings, "synthesize", {**values, "verify": {"enabled": False}})


def batch_settings(url: str, tmp_path) -> SynthesizeSettings:
    batch = {"base_url": url, "model": "gpt-4o-mini-2024-07-18", "poll_interval": 0.01, "state_dir": str(tmp_path)}
    sampling = {"max_new_tokens": 16, "temperature": 0.0, "repetition_penalty": None}
    values = {"backend": "openai-batch", "response_prefix": "", "sampling": sampling, "openai_batch": batch}
    values["cache_dir"] = str(tmp_path / "batch-cache")
    return load_settings(SynthesizeSettings, "synthesize", {**values, "verify": {"enabled": False}})


def test_each_key_goes_only_where_its_settings_name_it_and_is_written_nowhere(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_CANARY)
    monkeypatch.setenv("CTXSYNTH_LOCAL_KEY", LOCAL_CANARY)
    written = []
    with ChatServer() as server:
        # null: the local server needs no key, and OPENAI_API_KEY must not go to it anyway.
        records, metrics = run_synthesis(SEEDS, tmp_path, chat_settings(server.url, tmp_path / "a", None))
        assert set(server.authorizations) == {"Bearer EMPTY"}
        written += [records, metrics]
        server.authorizations.clear()
        records, metrics = run_synthesis(
            SEEDS, tmp_path, chat_settings(server.url, tmp_path / "b", "CTXSYNTH_LOCAL_KEY")
        )
        assert set(server.authorizations) == {f"Bearer {LOCAL_CANARY}"}
        written += [records, metrics]
    with BatchServer(api_key=OPENAI_CANARY) as batch:  # it refuses any other key: OpenAI's goes to OpenAI
        records, metrics = run_synthesis(SEEDS, tmp_path, batch_settings(batch.url, tmp_path / "batches"))
        assert len(records) == len(SEEDS) and metrics["batch_ids"]
        written += [records, metrics]
    files = [path.read_bytes() for path in tmp_path.rglob("*") if path.is_file()]
    assert len(files) > 6  # caches, batch state and uploads were written: the scan below looks at something
    shown = capfd.readouterr()
    for canary in (OPENAI_CANARY, LOCAL_CANARY):
        assert not any(canary.encode() in data for data in files), "a key was written to a file"
        assert canary not in repr(written) and canary not in shown.out + shown.err


def test_an_unset_key_variable_stops_with_one_line_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("CTXSYNTH_LOCAL_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_CANARY)  # set, but not named: no fallback
    with ChatServer() as server:
        with pytest.raises(InputError) as error:
            run_synthesis(SEEDS, tmp_path, chat_settings(server.url, tmp_path, "CTXSYNTH_LOCAL_KEY"))
        assert server.received == []  # stopped before anything was sent
    assert error.value.field == "synthesize.openai.api_key_env" and "$CTXSYNTH_LOCAL_KEY" in str(error.value)
    assert "\n" not in str(error.value)
