import pytest

from ctxsynth.generation.cache import GenerationCache
from ctxsynth.mix.assemble import assemble, pool_for_variant
from ctxsynth.synthesis.instructions import chunk_context, parse_question_answer, synthesize_instructions
from ctxsynth.synthesis.prompts import get_prompt


def test_long_contexts_are_cut_to_a_seeded_chunk_of_consecutive_words():
    context = " ".join(f"w{i}" for i in range(5000))
    chunk = chunk_context(context, 3000, seed=1, item_id="a")
    words = chunk.split()
    assert len(words) == 3000 and chunk in context
    assert int(words[-1][1:]) - int(words[0][1:]) == 2999
    assert chunk == chunk_context(context, 3000, seed=1, item_id="a")
    assert chunk != chunk_context(context, 3000, seed=1, item_id="b")
    assert chunk_context("short text", 3000, seed=1, item_id="a") == "short text"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Question: Who? Answer: Me.", ("Who?", "Me.", "ok")),
        ("Here it is.\nQuestion: What year?\nAnswer: 1999", ("What year?", "1999", "ok")),
        ("What year? 1999", (None, None, "missing_marker")),
        ("Question: Answer: 1999", (None, None, "empty")),
    ],
)
def test_parse_question_answer(text, expected):
    assert parse_question_answer(text) == expected


class FlakyBackend:
    """Ignores the format the first time it sees a context that mentions 'flaky'."""

    name, model_id = "fake", "fake@1"

    def __init__(self):
        self.seen, self.contexts = [], set()

    def iter_generate(self, requests, sampling, seed):
        for request in requests:
            self.seen.append(request.key)
            context = request.messages[1]["content"]
            fail = "flaky" in context and context not in self.contexts
            self.contexts.add(context)
            text = "no format" if fail else "Question: What is described? Answer: a thing"
            yield [(request, {"text": text, "generated_tokens": 5, "finish_reason": "stop"})]


def test_retries_until_parsed_and_output_feeds_mix(tmp_path):
    seeds = [
        {"id": "a", "task": "hotpotqa", "instruction": "q", "answer": "x", "context": "a flaky context"},
        {"id": "b", "task": "hotpotqa", "instruction": "q", "answer": "x", "context": "a fine context"},
        {"id": "c", "task": "hotpotqa", "instruction": "q", "answer": "x", "context": None},
    ]
    backend = FlakyBackend()
    records, stats = synthesize_instructions(
        seeds,
        backend,
        GenerationCache(tmp_path),
        get_prompt("instruction_synthesis"),
        {"max_new_tokens": 8, "temperature": 0.8},
        seed=0,
        chunk_words=3000,
        max_attempts=3,
    )
    by_id = {r["id"]: r for r in records}
    assert set(by_id) == {"a", "b"} and stats["skipped_without_context"] == 1
    assert by_id["a"]["attempts"] == 2 and by_id["a"]["parse_status"] == "ok"
    assert by_id["b"]["attempts"] == 1 and by_id["a"]["instruction"] == "What is described?"
    assert len(backend.seen) == 3
    samples = assemble(
        pool_for_variant("context_synthesis", [], records),
        "context_synthesis",
        2,
        seed=0,
        summarization_distractors=True,
    )
    assert len(samples) == 2 and "a flaky context" in samples[0]["messages"][0]["content"]


def test_attempts_are_capped_and_failures_recorded(tmp_path):
    class Never:
        name, model_id = "fake", "fake@2"

        def iter_generate(self, requests, sampling, seed):
            for request in requests:
                yield [(request, {"text": "nothing useful", "generated_tokens": 2, "finish_reason": "stop"})]

    seeds = [{"id": "a", "task": "hotpotqa", "instruction": "q", "answer": "x", "context": "ctx"}]
    records, stats = synthesize_instructions(
        seeds,
        Never(),
        GenerationCache(tmp_path),
        get_prompt("instruction_synthesis"),
        {"max_new_tokens": 8, "temperature": 0.8},
        seed=0,
        chunk_words=3000,
        max_attempts=4,
    )
    assert records[0]["parse_status"] == "missing_marker" and records[0]["attempts"] == 4
    assert stats["generated"] == 4 and pool_for_variant("context_synthesis", [], records) == []


def test_response_prefix_opens_the_reply_and_counts_in_the_key(tmp_path):
    class Continues:
        name, model_id = "fake", "fake@3"

        def __init__(self):
            self.prefixes = []

        def iter_generate(self, requests, sampling, seed):
            for request in requests:
                self.prefixes.append(request.response_prefix)
                yield [
                    (
                        request,
                        {
                            "text": request.response_prefix + " What is it?\nAnswer: this",
                            "generated_tokens": 4,
                            "finish_reason": "stop",
                        },
                    )
                ]

    seeds = [{"id": "a", "task": "hotpotqa", "instruction": "q", "answer": "x", "context": "ctx"}]
    backend = Continues()
    records, _ = synthesize_instructions(
        seeds,
        backend,
        GenerationCache(tmp_path),
        get_prompt("instruction_synthesis"),
        {"max_new_tokens": 8, "temperature": 0.0},
        seed=0,
        chunk_words=30,
        max_attempts=1,
        response_prefix="Question:",
    )
    assert backend.prefixes == ["Question:"] and records[0]["instruction"] == "What is it?"
    assert records[0]["answer"] == "this" and records[0]["provenance"]["response_prefix"] == "Question:"
