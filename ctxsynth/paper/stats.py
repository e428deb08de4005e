"""Confidence intervals for the report: a paired, stratified, two-level bootstrap over test documents and seeds.

Input: per-document scores (x100) as collected in metrics/results.json. A *run* is one experiment's scores of one
model variant, {stratum: {document id: score}}, where a stratum is a task (or a task at one NIAH haystack length);
a *row* is its runs, one per training seed.

Every quantity the report states is a linear contrast: sum over strata of weight x sum over terms of coefficient x
(the row's mean score on the stratum's documents). One row's overall score is the unweighted mean of its task means
(weights 1/T, one term); a difference of two rows has terms +1 and -1; a gap between gaps (F5) or a change of a gap
with length (F1a) has four terms or opposite weights.

The interval is a percentile bootstrap, REPLICATES replicates from numpy's Generator with a fixed seed, so the same
inputs give the same numbers, byte for byte. In each replicate:

1. seeds: each row's K seeds are drawn with replacement, independently per row (seed s of two rows shares the seed
   value but not the training data, so it is not a pairing), and the same draw serves every stratum of that row
   (a seed is one trained model). This is the second level: the interval holds seed-to-seed variance. With K = 1 it
   changes nothing; with small K it understates that variance by a factor (K - 1) / K, and the report shows the
   range over seeds beside it.
2. documents: within each stratum, the stratum's documents are drawn with replacement, the same indices for every
   row (paired: per-document difficulty cancels), so every replicate keeps each task's size (stratified). A
   stratum of one document adds no variance.
3. the contrast is computed on the seed-averaged scores of the drawn documents.

Only documents present in every run of every row of the contrast are paired and used; `Estimate.unpaired` counts the
others (scored in some rows only). scipy.stats.bootstrap(paired=True) resamples one index set across all
observations: it cannot keep task strata or draw seeds at a second level, and its BCa interval fails on the
degenerate distributions a tie gives (identical rows); numpy with explicit indices does both in a few lines.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

REPLICATES = 10_000
SEED = 20250221  # the paper's arXiv month: any fixed value; changing it changes the intervals' last digits
LEVEL = 0.95
DIGITS = 4  # rounding of every reported number: floating-point noise never reaches the report's bytes

Run = Mapping[str, Mapping[str, float]]  # stratum -> document id -> score x100

HOLDS, CONTRADICTED, INCONCLUSIVE = "holds", "contradicted", "inconclusive"


@dataclass(frozen=True)
class Estimate:
    """A contrast's value on all paired documents (seed-averaged), and its bootstrap interval."""

    value: float
    low: float
    high: float
    documents: int  # paired documents, all strata
    strata: tuple[tuple[str, int], ...]  # (stratum, paired documents)
    seeds: tuple[tuple[str, int], ...]  # (row, seeds) per row of the contrast
    unpaired: int  # documents scored in some of the rows but not in all, left out

    def verdict(self, direction: int = 1) -> str:
        """holds: the interval excludes 0 on the expected side; contradicted: on the other; else (a tie included)
        inconclusive."""
        low, high = (self.low, self.high) if direction > 0 else (-self.high, -self.low)
        if low > 0:
            return HOLDS
        if high < 0:
            return CONTRADICTED
        return INCONCLUSIVE


def contrast(
    rows: Mapping[str, Sequence[Run]],
    terms: Sequence[tuple[float, str]],
    weights: Mapping[str, float],
    replicates: int = REPLICATES,
    seed: int = SEED,
    level: float = LEVEL,
) -> Estimate | None:
    """sum_s weights[s] * sum_(c, row) c * mean score of `row` on stratum s, with its bootstrap interval.

    rows: row name -> runs (one per seed); terms: (coefficient, row name); a row may appear in one term only.
    None when a weighted stratum has no document scored by every run of every row (nothing to pair)."""
    names = sorted({name for _, name in terms})
    if len(names) != len(terms):
        raise ValueError("a row appears in two terms: merge their coefficients")
    coefficient = {name: float(c) for c, name in terms}
    strata = sorted(s for s, w in weights.items() if w)
    if not strata or any(not rows[name] for name in names):
        return None
    matrices: dict[str, dict[str, np.ndarray]] = {name: {} for name in names}  # row -> stratum -> (seeds, docs)
    paired_counts, unpaired = [], 0
    for stratum in strata:
        id_sets = [set(run.get(stratum) or {}) for name in names for run in rows[name]]
        paired = sorted(set.intersection(*id_sets))
        unpaired += len(set.union(*id_sets)) - len(paired)
        if not paired:
            return None
        paired_counts.append((stratum, len(paired)))
        for name in names:
            matrices[name][stratum] = np.array(
                [[float(run[stratum][doc]) for doc in paired] for run in rows[name]], dtype=np.float64
            )
    value = sum(weights[s] * sum(coefficient[name] * matrices[name][s].mean() for name in names) for s in strata)
    generator = np.random.default_rng(seed)
    seed_draws = {name: generator.integers(0, len(rows[name]), size=(replicates, len(rows[name]))) for name in names}
    totals = np.zeros(replicates)
    for stratum in strata:
        count = matrices[names[0]][stratum].shape[1]
        combined = np.zeros((replicates, count))  # per replicate and document: the terms' seed-averaged scores
        for name in names:
            combined += coefficient[name] * matrices[name][stratum][seed_draws[name]].mean(axis=1)
        documents = generator.integers(0, count, size=(replicates, count))
        totals += weights[stratum] * np.take_along_axis(combined, documents, axis=1).mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(totals, [tail, 1 - tail])
    return Estimate(
        value=_round(value),
        low=_round(low),
        high=_round(high),
        documents=sum(n for _, n in paired_counts),
        strata=tuple(paired_counts),
        seeds=tuple((name, len(rows[name])) for name in names),
        unpaired=unpaired,
    )


def _round(value: float) -> float:
    return round(float(value), DIGITS) + 0.0  # + 0.0: no "-0.0" in the report


def common_strata(*rows: Sequence[Run]) -> list[str]:
    """Strata scored by every run of every row, sorted."""
    sets = [set(run) for runs in rows for run in runs]
    return sorted(set.intersection(*sets)) if sets else []


def score(runs: Sequence[Run], tasks: Sequence[str] | None = None, **options) -> Estimate | None:
    """A row's overall score: the unweighted mean of its task means (tasks: all it scored), with its interval."""
    tasks = list(tasks) if tasks is not None else common_strata(runs)
    if not tasks:
        return None
    return contrast({"row": runs}, [(1.0, "row")], {task: 1 / len(tasks) for task in tasks}, **options)


def difference(
    a: Sequence[Run], b: Sequence[Run], tasks: Sequence[str] | None = None, scale_b: float = 1.0, **options
) -> Estimate | None:
    """Overall score of a minus scale_b x that of b, on the tasks both scored (or `tasks`), paired by document."""
    tasks = list(tasks) if tasks is not None else common_strata(a, b)
    if not tasks:
        return None
    return contrast({"a": a, "b": b}, [(1.0, "a"), (-scale_b, "b")], {t: 1 / len(tasks) for t in tasks}, **options)


def combine(verdicts: Sequence[str]) -> str:
    """A claim made of several parts: holds if every part holds, contradicted if any part is, else inconclusive."""
    if verdicts and all(v == HOLDS for v in verdicts):
        return HOLDS
    if any(v == CONTRADICTED for v in verdicts):
        return CONTRADICTED
    return INCONCLUSIVE
