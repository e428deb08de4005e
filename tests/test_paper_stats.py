"""The report's bootstrap (ctxsynth/paper/stats.py) on hand-made paired scores with known answers."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest

from ctxsynth.paper import stats


def run(**tasks):
    """One seed's scores: task -> list of per-document scores (documents d0, d1, ...)."""
    return {task: {f"d{i}": float(v) for i, v in enumerate(values)} for task, values in tasks.items()}


ROW = [run(squad=[0, 10, 50, 100, 30, 20, 0, 70], hotpot=[0, 0, 40, 100, 10, 60])]


def shifted(runs, by):
    return [{task: {doc: v + by for doc, v in docs.items()} for task, docs in r.items()} for r in runs]


def test_identical_rows_differ_by_exactly_zero_and_are_inconclusive():
    estimate = stats.difference(ROW, ROW)
    assert (estimate.value, estimate.low, estimate.high) == (0.0, 0.0, 0.0)
    assert estimate.verdict() == stats.INCONCLUSIVE  # a tie is never support
    assert estimate.documents == 14 and estimate.strata == (("hotpot", 6), ("squad", 8)) and estimate.unpaired == 0


def test_a_constant_shift_on_every_document_is_exactly_that_shift():
    """Paired resampling: per-document difficulty cancels, so a +10 shift has no spread at all."""
    estimate = stats.difference(shifted(ROW, 10), ROW)
    assert (estimate.value, estimate.low, estimate.high) == (10.0, 10.0, 10.0)
    assert estimate.verdict() == stats.HOLDS
    assert estimate.verdict(direction=-1) == stats.CONTRADICTED
    reverse = stats.difference(ROW, shifted(ROW, 10))
    assert (reverse.low, reverse.high) == (-10.0, -10.0) and reverse.verdict() == stats.CONTRADICTED


@pytest.mark.parametrize(
    "differences, expected",
    [
        # two documents, differences 0 and 10: the mean of two draws is 0 (p 1/4), 5 (1/2) or 10 (1/4)
        ([0, 10], (5.0, 0.0, 10.0)),
        # four documents, one at 40: the mean of four draws is 10 x Binomial(4, 1/4); P(<= 20) = 0.949,
        # P(<= 30) = 0.996, so the 97.5th percentile is 30 and the 2.5th is 0
        ([0, 0, 0, 40], (10.0, 0.0, 30.0)),
    ],
)
def test_tiny_samples_give_the_enumerated_percentiles(differences, expected):
    a = [run(t=differences)]
    b = [run(t=[0] * len(differences))]
    estimate = stats.difference(a, b)
    assert (estimate.value, estimate.low, estimate.high) == expected


def test_a_large_sample_gives_the_normal_approximation():
    """Half-width about 1.96 x sd / sqrt(n) for n = 400 per-document differences."""
    generator = np.random.default_rng(0)
    differences = generator.normal(3.0, 20.0, size=400)
    estimate = stats.difference([run(t=differences)], [run(t=np.zeros(400))])
    expected = 1.96 * differences.std() / math.sqrt(400)
    assert estimate.value == pytest.approx(differences.mean(), abs=1e-4)
    assert (estimate.high - estimate.low) / 2 == pytest.approx(expected, rel=0.08)


def test_documents_are_resampled_within_each_task():
    """Task A always +10 (2 documents), task B always 0 (50 documents): a stratified replicate keeps both tasks, so
    the mean of the task means is 5 in every replicate (pooled resampling would spread it)."""
    a = [run(A=[10, 20], B=list(range(50)))]
    b = [run(A=[0, 10], B=list(range(50)))]
    estimate = stats.difference(a, b)
    assert (estimate.value, estimate.low, estimate.high) == (5.0, 5.0, 5.0)


def test_only_documents_scored_in_both_rows_are_paired():
    a = [run(t=[10, 10, 10, 10])]
    b = [{"t": {"d0": 0.0, "d1": 0.0, "d7": 0.0}}]
    estimate = stats.difference(a, b)
    assert estimate.documents == 2 and estimate.unpaired == 3  # d2, d3 only in a; d7 only in b
    assert (estimate.low, estimate.high) == (10.0, 10.0)
    assert stats.difference([run(t=[1])], [{"t": {"other": 1.0}}]) is None  # nothing to pair


