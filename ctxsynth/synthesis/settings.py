"""Settings of the synthesis stages: params.yaml sections `synthesize` and `lengths`.

Each field's default is the one place that default lives; params.yaml repeats every key because DVC tracks them
(tests/test_settings.py checks that the two agree). Loaded with `ctxsynth.core.settings.load_settings`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Literal, get_args

from ctxsynth.core.settings import Invalid
from ctxsynth.core.tasks import get_task
from ctxsynth.generation import BackendName
from ctxsynth.generation.settings import OpenAIBatchSettings, OpenAISettings, VllmSettings
from ctxsynth.synthesis.release_files import layout_names

Method = Literal["context_synthesis", "instruction_synthesis"]
METHODS: tuple[str, ...] = get_args(Method)


@dataclass(frozen=True)
class SamplingSettings:
    """`synthesize.sampling`: how the generator samples. Every key is part of each generation's cache key, as
    written (an integer stays an integer)."""

    max_new_tokens: int = 224  # the generation budget per item
    temperature: float = 0.7  # 0 = greedy
    top_p: float = 0.9  # nucleus sampling
    repetition_penalty: float | None = 1.1  # null: none (the OpenAI Batch API rejects the parameter)

    def as_dict(self) -> dict:
        """The mapping the backends and the cache keys take."""
        return dataclasses.asdict(self)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise Invalid("max_new_tokens", f"expected at least 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise Invalid("temperature", f"expected >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise Invalid("top_p", f"expected a probability in (0, 1], got {self.top_p}")


@dataclass(frozen=True)
class VerifySettings:
    """`synthesize.verify`: scores per record (support, leakage, answerability); mix.filter decides what to keep."""

    enabled: bool = True  # score the records at all
    max_answer_words: int = 5  # support is checked for answers up to this many words (not yes/no)
    answerability: bool = False  # the generator answers from the context alone (one more short generation per seed)
    judge_model: str | None = None  # a local HF model directory to answer instead of the generator


@dataclass(frozen=True)
class ReleasedSettings:
    """`synthesize.released`: backend released, the paper authors' own synthesized contexts matched to the seeds
    (ctxsynth/synthesis/released.py). Nothing is generated and no model is loaded."""

    # a hub dataset id (read online), or a directory under inputs/released holding the files
    source: str = "Wenhao97/gpt4o-mini-context-synthesis"
    revision: str | None = None  # hub: branch, tag or commit sha (null = the default branch); resolved sha is recorded
    files: list[str] = field(default_factory=lambda: ["context-synthesis.jsonl"])  # release files to read, in order
    sha256: dict[str, str] = field(default_factory=dict)  # file -> expected sha256, checked before it is read
    layout: str = "context_synthesis"  # which fields hold task, instruction, answer, context (released_layouts.yaml)

    def validate(self) -> None:
        if not self.files:
            raise Invalid("files", "expected at least one release file")
        for index, name in enumerate(self.files):
            if name in self.files[:index]:
                raise Invalid(f"files[{index}]", f"{name!r} is listed twice")
        for name, digest in self.sha256.items():
            if name not in self.files:
                raise Invalid(f"sha256.{name}", f"not one of synthesize.released.files ({', '.join(self.files)})")
            if not re.fullmatch(r"[0-9a-f]{64}", digest):
                raise Invalid(f"sha256.{name}", f"expected 64 lowercase hex digits, got {digest!r}")
        if self.layout not in layout_names():
            raise Invalid("layout", f"unknown layout {self.layout!r}; known: {', '.join(layout_names())}")


@dataclass(frozen=True)
class SynthesizeSettings:
    """`synthesize`: the generator writes a context for every seed (or, as the paper's baseline, an instruction for
    every human context); cached by content hash, resumable."""

    method: Method = "context_synthesis"  # instruction_synthesis: the paper's baseline
    generator: str | None = None  # a local HF model directory writing the contexts; null = the base model
    backend: BackendName = "transformers"  # transformers | vllm | openai | openai-batch | released
    target_words: int = 150  # the prompt's {length}; the paper asks for 2000
    # Opens the generator's answer (the paper's prompt asks it to start with "Context:"); "" = the paper's protocol.
    response_prefix: str = "Context:"
    sampling: SamplingSettings = field(default_factory=SamplingSettings)  # how the generator samples
    seed: int = 0  # per-item sampling seeds derive from it
    cache_dir: str | None = None  # generation cache; null: ~/.cache/ctxsynth/generations
    chunk_words: int = 400  # instruction_synthesis: a random chunk of this many words from longer contexts
    max_attempts: int = 3  # instruction_synthesis: tries per seed while the output does not parse
    instruction_prefix: str = "Question:"  # instruction_synthesis: opens the reply ("" = the reference)
    verify: VerifySettings = field(default_factory=VerifySettings)  # scores per record, for mix.filter
    batch_size: int = 16  # transformers backend: rows generated together
    device: str = "auto"  # transformers backend: auto | cpu | cuda[:n]
    dtype: str = "float32"  # transformers backend: the weights' dtype
    vllm: VllmSettings = field(default_factory=VllmSettings)  # backend vllm
    openai: OpenAISettings = field(default_factory=OpenAISettings)  # backend openai
    openai_batch: OpenAIBatchSettings = field(default_factory=OpenAIBatchSettings)  # backend openai-batch
    released: ReleasedSettings = field(default_factory=ReleasedSettings)  # backend released

    def validate(self) -> None:
        for key in ("target_words", "chunk_words", "max_attempts", "batch_size"):
            if getattr(self, key) < 1:
                raise Invalid(key, f"expected at least 1, got {getattr(self, key)}")
        if self.backend in ("openai", "openai-batch") and self.response_prefix:
            raise Invalid(
                "response_prefix",
                f"backend {self.backend} talks to a chat-completions API, which cannot continue a prefix: set it "
                'to "" (the paper\'s protocol)',
            )
        penalty = self.sampling.repetition_penalty
        if (
            self.backend == "openai-batch"
            and penalty not in (None, 1.0)
            and not self.openai_batch.send_repetition_penalty
        ):
            raise Invalid(
                "sampling.repetition_penalty",
                "not an OpenAI Batch API parameter (every request would be rejected): set it to null, or "
                "openai_batch.send_repetition_penalty: true for a server that accepts it",
            )
        if self.backend == "released":
            if self.method != "context_synthesis":
                raise Invalid("method", "backend released holds synthesized contexts: use method context_synthesis")
            if self.verify.answerability and not self.verify.judge_model:
                raise Invalid(
                    "verify.answerability",
                    "backend released loads no model to answer with: set verify.judge_model, or answerability: false",
                )


@dataclass(frozen=True)
class LengthsSettings:
    """`lengths`: plot data, synthesized vs evaluation context lengths (the paper's Figure 5)."""

    bin_words: int = 100  # histogram bin width in words
    tasks: list[str] = field(default_factory=lambda: ["squad_long", "hotpotqa_long"])  # data/benchmark/<task>.jsonl

    def validate(self) -> None:
        if self.bin_words < 1:
            raise Invalid("bin_words", f"expected at least 1, got {self.bin_words}")
        for index, task in enumerate(self.tasks):
            try:
                get_task(task)
            except KeyError as error:
                raise Invalid(f"tasks[{index}]", error.args[0]) from None
