from collections import Counter

import pytest

from ctxsynth.generation.base import GenerationError
from ctxsynth.generation.cache import GenerationCache
from ctxsynth.generation.openai_chat import OpenAIBackend
from ctxsynth.generation.settings import OpenAISettings
from ctxsynth.rehearsal.chat_server import ChatServer
from ctxsynth.synthesis.contexts import synthesize_contexts
from ctxsynth.synthesis.prompts import get_prompt

SEEDS = [
    {"id": f"s{i}", "task": "hotpotqa", "instruction": f"Question {i}?", "answer": f"answer {i}"} for i in range(12)
]
SAMPLING = {"max_new_tokens": 16, "temperature": 0.0}


def backend(urls, **settings):
    options = {"concurrency": 4, "timeout": 0.5, "max_retries": 4, **settings}
    return OpenAIBackend(
        OpenAISettings(base_urls=urls, model="served-model", model_id="model@1", **options), backoff_base=0.01
    )


def run(generator, tmp_path):
    return synthesize_contexts(
        SEEDS, generator, GenerationCache(tmp_path), get_prompt("context_synthesis"), SAMPLING, seed=0, target_words=50
    )


def test_every_fault_is_retried_and_no_item_is_lost_or_duplicated(tmp_path):
    faults = ["429", "500", "slow", "malformed", "drop"]
    with ChatServer(faults=faults, slow_seconds=1.5) as server:
        generator = backend([server.url])
        records, stats = run(generator, tmp_path)
    assert [r["id"] for r in records] == [s["id"] for s in SEEDS]
    for record, seed in zip(records, SEEDS):
        assert record["context"] == f"reply to Question: {seed['instruction']}"
    assert generator.retries == len(faults) and stats["generated"] == 12
    assert len(server.received) == 12 + len(faults)  # each fault cost exactly one extra request
    assert set(Counter(server.received)) == {f"Question: {s['instruction']}" for s in SEEDS}


def test_base_urls_are_used_round_robin(tmp_path):
    with ChatServer() as first, ChatServer() as second:
        records, _ = run(backend([first.url, second.url]), tmp_path)
    assert len(first.received) == len(second.received) == 6 and all(r["parse_status"] == "ok" for r in records)


def test_exhausted_retries_are_a_clear_error_and_finished_items_are_kept(tmp_path):
    with ChatServer(fail_matching="Question 11?") as server:
        with pytest.raises(GenerationError, match=r"s11 \(request \w+\) failed after 3 attempts: .*HTTP 500"):
            run(backend([server.url], max_retries=2, concurrency=1), tmp_path)
    # What finished before the failure is cached: a rerun against a healthy server asks only for the rest.
    with ChatServer() as server:
        records, stats = run(backend([server.url]), tmp_path)
    assert stats["from_cache"] == 11 and stats["generated"] == 1 and server.received == ["Question: Question 11?"]
    assert len(records) == 12


def test_response_prefix_is_refused_for_chat_servers():
    from ctxsynth.generation.base import Request

    with pytest.raises(ValueError, match="response_prefix"):
        backend(["http://127.0.0.1:9/v1"]).payload(Request("k", [], "Context:"), SAMPLING, 0)


def test_retry_after_accepts_seconds_and_http_dates():
    from email.utils import formatdate

    from ctxsynth.generation.http import retry_after_seconds

    assert retry_after_seconds("3") == 3.0 and retry_after_seconds(None) is None
    assert 50 <= retry_after_seconds(formatdate(__import__("time").time() + 60, usegmt=True)) <= 60
    assert retry_after_seconds("soon") is None


def test_the_synthesize_metrics_count_the_retries(tmp_path, tiny_model_dir):
    from ctxsynth.core.settings import load_settings
    from ctxsynth.synthesis.run import run_synthesis
    from ctxsynth.synthesis.settings import SynthesizeSettings

    faults = ["429", "500", "drop"]
    with ChatServer(faults=faults) as server:
        settings = load_settings(
            SynthesizeSettings,
            "synthesize",
            {
                "backend": "openai",
                "response_prefix": "",
                "cache_dir": str(tmp_path / "cache"),
                "openai": {"base_urls": [server.url], "model": "served-model", "model_id": "model@1"},
                "verify": {"enabled": False},
            },
        )
        records, metrics = run_synthesis(SEEDS, tiny_model_dir, settings)
    assert len(records) == 12 and metrics["run"]["http_retries"] == len(faults)