def test_tasks_default_to_those_both_rows_scored():
    a = [run(squad=[10, 10], hotpot=[50, 50])]
    b = [run(squad=[0, 0])]
    estimate = stats.difference(a, b)
    assert estimate.strata == (("squad", 2),) and estimate.value == 10.0


def test_the_bootstrap_is_deterministic_to_the_byte():
    generator = np.random.default_rng(1)
    a = [run(t=generator.uniform(0, 100, 30)), run(t=generator.uniform(0, 100, 30))]
    b = [run(t=generator.uniform(0, 100, 30))]
    first = json.dumps(asdict(stats.difference(a, b)))
    assert first == json.dumps(asdict(stats.difference(a, b)))
    other = stats.difference(a, b, seed=1)
    assert json.dumps(asdict(other)) != first  # the fixed seed is what makes it repeatable


def test_seeds_are_resampled_as_a_second_level():
    """Row a: three seeds scoring 10, 20, 30 on every document; row b: 0. The seed-averaged difference is 20; the
    mean of three seed draws from {10, 20, 30} is 10 or 30 with probability 1/27 each (> 2.5%), so the interval is
    [10, 30]: the seeds' spread is in it, while documents (identical within a seed) add none."""
    a = [run(t=[v] * 6) for v in (10, 20, 30)]
    b = [run(t=[0] * 6)]
    estimate = stats.difference(a, b)
    assert (estimate.value, estimate.low, estimate.high) == (20.0, 10.0, 30.0)
    assert estimate.seeds == (("a", 3), ("b", 1))


def test_one_rows_score_is_the_mean_of_its_task_means():
    estimate = stats.score([run(squad=[0, 100], hotpot=[50, 50, 50, 50])])
    assert estimate.value == 50.0  # (50 + 50) / 2, not the pooled mean over six documents (66.67)
    assert estimate.low == 25.0 and estimate.high == 75.0  # squad's mean of two draws: 0, 50 or 100


def test_a_contrast_of_four_rows_and_of_weighted_strata():
    """F5c's gap between gaps and F1a's change of a gap with length are contrasts too."""
    rows = {
        "cs": [run(t=[20, 30])],
        "cf": [run(t=[10, 10])],
        "is": [run(t=[15, 15])],
        "isnc": [run(t=[15, 15])],
    }
    terms = [(1.0, "cs"), (-1.0, "cf"), (-1.0, "is"), (1.0, "isnc")]
    estimate = stats.contrast(rows, terms, {"t": 1.0})
    assert (estimate.value, estimate.low, estimate.high) == (15.0, 10.0, 20.0)
    runs = {"base": [run(short=[100, 100], long=[100, 100])], "sft": [run(short=[90, 90], long=[60, 60])]}
    trend = stats.contrast(runs, [(1.0, "base"), (-1.0, "sft")], {"long": 1.0, "short": -1.0})
    assert (trend.value, trend.low, trend.high) == (30.0, 30.0, 30.0)
    with pytest.raises(ValueError, match="two terms"):
        stats.contrast(rows, [(1.0, "cs"), (-1.0, "cs")], {"t": 1.0})


@pytest.mark.parametrize(
    "low, high, expected",
    [
        (0.5, 3.0, stats.HOLDS),
        (-3.0, -0.5, stats.CONTRADICTED),
        (-1.0, 2.0, stats.INCONCLUSIVE),
        (0.0, 2.0, stats.INCONCLUSIVE),  # touching 0 is including it
        (0.0, 0.0, stats.INCONCLUSIVE),  # a tie
    ],
)
def test_verdict_words_follow_the_interval(low, high, expected):
    estimate = stats.Estimate(value=(low + high) / 2, low=low, high=high, documents=1, strata=(), seeds=(), unpaired=0)
    assert estimate.verdict() == expected


def test_a_claim_of_several_parts_holds_only_if_every_part_does():
    assert stats.combine([stats.HOLDS, stats.HOLDS]) == stats.HOLDS
    assert stats.combine([stats.HOLDS, stats.INCONCLUSIVE]) == stats.INCONCLUSIVE
    assert stats.combine([stats.HOLDS, stats.CONTRADICTED, stats.INCONCLUSIVE]) == stats.CONTRADICTED
    assert stats.combine([]) == stats.INCONCLUSIVE
