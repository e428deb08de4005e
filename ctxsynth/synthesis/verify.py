"""Verification of synthesized contexts (beyond the paper; its Limitations name such a filter as future work).

- support:       for short answers, does the normalized answer occur in the normalized context? (1.0 / 0.0;
                 null for long or yes/no answers, where string containment says nothing)
- leakage:       the share of the context's words that are words of the question and answer; a context that only
                 restates the pair scores near 1
- answerability: the generator (or a judge model) answers the instruction from the context alone, wrapped in the
                 task's template; QA F1 against the gold answer (LongBench's qa_f1_score)
Scores are recorded per record; `mix.filter` decides what to keep.
"""

from __future__ import annotations

from collections import Counter

from ctxsynth.core.scoring import score_prediction
from ctxsynth.core.tasks import get_task
from ctxsynth.core.text import normalize_text
from ctxsynth.generation.base import Request
from ctxsynth.generation.cache import GenerationCache, cache_key
from ctxsynth.synthesis.contexts import generate_cached

YES_NO = {"yes", "no"}
ANSWERABILITY_PROMPT_VERSION = "answerability-v1"


def support_score(context: str, answer: str, max_answer_words: int) -> float | None:
    normalized_answer = normalize_text(answer)
    if not normalized_answer or normalized_answer in YES_NO or len(normalized_answer.split()) > max_answer_words:
        return None
    return 1.0 if f" {normalized_answer} " in f" {normalize_text(context)} " else 0.0


def leakage_score(context: str, instruction: str, answer: str) -> float:
    context_words = Counter(normalize_text(context).split())
    if not context_words:
        return 1.0
    pair_words = Counter(normalize_text(f"{instruction} {answer}").split())
    return round(sum((context_words & pair_words).values()) / sum(context_words.values()), 4)


def answerability_scores(records: list[dict], backend, cache: GenerationCache, seed: int) -> dict[str, float]:
    """Greedy answers from each context alone, scored against the gold answer; keyed by record id."""
    candidates = [r for r in records if r.get("context") and r.get("parse_status", "ok") == "ok"]
    requests, budgets = [], {}
    for record in candidates:
        task = get_task(record["task"])
        messages = [{"role": "user", "content": task.render(record["context"], record["instruction"])}]
        sampling = {"max_new_tokens": task.max_new_tokens, "temperature": 0.0}
        key = cache_key(
            model=backend.model_id,
            messages=messages,
            response_prefix="",
            sampling=sampling,
            seed=seed,
            prompt_version=ANSWERABILITY_PROMPT_VERSION,
        )
        requests.append(Request(key=key, messages=messages, label=str(record.get("id", ""))))
        budgets[key] = sampling
    scores: dict[str, float] = {}
    # One pass per generation budget, since a batch shares its sampling settings.
    for budget in sorted({s["max_new_tokens"] for s in budgets.values()}):
        sampling = {"max_new_tokens": budget, "temperature": 0.0}
        subset = [r for r in requests if budgets[r.key]["max_new_tokens"] == budget]
        generations, _ = generate_cached(subset, backend, cache, sampling, seed, label="answerability")
        for record, request in zip(candidates, requests):
            if request.key in generations:
                text = generations[request.key]["text"]
                scores[record["id"]] = round(score_prediction("qa_f1", text, [record["answer"]]), 4)
    return scores


def verify_records(records: list[dict], max_answer_words: int, answerability: dict[str, float] | None = None) -> None:
    """Attach `verification` scores to each record in place."""
    for record in records:
        if not record.get("context") or record.get("parse_status", "ok") != "ok":
            record["verification"] = None
            continue
        record["verification"] = {
            "support": support_score(record["context"], record["answer"], max_answer_words),
            "leakage": leakage_score(record["context"], record["instruction"], record["answer"]),
            "answerability": (answerability or {}).get(record["id"]),
        }


def passes(record: dict, min_support: float | None, max_leakage: float | None, min_answerability: float | None) -> bool:
    """A score that is null (not applicable) never fails a threshold; the mix stage first checks that every
    threshold's score was computed (ctxsynth.mix.assemble.require_filter_scores)."""
    scores = record.get("verification") or {}
    if min_support is not None and scores.get("support") is not None and scores["support"] < min_support:
        return False
    if max_leakage is not None and scores.get("leakage") is not None and scores["leakage"] > max_leakage:
        return False
    if (
        min_answerability is not None
        and scores.get("answerability") is not None
        and scores["answerability"] < min_answerability
    ):
        return False
    return True
