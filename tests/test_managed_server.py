"""The synthesize stage starts the generator's server itself (`synthesize.openai.serve`), waits for it to list the
model, generates, and stops it before returning; a run served from the cache starts nothing. The server here is the
rehearsal's fake chat server, started by the same command path as `vllm serve` at the gpu scale."""

from __future__ import annotations

import socket

import pytest

from ctxsynth.core.settings import load_settings
from ctxsynth.generation.base import GenerationError
from ctxsynth.synthesis.run import run_synthesis
from ctxsynth.synthesis.settings import SynthesizeSettings

SEEDS = [
    {"id": f"s{i}", "task": "hotpotqa", "instruction": f"Question {i}?", "answer": f"answer {i}"} for i in range(4)
]
FAKE_VLLM = [
    "{python}",
    "-m",
    "ctxsynth.rehearsal.fake_openai",
    "--chat-only",
    "--chat-port",
    "{port}",
    "--model",
    "{model}",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def settings(tmp_path, port: int, command: list[str]) -> SynthesizeSettings:
    return load_settings(
        SynthesizeSettings,
        "synthesize",
        {
            "backend": "openai",
            "response_prefix": "",
            "target_words": 40,
            "sampling": {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": None},
            "cache_dir": str(tmp_path / "cache"),
            "openai": {
                "base_urls": ["http://127.0.0.1:9/v1"],  # replaced by the started server's URL
                "model": "Qwen/Qwen2.5-72B-Instruct",
                "model_id": "Qwen/Qwen2.5-72B-Instruct",
                "api_key_env": "CTXSYNTH_TEST_SERVE_KEY",
                "serve": {"command": command, "port": port, "startup_timeout": 60, "log": str(tmp_path / "server.log")},
            },
        },
    )


def test_the_stage_starts_the_server_generates_and_stops_it(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXSYNTH_TEST_SERVE_KEY", "unused")
    port = free_port()
    records, metrics = run_synthesis(SEEDS, tmp_path, settings(tmp_path, port, FAKE_VLLM))
    assert len(records) == 4 and all("answer" in r["context"] for r in records)
    assert metrics["server"] == {"command": FAKE_VLLM, "started": True}
    assert not listening(port)  # stopped before the stage returned: fine-tuning gets the GPUs back
    assert "serving Qwen/Qwen2.5-72B-Instruct" in (tmp_path / "server.log").read_text()
    # Everything cached: nothing to start.
    (tmp_path / "server.log").unlink()
    records_again, metrics = run_synthesis(SEEDS, tmp_path, settings(tmp_path, port, FAKE_VLLM))
    assert records_again == records and metrics["server"]["started"] is False
    assert not (tmp_path / "server.log").exists()


def test_a_server_that_dies_while_loading_stops_the_stage_with_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("CTXSYNTH_TEST_SERVE_KEY", "unused")
    dying = ["{python}", "-c", "print('CUDA out of memory while loading {model}'); raise SystemExit(3)"]
    with pytest.raises(GenerationError, match=r"exited with 3 before serving:\nCUDA out of memory while loading Qwen"):
        run_synthesis(SEEDS, tmp_path, settings(tmp_path, free_port(), dying))


def test_an_unknown_placeholder_is_refused_before_anything_starts(tmp_path):
    from ctxsynth.core.io import InputError

    with pytest.raises(InputError, match=r"synthesize.openai.serve.command.*unknown placeholder \{gpus\}"):
        settings(tmp_path, free_port(), ["vllm", "serve", "{model}", "--tensor-parallel-size", "{gpus}"])
