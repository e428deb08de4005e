"""Per-sample scoring and score aggregation for the evaluate stage.

QA F1 and ROUGE-L are LongBench's own per-pair functions as shipped in lm-eval (`lm_eval.tasks.longbench.metrics`),
applied with THUDM's eval.py rule (best over answers, prediction as generated), so our numbers match THUDM's.
`niah_recall` is RULER's `string_match_all`: the fraction of expected strings found in the prediction,
case-insensitively. Per-sample scores are in [0, 1]; task scores in metrics/eval.json are x100 like LongBench's.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence

METRICS = ("qa_f1", "rouge_l", "niah_recall")


def niah_recall(prediction: str, answers: Sequence[str]) -> float:
    """RULER string_match_all: share of the expected answers that occur in the prediction (case-insensitive)."""
    if not answers:
        raise ValueError("niah_recall needs at least one expected answer")
    lowered = prediction.lower()
    return sum(1.0 for answer in answers if answer.lower() in lowered) / len(answers)


def score_prediction(metric: str, prediction: str, answers: Sequence[str]) -> float:
    """Score one prediction as THUDM's LongBench `eval.py` does: the best score over the reference answers, with the
    prediction exactly as generated. (lm-eval's `get_rouge_score` strips the prediction first, which moves ROUGE-L
    for predictions that end in newlines; its per-pair metric functions are THUDM's and are used here.)"""
    if metric == "niah_recall":
        return niah_recall(prediction, answers)
    with warnings.catch_warnings():  # fuzzywuzzy warns about its pure-python matcher (only code tasks use it)
        warnings.simplefilter("ignore", UserWarning)
        from lm_eval.tasks.longbench import metrics as longbench  # needs jieba/rouge/fuzzywuzzy: the longbench extra

    pair_metrics = {"qa_f1": longbench.qa_f1_score, "rouge_l": longbench.rouge_score}
    if metric not in pair_metrics:
        raise ValueError(f"unknown metric {metric!r}; known metrics: {', '.join(METRICS)}")
    return float(max((pair_metrics[metric](prediction, answer) for answer in answers), default=0.0))


def process_results(doc: Mapping, results: Sequence[str]) -> dict[str, float]:
    """lm-eval `process_results` hook: the prepared doc names its metric; one generation per doc."""
    return {"score": score_prediction(doc["metric"], results[0], doc["answers"])}


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def summarize(task_scores: Mapping[str, float], categories: Mapping[str, str]) -> dict:
    """{"tasks": {task: score}, "categories": {category: mean of its tasks}, "overall": unweighted task mean}."""
    by_category: dict[str, list[float]] = {}
    for task, value in task_scores.items():
        by_category.setdefault(categories[task], []).append(value)
    return {
        "tasks": {task: round(value, 4) for task, value in task_scores.items()},
        "categories": {name: _mean(values) for name, values in sorted(by_category.items())},
        "overall": _mean(task_scores.values()),
    }


def niah_heatmap(predictions: Iterable[Mapping]) -> list[dict]:
    """Plot rows {model, subtask, length, depth, recall}: mean recall x100 of the NIAH predictions per cell (the
    paper's Figure 2); predictions carry niah_length / niah_depth from their benchmark rows."""
    cells: dict[tuple, list[float]] = {}
    for record in predictions:
        if record["task"].startswith("niah_") and record.get("niah_length") is not None:
            cell = (
                record["variant"],
                record["task"][len("niah_") :],
                int(record["niah_length"]),
                float(record["niah_depth"]),
            )
            cells.setdefault(cell, []).append(float(record["score"]))
    return [
        {"model": model, "subtask": subtask, "length": length, "depth": depth, "recall": _mean(scores)}
        for (model, subtask, length, depth), scores in sorted(cells.items())
    ]


def delta(base: Mapping | None, finetuned: Mapping | None) -> dict | None:
    """finetuned minus base, overall and per task (None unless both variants were scored)."""
    if not base or not finetuned or base["overall"] is None or finetuned["overall"] is None:
        return None
    return {
        "overall": round(finetuned["overall"] - base["overall"], 4),
        "tasks": {
            task: round(finetuned["tasks"][task] - base["tasks"][task], 4)
            for task in base["tasks"]
            if task in finetuned["tasks"]
        },
    }
