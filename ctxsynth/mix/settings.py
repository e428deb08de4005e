"""Settings of the mix stage: params.yaml section `mix`.

Each field's default is the one place that default lives; params.yaml repeats every key because DVC tracks them
(tests/test_settings.py checks that the two agree). Loaded with `ctxsynth.core.settings.load_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal, get_args

from ctxsynth.core.settings import Invalid
from ctxsynth.prepare.niah import SUBTASKS, Subtask

# --- mix.general (read by ctxsynth.mix.general_source.load_general) -------------------------------------------


@dataclass(frozen=True)
class GeneralSourceSettings:
    """`mix.general`: general SFT data added to the long samples (the paper: ShareGPT / UltraChat)."""

    # A chat JSONL / Parquet file (data/general/train.jsonl: the offline SQuAD set) or a hub dataset; null = none.
    source: str | None = None
    split: str = "train"  # hub datasets only
    revision: str | None = None  # hub datasets: the commit to read (null = what the default branch is now, recorded)
    # hub datasets: the files to read (a repository of several dumps, as ShareGPT's); null = the dataset's default
    data_files: str | None = None
    count: int | None = None  # how many general samples (null = all) ...
    ratio: float | None = None  # ... or this many per long sample (give one of count and ratio)

    def validate(self) -> None:
        if self.count is not None and self.ratio is not None:
            raise Invalid("", "give mix.general.count or mix.general.ratio, not both")
        if self.count is not None and self.count < 0:
            raise Invalid("count", f"expected >= 0 or null, got {self.count}")
        if self.ratio is not None and self.ratio < 0:
            raise Invalid("ratio", f"expected >= 0 or null, got {self.ratio}")


# --- mix.long_source (read by ctxsynth.mix.long_sft.load_long_sft) ----------------------------------------------

LongSftFormat = Literal["longalpaca", "longalign", "longmit"]  # the layouts ctxsynth/mix/long_sft.yaml describes
LONG_SFT_FORMATS: tuple[str, ...] = get_args(LongSftFormat)
PRIOR_LONG = "prior_long"  # the mix.variant whose long samples come from mix.long_source


@dataclass(frozen=True)
class LongSourceSettings:
    """`mix.long_source`: variant prior_long: a prior long-context SFT dataset read in its own layout (the paper's
    LongAlpaca-12k, LongAlign-10k and LongMIT rows) in place of the seeds and synthesized contexts."""

    # longalpaca (Yukang/LongAlpaca-12k) | longalign (THUDM/LongAlign-10k) | longmit (donmaclean/LongMIT-128K)
    format: LongSftFormat | None = None
    # A hub dataset id (online) or a .json / .jsonl / .parquet file under inputs/long_sft; null = none.
    source: str | None = None
    split: str = "train"  # hub datasets only
    revision: str | None = None  # hub datasets: the commit to read (null = what the default branch is now, recorded)
    count: int | None = None  # how many records, chosen by a seeded hash (mix.seed); null = all

    def validate(self) -> None:
        if self.count is not None and self.count < 0:
            raise Invalid("count", f"expected >= 0 or null, got {self.count}")


# Long samples from the seeds or the synthesized records (ctxsynth.mix.assemble).
LongVariant = Literal["context_synthesis", "human_context", "context_free", "synthesized_context_free"]
VARIANTS: tuple[str, ...] = get_args(LongVariant)
GENERAL_ONLY = "none"  # no long samples: the general data alone (the paper's "general data only" row)
# The pilot study's training needles (ctxsynth.mix.niah_training): variant -> the `mix.niah` key holding its
# haystack length in words (needles only: no haystack).
NiahVariant = Literal["niah_needle_only", "niah_short", "niah_long"]
NIAH_VARIANTS: dict[str, str | None] = {
    "niah_needle_only": None,
    "niah_short": "short_words",
    "niah_long": "long_words",
}
# prior_long: the long samples are a prior long-context SFT dataset, `mix.long_source` (ctxsynth.mix.long_sft).
# Every mix.variant: GENERAL_ONLY, VARIANTS, NIAH_VARIANTS, PRIOR_LONG.
Variant = Literal["none", LongVariant, NiahVariant, "prior_long"]
ALL_VARIANTS: tuple[str, ...] = get_args(Variant)


@dataclass(frozen=True)
class FilterSettings:
    """`mix.filter`: thresholds on synthesize.verify scores; null = no filter (the paper has none). A score that is
    null because it does not apply (support of a long or yes/no answer) never fails a threshold; a threshold whose
    score was never computed (verification or answerability off in synthesize) stops the mix stage."""

    min_support: float | None = None  # e.g. 1.0: short answers must occur in their context
    max_leakage: float | None = None  # e.g. 0.5: drop contexts that mostly restate the question and answer
    min_answerability: float | None = None  # e.g. 0.5: QA F1 of the generator answering from the context alone

    @property
    def active(self) -> bool:
        return any(value is not None for value in (self.min_support, self.max_leakage, self.min_answerability))


@dataclass(frozen=True)
class NiahTrainingSettings:
    """`mix.niah`: variants niah_*: training needles, keys disjoint from the test keys."""

    # single | multikey | multiquery | multivalue: training needles of these subtasks
    subtasks: list[Annotated[Subtask, "NIAH subtask"]] = field(default_factory=lambda: list(SUBTASKS))
    per_subtask: int = 8  # samples per subtask (the paper: 200)
    short_words: int = 300  # niah_short haystack words (the paper: about 1K tokens)
    long_words: int = 1000  # niah_long haystack words (the paper: about 64K tokens)

    def validate(self) -> None:
        for key in ("per_subtask", "short_words", "long_words"):
            if getattr(self, key) < 0:
                raise Invalid(key, f"expected >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class MixSettings:
    """`mix`: chat-format training samples, the long samples of `variant` plus the `general` data."""

    # context_synthesis | human_context | context_free | synthesized_context_free | none (general data only)
    # | niah_needle_only | niah_short | niah_long (the pilot study's training needles)
    # | prior_long (a prior long SFT dataset, `long_source`: the paper's LongAlpaca / LongAlign / LongMIT rows)
    variant: Variant = "context_synthesis"
    num_contexts: int = 3  # the relevant context plus n-1 from other seeds of the same task (paper: 10)
    seed: int = 42  # draws the distractor contexts, the general and long_source subsets and the training needles
    summarization_distractors: bool = True  # the paper hides summarization documents among others too
    filter: FilterSettings = field(default_factory=FilterSettings)  # context_synthesis: verification thresholds
    general: GeneralSourceSettings = field(default_factory=GeneralSourceSettings)  # general SFT data added
    niah: NiahTrainingSettings = field(default_factory=NiahTrainingSettings)  # variants niah_*
    long_source: LongSourceSettings = field(default_factory=LongSourceSettings)  # variant prior_long

    def validate(self) -> None:
        if self.num_contexts < 1:
            raise Invalid("num_contexts", f"expected at least 1, got {self.num_contexts}")
        if self.variant == PRIOR_LONG and not self.long_source.source:
            raise Invalid(
                "long_source.source",
                "variant prior_long reads its long samples from here: name a file under inputs/long_sft or a hub "
                "dataset",
            )
        if self.variant == PRIOR_LONG and not self.long_source.format:
            raise Invalid("long_source.format", "variant prior_long: name the layout of mix.long_source.source")
