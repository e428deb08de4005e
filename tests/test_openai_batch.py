import json

import pytest

from ctxsynth.generation.base import GenerationError, Request
from ctxsynth.generation.cache import GenerationCache, stored_key
from ctxsynth.generation.openai_batch import OpenAIBatchBackend
from ctxsynth.generation.settings import OpenAIBatchSettings
from ctxsynth.rehearsal.batch_server import BatchServer, question_of
from ctxsynth.synthesis.contexts import synthesize_contexts
from ctxsynth.synthesis.prompts import get_prompt

SEEDS = [
    {"id": f"s{i}", "task": "hotpotqa", "instruction": f"Question {i}?", "answer": f"answer {i}"} for i in range(12)
]
SAMPLING = {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9}


def backend(url, tmp_path, **settings):
    options = {"poll_interval": 0.01, "state_dir": str(tmp_path / "batches"), "timeout": 2, "max_retries": 3}
    settings = OpenAIBatchSettings(base_url=url, model="served-model", model_id="model@1", **{**options, **settings})
    return OpenAIBatchBackend(settings, api_key="test-key", backoff_base=0.01, verbose=False)


def run(generator, tmp_path, seeds=SEEDS):
    return synthesize_contexts(
        seeds,
        generator,
        GenerationCache(tmp_path / "cache"),
        get_prompt("context_synthesis"),
        SAMPLING,
        seed=3,
        target_words=50,
    )


def state_files(tmp_path):
    return sorted(p.name for p in (tmp_path / "batches").glob("*")) if (tmp_path / "batches").is_dir() else []


def assert_matched(records, seeds=SEEDS):
    assert [r["id"] for r in records] == [s["id"] for s in seeds]
    for record, seed in zip(records, seeds):
        assert record["parse_status"] == "ok"
        assert record["context"] == f"reply to Question: {seed['instruction']}"


def test_results_are_matched_by_custom_id_not_by_order(tmp_path):
    with BatchServer() as server:
        records, stats = run(backend(server.url, tmp_path), tmp_path)
    assert_matched(records)
    assert stats["generated"] == 12 and server.counts["uploads"] == server.counts["creates"] == 1
    # The fake shuffled the output; matching by position would have paired contexts with the wrong seeds.
    submitted = [line["custom_id"] for line in server.requests_of("batch_0")]
    assert server.output_order["batch_0"] != submitted and sorted(server.output_order["batch_0"]) == sorted(submitted)
    # One line per request, keyed by the request's key (stored in the cache with the backend's generation settings,
    # none for a server), with the sampling of the run.
    lines = server.requests_of("batch_0")
    assert [stored_key(line["custom_id"], {}) for line in lines] == [r["provenance"]["cache_key"] for r in records]
    for line in lines:
        assert line["method"] == "POST" and line["url"] == "/v1/chat/completions"
        body = line["body"]
        assert body["model"] == "served-model" and body["max_tokens"] == 16 and body["seed"] == 3
        assert body["temperature"] == 0.7 and body["top_p"] == 0.9 and body["messages"][0]["role"] == "system"
    assert server.batches["batch_0"]["polls"] == 4  # validating, in_progress x2, completed
    assert state_files(tmp_path) == []  # consumed: the next run submits fresh


def test_a_run_killed_while_polling_resumes_the_submitted_batch(tmp_path):
    with BatchServer(in_progress_polls=5) as server:
        with pytest.raises(GenerationError, match="still in_progress after 2 polls; a rerun resumes it"):
            run(backend(server.url, tmp_path, max_polls=2), tmp_path)
        state = json.loads(
            (tmp_path / "batches" / next(n for n in state_files(tmp_path) if n.endswith(".json"))).read_text()
        )
        assert (
            state["batch_id"] == "batch_0" and state["input_file_id"] == "file-in0" and len(state["custom_ids"]) == 12
        )
        records, stats = run(backend(server.url, tmp_path), tmp_path)
    assert_matched(records)
    assert server.counts["uploads"] == server.counts["creates"] == 1 and stats["generated"] == 12
    assert state_files(tmp_path) == []


