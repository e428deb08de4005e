import json

import pytest

from ctxsynth.generation.cache import GenerationCache
from ctxsynth.generation.transformers_backend import TransformersBackend
from ctxsynth.synthesis.contexts import parse_context, summarize, synthesize_contexts
from ctxsynth.synthesis.prompts import get_prompt

# The paper's Figure 3, as given in its specification (shared/notes/PAPER.md), with {length} = 2000.
PAPER_SYSTEM = 'Please infer the missing context. Always start with "Context:" and do not provide any explanation.'
PAPER_USER = """Context: [MISSING]
Question: Who wrote Hamlet?
Answer: William Shakespeare

The above is a question-answer pair based on a context which is missing. Write the missing context to provide relevant background information that leads to both the question and the answer, ensuring that any necessary numerical or factual details are included. The context also should include relevant details about the character, their environment, aspirations, challenges, and relationships. It should be sufficiently detailed to reach approximately 2000 words."""  # noqa: E501 (the paper's text, verbatim)

SEEDS = [
    {"id": f"s{i}", "task": "hotpotqa", "instruction": f"Question number {i}?", "answer": f"answer {i}"}
    for i in range(5)
]


def test_prompt_matches_the_paper_exactly():
    messages = get_prompt("context_synthesis").messages(
        instruction="Who wrote Hamlet?", answer="William Shakespeare", length=2000
    )
    assert messages == [{"role": "system", "content": PAPER_SYSTEM}, {"role": "user", "content": PAPER_USER}]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Context: The play was written in 1600.", ("The play was written in 1600.", "ok")),
        ("Sure! Context:\nA story.\n", ("A story.", "ok")),
        ("A story with no marker.", (None, "missing_marker")),
        ("Context:   \n", (None, "empty")),
        ("Context: first Context: second", ("first Context: second", "ok")),
        ("Context: Context:\nContext: text", ("text", "ok")),
    ],
)
def test_parse_context(text, expected):
    assert parse_context(text, "Context:") == expected


class CountingBackend:
    """A stand-in generator that records what it was asked, to check what the cache spares."""

    name, model_id = "fake", "fake-model@1"

    def __init__(self, fail_after: int | None = None):
        self.calls, self.fail_after = [], fail_after

    def iter_generate(self, requests, sampling, seed):
        for request in requests:
            if self.fail_after is not None and len(self.calls) >= self.fail_after:
                raise KeyboardInterrupt("killed")
            self.calls.append(request.key)
            question = request.messages[1]["content"].split("\n")[1]
            text = "no marker" if "3" in question else f"Context: background for {question}"
            yield [(request, {"text": text, "generated_tokens": 7, "finish_reason": "stop"})]


def run(backend, cache, seeds=SEEDS, sampling=None):
    return synthesize_contexts(
        seeds,
        backend,
        cache,
        get_prompt("context_synthesis"),
        sampling or {"max_new_tokens": 8, "temperature": 0.0},
        seed=0,
        target_words=50,
    )


def test_records_carry_status_and_provenance_and_failures_are_counted(tmp_path):
    records, stats = run(CountingBackend(), GenerationCache(tmp_path))
    assert [r["id"] for r in records] == [s["id"] for s in SEEDS]
    failed = [r for r in records if r["parse_status"] != "ok"]
    assert [r["id"] for r in failed] == ["s3"] and failed[0]["context"] is None
    assert failed[0]["raw_output"] == "no marker"
    provenance = records[0]["provenance"]
    assert provenance["model"] == "fake-model@1" and provenance["prompt_version"] == "fig3-v1"
    assert provenance["sampling"] == {"max_new_tokens": 8, "temperature": 0.0} and provenance["seed"] == 0
    summary = summarize(records)
    assert summary["parse_failures"] == 1 and summary["tasks"]["hotpotqa"]["missing_marker"] == 1
    assert stats["generated"] == 5


