import pytest

from ctxsynth.generation.cache import GenerationCache
from ctxsynth.mix.assemble import apply_filter
from ctxsynth.synthesis.verify import answerability_scores, leakage_score, support_score, verify_records


@pytest.mark.parametrize(
    "context, answer, expected",
    [
        ("The treaty was signed in Paris in 1783.", "Paris", 1.0),
        ("The treaty was signed in Paris in 1783.", "the Paris", 1.0),  # normalization drops articles
        ("The treaty was signed in Parisville.", "Paris", 0.0),  # whole words only
        ("Anything at all.", "yes", None),  # yes/no: containment says nothing
        ("Anything.", "a long answer with many more words than five", None),
    ],
)
def test_support(context, answer, expected):
    assert support_score(context, answer, max_answer_words=5) == expected


def test_leakage_is_high_for_restatement_and_low_for_real_background():
    question, answer = "Who founded the company Acme?", "John Smith"
    assert leakage_score("Who founded the company Acme? John Smith.", question, answer) == 1.0
    background = (
        "Acme began in a garage in Ohio during 1952, when a young engineer named John Smith built "
        "brakes for delivery trucks and sold them to local bakeries before expanding nationwide."
    )
    assert leakage_score(background, question, answer) < 0.2


class Echo:
    """Answers with the last word of the context: right when the context ends with the answer."""

    name, model_id = "fake", "echo@1"

    def iter_generate(self, requests, sampling, seed):
        for request in requests:
            context = request.messages[0]["content"].split("passages.\n")[1].split("\n\nAnswer the question")[0]
            yield [(request, {"text": context.split()[-1].strip("."), "generated_tokens": 1, "finish_reason": "stop"})]


def test_answerability_and_the_mix_filter(tmp_path):
    records = [
        {"id": "good", "task": "hotpotqa", "instruction": "Where?", "answer": "Paris", "context": "It was in Paris."},
        {"id": "bad", "task": "hotpotqa", "instruction": "Where?", "answer": "Paris", "context": "It was in Rome."},
        {"id": "none", "task": "hotpotqa", "instruction": "Where?", "answer": "Paris", "context": None},
    ]
    scores = answerability_scores(records, Echo(), GenerationCache(tmp_path), seed=0)
    assert scores == {"good": 1.0, "bad": 0.0}
    verify_records(records, max_answer_words=5, answerability=scores)
    assert records[0]["verification"]["support"] == 1.0 and records[1]["verification"]["support"] == 0.0
    assert records[2]["verification"] is None
    kept, report = apply_filter(records[:2], {"min_support": 1.0, "max_leakage": None, "min_answerability": None})
    assert [r["id"] for r in kept] == ["good"] and report == {"hotpotqa": {"kept": 1, "dropped": 1}}
    kept, _ = apply_filter(records[:2], {"min_support": None, "max_leakage": None, "min_answerability": 0.5})
    assert [r["id"] for r in kept] == ["good"]