def test_a_run_resumes_a_batch_covering_fewer_requests(tmp_path):
    with BatchServer() as server:
        with pytest.raises(GenerationError, match="still"):
            run(backend(server.url, tmp_path, max_polls=1), tmp_path)
        records, stats = run(backend(server.url, tmp_path), tmp_path, seeds=SEEDS[:5])
    assert_matched(records, SEEDS[:5])
    assert server.counts["creates"] == 1 and stats["generated"] == 5


def test_a_lost_create_reply_does_not_create_a_second_batch(tmp_path):
    # The server creates the batch but the reply is lost; the retry finds the batch instead of paying again.
    with BatchServer(faults={"POST /batches": ["500-after"]}) as server:
        generator = backend(server.url, tmp_path)
        records, _ = run(generator, tmp_path)
    assert_matched(records)
    assert server.counts["creates"] == 1 and server.counts["lists"] >= 1 and generator.retries == 1


def test_a_run_killed_between_upload_and_create_reuses_the_upload(tmp_path):
    with BatchServer(faults={"POST /batches": ["500-after"]}) as server:
        with pytest.raises(GenerationError, match="creating the batch .* failed after 1 attempts"):
            run(backend(server.url, tmp_path, max_retries=0), tmp_path)
        assert server.counts["creates"] == 1  # created, but this run never learned its id
        records, _ = run(backend(server.url, tmp_path), tmp_path)
    assert_matched(records)
    assert server.counts["uploads"] == server.counts["creates"] == 1


def test_a_transient_error_on_every_call_is_retried(tmp_path):
    faults = {
        "POST /files": ["500"],
        "POST /batches": ["429"],
        "GET /batches/": ["500", None, "500"],
        "GET /content": ["500"],
    }
    with BatchServer(faults=faults) as server:
        generator = backend(server.url, tmp_path)
        records, _ = run(generator, tmp_path)
    assert_matched(records)
    assert generator.retries == 5 and server.counts["uploads"] == server.counts["creates"] == 1


@pytest.mark.parametrize("errors_in_output", [False, True])
def test_failed_and_missing_items_raise_after_the_successes_are_cached(tmp_path, errors_in_output):
    with BatchServer(
        error_matching="Question 3?", omit_matching="Question 7?", errors_in_output=errors_in_output
    ) as server:
        with pytest.raises(
            GenerationError,
            match=r"2 of 12 requests failed \(1 with errors, 1 missing from the "
            r"output\); first errors: s\d+ \(request \w+\): HTTP 400: bad_item: invalid prompt",
        ):
            run(backend(server.url, tmp_path), tmp_path)
    assert state_files(tmp_path) == []
    with BatchServer() as server:
        records, stats = run(backend(server.url, tmp_path), tmp_path)
        resubmitted = sorted(question_of(line["body"]) for line in server.requests_of("batch_0"))
    assert resubmitted == ["Question: Question 3?", "Question: Question 7?"]
    assert stats == {**stats, "from_cache": 10, "generated": 2}
    assert_matched(records)


def test_a_failed_batch_is_a_clear_error(tmp_path):
    with BatchServer(terminal="failed") as server:
        with pytest.raises(
            GenerationError,
            match="ended failed: line 1: model_not_found: The model does not exist; 0 of 12 results were kept",
        ):
            run(backend(server.url, tmp_path), tmp_path)
    assert state_files(tmp_path) == [] and not (tmp_path / "cache").exists()


def test_an_expired_batch_keeps_its_finished_results(tmp_path):
    with BatchServer(terminal="expired") as server:
        with pytest.raises(GenerationError, match="ended expired: no errors reported; 6 of 12 results were kept"):
            run(backend(server.url, tmp_path), tmp_path)
    with BatchServer() as server:
        records, stats = run(backend(server.url, tmp_path), tmp_path)
    assert stats["from_cache"] == 6 and len(server.requests_of("batch_0")) == 6
    assert_matched(records)


def test_a_repeated_custom_id_in_the_output_is_refused(tmp_path):
    with BatchServer(duplicate_output=True) as server:
        with pytest.raises(GenerationError, match="appears twice"):
            run(backend(server.url, tmp_path), tmp_path)
    assert not (tmp_path / "cache").exists()  # nothing is trusted from an output that cannot be matched