def test_cache_spares_reruns_resumes_after_a_kill_and_distrusts_corrupt_entries(tmp_path):
    cache = GenerationCache(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run(CountingBackend(fail_after=2), cache)
    resumed = CountingBackend()
    records, stats = run(resumed, cache)
    assert len(resumed.calls) == 3 and stats["from_cache"] == 2  # only the three unfinished items
    again = CountingBackend()
    assert run(again, cache)[0] == records and again.calls == []
    # A changed sampling parameter is a different generation.
    changed = CountingBackend()
    run(changed, cache, sampling={"max_new_tokens": 9, "temperature": 0.0})
    assert len(changed.calls) == 5
    # A truncated cache file is regenerated, not trusted.
    key = records[0]["provenance"]["cache_key"]
    entry = tmp_path / key[:2] / f"{key}.json"
    entry.write_text(entry.read_text()[:20])
    repaired = CountingBackend()
    run(repaired, GenerationCache(tmp_path))
    assert len(repaired.calls) == 1


def test_transformers_backend_batches_real_generation(tiny_model_dir, tmp_path):
    backend = TransformersBackend(tiny_model_dir, batch_size=2, device="cpu", dtype="float32")
    records, stats = run(backend, GenerationCache(tmp_path), sampling={"max_new_tokens": 6, "temperature": 0.0})
    assert stats["generated"] == 5 and stats["generated_tokens"] > 0
    assert all(r["finish_reason"] in {"stop", "length"} and r["generated_tokens"] <= 6 for r in records)
    # Greedy batched output equals one-at-a-time output: left padding does not change the result.
    single = TransformersBackend(tiny_model_dir, batch_size=1, device="cpu", dtype="float32")
    alone, _ = run(single, GenerationCache(tmp_path / "other"), sampling={"max_new_tokens": 6, "temperature": 0.0})
    assert [r["raw_output"] for r in alone] == [r["raw_output"] for r in records]
    assert json.dumps(records[0]["provenance"])  # serializable


def test_length_histogram_bins_and_shares():
    from ctxsynth.synthesis.contexts import length_histogram

    rows = length_histogram([50, 150, 160, 950], [700, 720], bin_words=100)
    assert [r["words"] for r in rows] == list(range(0, 1000, 100))
    assert rows[0]["synthesized"] == 0.25 and rows[1]["synthesized"] == 0.5 and rows[9]["synthesized"] == 0.25
    assert rows[7]["evaluation"] == 1.0 and sum(r["evaluation"] for r in rows) == 1.0


def test_sampled_output_of_an_item_does_not_depend_on_its_batch(tiny_model_dir, tmp_path):
    sampling = {"max_new_tokens": 8, "temperature": 1.0, "top_p": 0.9, "repetition_penalty": 1.1}
    together, _ = run(
        TransformersBackend(tiny_model_dir, batch_size=5, device="cpu", dtype="float32"),
        GenerationCache(tmp_path / "a"),
        sampling=sampling,
    )
    alone, _ = run(
        TransformersBackend(tiny_model_dir, batch_size=1, device="cpu", dtype="float32"),
        GenerationCache(tmp_path / "b"),
        seeds=SEEDS[2:3],
        sampling=sampling,
    )
    assert alone[0]["raw_output"] == together[2]["raw_output"]
    assert len({r["raw_output"] for r in together}) > 1  # really sampled: items differ
    other_seed = synthesize_contexts(
        SEEDS[2:3],
        TransformersBackend(tiny_model_dir, batch_size=1, device="cpu", dtype="float32"),
        GenerationCache(tmp_path / "c"),
        get_prompt("context_synthesis"),
        sampling,
        seed=1,
        target_words=50,
    )[0]
    assert other_seed[0]["raw_output"] != alone[0]["raw_output"]


def test_model_identity_names_content_not_just_a_name(tiny_model_dir, tmp_path):
    import shutil

    from tiny_model import build_tiny_model

    from ctxsynth.core.hub import model_identity

    identity = model_identity(tiny_model_dir)
    assert identity.startswith(tiny_model_dir.name + "@") and "None" not in identity
    other = build_tiny_model(tmp_path / tiny_model_dir.name, seed=1)  # same directory name, other weights
    assert model_identity(other) != identity
    copy = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, copy)
    (copy / "provenance.json").write_text('{"model_name": "tiny", "weights_sha256": "abc"}')
    assert model_identity(copy) == "tiny@abc"


def test_no_seeds_loads_no_generator(tmp_path):
    """The pilot has no seeds: synthesis writes nothing and never loads the generator (here a base model without a
    chat template, which could not be prompted)."""
    from pathlib import Path

    from ctxsynth.synthesis.run import run_synthesis
    from ctxsynth.synthesis.settings import SynthesizeSettings

    base_model = Path(__file__).resolve().parents[1] / "inputs" / "models" / "tiny-llama-base"
    records, metrics = run_synthesis([], base_model, SynthesizeSettings(cache_dir=str(tmp_path)))
    assert records == [] and metrics["run"] == {"generated": 0, "from_cache": 0}
