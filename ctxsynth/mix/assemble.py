"""Assemble training samples: each pair's context hidden among contexts written for other pairs of its task.

Variants (`mix.variant`):
- context_synthesis: the synthesized contexts (records whose parse status is ok);
- human_context:     the seeds' own human contexts, where a seed has one;
- context_free:      the seeds' instructions alone, no context (the coherence analysis' control);
- synthesized_context_free: the synthesized records' instructions alone (instruction synthesis' control);
- none:              no long samples: the general data alone (the paper's "general data only" row);
- niah_needle_only | niah_short | niah_long: the pilot study's training needles (ctxsynth.mix.niah_training).
Distractors come from the same task, never the item itself, drawn and shuffled with a generator seeded per
(seed, variant, task, item), so the result does not depend on PYTHONHASHSEED or on the other tasks present.
"""

from __future__ import annotations

from collections.abc import Mapping

from ctxsynth.core.io import InputError
from ctxsynth.core.settings import coerce
from ctxsynth.core.tasks import get_task
from ctxsynth.core.text import rng_for
from ctxsynth.mix.settings import VARIANTS, FilterSettings

CONTEXT_FREE = ("context_free", "synthesized_context_free")
SUMMARIZATION = "summarization"


def pool_for_variant(variant: str, seeds: list[dict], synthesized: list[dict]) -> list[dict]:
    """The records that can enter this variant: {id, task, instruction, answer, context}."""
    if variant in ("context_synthesis", "synthesized_context_free"):
        return [r for r in synthesized if r["parse_status"] == "ok"]
    if variant == "human_context":
        return [r for r in seeds if r.get("context")]
    if variant == "context_free":
        return list(seeds)
    raise ValueError(f"unknown mix.variant {variant!r}; expected one of {', '.join(VARIANTS)}")


# mix.filter key -> the synthesize.verify score it thresholds, and the setting that computes it
FILTER_SCORES = {
    "min_support": ("support", "synthesize.verify.enabled"),
    "max_leakage": ("leakage", "synthesize.verify.enabled"),
    "min_answerability": ("answerability", "synthesize.verify.answerability"),
}


def score_computed(record: dict, score: str) -> bool:
    """Whether verification computed `score` for this record. Support is null when it does not apply (a long or
    yes/no answer) and counts as computed; answerability is null only when it was never computed."""
    scores = record.get("verification")
    if not isinstance(scores, dict) or score not in scores:
        return False
    return score == "support" or scores[score] is not None


def require_filter_scores(pool: list[dict], thresholds: FilterSettings | Mapping, contexts_path) -> None:
    """Every threshold `mix.filter` sets has its score on every record, or the filter would pass records it never
    judged: an InputError naming the key and the contexts file."""
    thresholds = coerce(FilterSettings, thresholds, "mix.filter")
    for key, (score, setting) in FILTER_SCORES.items():
        if getattr(thresholds, key) is None:
            continue
        missing = [record["id"] for record in pool if not score_computed(record, score)]
        if missing:
            raise InputError(
                contexts_path,
                f"mix.filter.{key} is set but {len(missing)} of {len(pool)} records have no {score} score "
                f"(e.g. {missing[0]!r}): rerun synthesize with {setting}: true, or set mix.filter.{key}: null",
                field=f"mix.filter.{key}",
            )


def apply_filter(pool: list[dict], thresholds: FilterSettings | Mapping) -> tuple[list[dict], dict]:
    """Keep records whose verification scores pass `mix.filter`; report kept / dropped per task."""
    from ctxsynth.synthesis.verify import passes

    thresholds = coerce(FilterSettings, thresholds, "mix.filter")
    kept: list[dict] = []
    report: dict[str, dict[str, int]] = {}
    for record in pool:
        ok = passes(record, thresholds.min_support, thresholds.max_leakage, thresholds.min_answerability)
        entry = report.setdefault(record["task"], {"kept": 0, "dropped": 0})
        entry["kept" if ok else "dropped"] += 1
        if ok:
            kept.append(record)
    return kept, report


def assemble(
    records: list[dict],
    variant: str,
    num_contexts: int,
    seed: int,
    summarization_distractors: bool,
    separator: str = "\n\n",
) -> list[dict]:
    """One chat sample per record, in the order of `records` sorted by (task, id)."""
    if num_contexts < 1:
        raise ValueError(f"mix.num_contexts must be at least 1, not {num_contexts}")
    by_task: dict[str, list[dict]] = {}
    for record in sorted(records, key=lambda r: (r["task"], r["id"])):
        by_task.setdefault(record["task"], []).append(record)
    samples = []
    for task, members in by_task.items():
        spec = get_task(task)
        for index, record in enumerate(members):
            if variant in CONTEXT_FREE:
                samples.append(_sample(record, variant, record["instruction"], [], None))
                continue
            wanted = num_contexts - 1
            if spec.category == SUMMARIZATION and not summarization_distractors:
                wanted = 0
            rng = rng_for(seed, "mix", variant, task, record["id"])
            others = [i for i in range(len(members)) if i != index]
            picks = [others[int(i)] for i in rng.choice(len(others), size=min(wanted, len(others)), replace=False)]
            documents = [record] + [members[i] for i in picks]
            order = [int(i) for i in rng.permutation(len(documents))]
            documents = [documents[i] for i in order]
            context = separator.join(d["context"] for d in documents)
            samples.append(
                _sample(
                    record,
                    variant,
                    spec.render(context, record["instruction"]),
                    [d["id"] for d in documents],
                    order.index(0),
                )
            )
    return samples


def _sample(record: dict, variant: str, prompt: str, context_ids: list[str], position: int | None) -> dict:
    return {
        "id": record["id"],
        "task": record["task"],
        "variant": variant,
        "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["answer"].strip()}],
        "context_ids": context_ids,
        "relevant_position": position,
    }


def length_stats(samples: list[dict], tokenizer, end_ids: set[int]) -> dict:
    """Token lengths of whole chat samples and of their trained (answer) positions, overall and per task, encoded
    exactly as fine-tuning encodes them (core/chat_encoding.py). The answer positions size the logits that training
    puts through the vocabulary (the row preflight's memory estimate)."""
    import numpy as np

    from ctxsynth.core.chat_encoding import encode_chat

    def describe(lengths: list[int]) -> dict:
        array = np.asarray(lengths)
        return {
            "count": int(array.size),
            "min": int(array.min()),
            "mean": round(float(array.mean()), 1),
            "p50": int(np.percentile(array, 50)),
            "p90": int(np.percentile(array, 90)),
            "max": int(array.max()),
        }

    lengths: dict[str, list[int]] = {}
    answers: dict[str, list[int]] = {}
    for sample in samples:
        encoded = encode_chat(tokenizer, sample["messages"], end_ids)
        lengths.setdefault(sample["task"], []).append(len(encoded.input_ids))
        answers.setdefault(sample["task"], []).append(encoded.target_tokens)
    everything = [n for values in lengths.values() for n in values]
    if not everything:
        return {"samples": 0}
    total_answer = sum(n for values in answers.values() for n in values)
    return {
        "samples": len(everything),
        "tokens": describe(everything),
        "answer_tokens": describe([n for values in answers.values() for n in values]),
        "answer_fraction": round(total_answer / sum(everything), 4),
        "tasks": {task: describe(values) for task, values in sorted(lengths.items())},
    }