def test_unsupported_settings_are_refused_before_anything_is_uploaded(tmp_path):
    with BatchServer() as server:
        generator = backend(server.url, tmp_path)
        with pytest.raises(ValueError, match="response_prefix"):
            list(generator.iter_generate([Request("k", [], "Context:")], SAMPLING, 0))
        with pytest.raises(ValueError, match="repetition_penalty"):
            list(generator.iter_generate([Request("k", [])], {**SAMPLING, "repetition_penalty": 1.1}, 0))
    assert server.counts["uploads"] == 0
    assert (
        backend("http://x/v1", tmp_path, send_repetition_penalty=True).payload(
            Request("k", []), {**SAMPLING, "repetition_penalty": 1.1}, 0
        )["repetition_penalty"]
        == 1.1
    )


def test_each_result_names_the_batch_that_paid_for_it_and_the_backend_lists_its_batches(tmp_path):
    """Provenance for what was paid for: the batch id travels with each generation into the cache and the record."""
    with BatchServer(error_matching="Question 3?") as server:
        first = backend(server.url, tmp_path)
        with pytest.raises(GenerationError, match="1 of 12 requests failed"):
            run(first, tmp_path)
        assert first.batches == [
            {
                "batch_id": "batch_0",
                "status": "completed",
                "input_file_id": "file-in0",
                "output_file_id": server.batches["batch_0"]["output_file_id"],
                "error_file_id": server.batches["batch_0"]["error_file_id"],
                "request_counts": {"total": 12, "completed": 11, "failed": 1},
                "requested": 12,
                "succeeded": 11,
            }
        ]
        server.error_matching = None
        second = backend(server.url, tmp_path)
        records, stats = run(second, tmp_path)
    assert stats["from_cache"] == 11 and [b["batch_id"] for b in second.batches] == ["batch_1"]
    assert second.batches[0]["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    assert {r["id"]: r["provenance"]["batch_id"] for r in records} == {
        s["id"]: "batch_1" if s["id"] == "s3" else "batch_0" for s in SEEDS
    }
    cached = GenerationCache(tmp_path / "cache").get(records[0]["provenance"]["cache_key"])
    assert cached["batch_id"] == "batch_0"


def test_the_synthesize_metrics_record_the_batches_used(tmp_path, monkeypatch):
    from ctxsynth.core.settings import load_settings
    from ctxsynth.synthesis.run import run_synthesis
    from ctxsynth.synthesis.settings import SynthesizeSettings

    def settings(url):
        return load_settings(
            SynthesizeSettings,
            "synthesize",
            {
                "backend": "openai-batch",
                "response_prefix": "",
                "sampling": {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.9, "repetition_penalty": None},
                "seed": 3,
                "cache_dir": str(tmp_path / "cache"),
                "openai_batch": {
                    "base_url": url,
                    "model": "served-model",
                    "model_id": "model@1",
                    "poll_interval": 0.01,
                    "state_dir": str(tmp_path / "batches"),
                    "timeout": 2,
                    "max_retries": 3,
                    "api_key_env": "CTXSYNTH_TEST_BATCH_KEY",
                },
            },
        )

    monkeypatch.setenv("CTXSYNTH_TEST_BATCH_KEY", "test-key")

    extra = [{"id": "s99", "task": "hotpotqa", "instruction": "Question 99?", "answer": "answer 99"}]
    with BatchServer() as server:
        records, metrics = run_synthesis(SEEDS, tmp_path, settings(server.url))
        assert [b["batch_id"] for b in metrics["batches"]] == ["batch_0"] and metrics["batch_ids"] == ["batch_0"]
        batch = metrics["batches"][0]
        assert batch["status"] == "completed" and batch["input_file_id"] == "file-in0"
        assert batch["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
        assert {r["provenance"]["batch_id"] for r in records} == {"batch_0"}
        # A later run pays for the new seed only; the cached records still name the batch they came from.
        records, metrics = run_synthesis(SEEDS + extra, tmp_path, settings(server.url))
    assert [b["batch_id"] for b in metrics["batches"]] == ["batch_1"]
    assert metrics["batch_ids"] == ["batch_0", "batch_1"] and metrics["run"]["from_cache"] == 12
    assert records[-1]["provenance"]["batch_id"] == "batch_1"
    json.dumps(metrics)  # metrics/synthesize.json is JSON
