"""Opt-in: the openai backend against a real llama.cpp server serving the SmolLM2 GGUF.

Runs only when llama-cpp-python[server] is installed (it builds from source, about 8 minutes here) and the GGUF
path is given: CTXSYNTH_GGUF=/path/to/SmolLM2-135M-Instruct.Q4_1.gguf pytest tests/test_llama_cpp_server.py
"""

import dataclasses
import os
import socket
import subprocess
import sys
import time

import pytest

from ctxsynth.generation.cache import GenerationCache
from ctxsynth.generation.openai_chat import OpenAIBackend
from ctxsynth.generation.settings import OpenAISettings
from ctxsynth.synthesis.contexts import synthesize_contexts
from ctxsynth.synthesis.prompts import get_prompt

pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is not installed (opt-in test)")
GGUF = os.environ.get("CTXSYNTH_GGUF")


@pytest.mark.skipif(not GGUF, reason="set CTXSYNTH_GGUF to the SmolLM2 GGUF file to run this opt-in test")
def test_synthesis_through_a_real_llama_cpp_server(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            GGUF,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        seeds = [
            {"id": f"s{i}", "task": "hotpotqa", "instruction": q, "answer": a}
            for i, (q, a) in enumerate([("Who wrote Hamlet?", "William Shakespeare"), ("When did WW2 end?", "1945")])
        ]
        served = OpenAISettings(
            base_urls=[f"http://127.0.0.1:{port}/v1"], model="smollm2", model_id="smollm2-gguf", concurrency=2
        )
        generator = OpenAIBackend(dataclasses.replace(served, timeout=120, max_retries=2))
        sampling = {"max_new_tokens": 48, "temperature": 0.0}
        records, stats = synthesize_contexts(
            seeds,
            generator,
            GenerationCache(tmp_path),
            get_prompt("context_synthesis"),
            sampling,
            seed=0,
            target_words=50,
        )
        assert stats["generated"] == 2 and all(r["raw_output"] for r in records)
        again, stats = synthesize_contexts(
            seeds,
            generator,
            GenerationCache(tmp_path),
            get_prompt("context_synthesis"),
            sampling,
            seed=0,
            target_words=50,
        )
        assert stats["from_cache"] == 2 and again == records
    finally:
        server.terminate()
        server.wait(timeout=30)
