"""Training examples for the finetune stage: validated chat records -> token ids with answer-only labels.

Every sample is rendered with the chat template and encoded segment by segment (core/chat_encoding.py): every
assistant turn and the end-of-turn token that closes it are the labels; everything else (system, user turns, the
template's scaffolding) is masked with -100.
Over-long samples are either cut in the middle of the prompt (the answer is never cut) or dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

from ctxsynth.core.chat import validate_messages
from ctxsynth.core.chat_encoding import IGNORE_INDEX, TemplateError, encode_chat
from ctxsynth.core.io import InputError, read_jsonl_numbered

Overlength = Literal["truncate_middle", "drop"]
OVERLENGTH_MODES: tuple[str, ...] = get_args(Overlength)
# token: every answer token weighs the same; sample (LongAlign): each sample's answer tokens together weigh one sample
LossWeighting = Literal["token", "sample"]
LOSS_WEIGHTINGS: tuple[str, ...] = get_args(LossWeighting)
# A prompt cut below this many tokens has lost its instruction scaffolding: drop the sample instead.
MIN_PROMPT_TOKENS = 16


@dataclass
class Example:
    id: str
    input_ids: list[int]
    labels: list[int]
    removed_tokens: int = 0  # prompt tokens cut out by truncate_middle

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def target_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)


@dataclass
class PreparedData:
    examples: list[Example]
    total: int
    truncated: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    removed_tokens: int = 0

    def counts(self) -> dict[str, int]:
        return {
            "samples_total": self.total,
            "samples_used": len(self.examples),
            "samples_truncated": len(self.truncated),
            "samples_dropped": len(self.dropped),
            "prompt_tokens_removed": self.removed_tokens,
            "dataset_tokens": sum(len(example) for example in self.examples),
            "dataset_target_tokens": sum(example.target_tokens for example in self.examples),
            "max_sample_tokens": max((len(example) for example in self.examples), default=0),
        }


def load_chat_records(path: os.PathLike | str) -> list[tuple[int, dict]]:
    """(line number, record) for every sample, validated; raises InputError naming file, line and field."""
    path = Path(path)
    records = read_jsonl_numbered(path, required=["id", "messages"], types={"id": str, "messages": list})
    if not records:
        raise InputError(path, "no training samples (the file is empty)")
    for line, record in records:
        validate_messages(path, line, record["messages"])
    return records


def cut_middle(sequence: list, keep: int) -> list:
    """The first keep // 2 and the last keep - keep // 2 items."""
    head = keep // 2
    return sequence[:head] + sequence[len(sequence) - (keep - head) :]


def fit_length(
    prompt_ids: list[int], answer_ids: list[int], max_tokens: int | None, overlength: str
) -> tuple[list[int], int] | None:
    """(prompt ids that fit, number of tokens removed), or None when the sample must be dropped.

    truncate_middle keeps the first and the last half of the prompt budget (the way LongBench truncates at
    evaluation), so the start of the prompt and its end (the question, the generation prompt) survive.
    """
    if overlength not in OVERLENGTH_MODES:
        raise ValueError(f"overlength must be one of {OVERLENGTH_MODES}, got {overlength!r}")
    if not max_tokens or len(prompt_ids) + len(answer_ids) <= max_tokens:
        return prompt_ids, 0
    if overlength == "drop":
        return None
    keep = max_tokens - len(answer_ids)
    if keep < min(MIN_PROMPT_TOKENS, len(prompt_ids)):
        return None  # the answer alone (nearly) fills the budget, and it is never cut
    return cut_middle(prompt_ids, keep), len(prompt_ids) - keep


def prepare_examples(
    records: Sequence[tuple[int, dict]],
    tokenizer,
    *,
    max_tokens: int | None,
    overlength: str,
    end_ids: Iterable[int],
    path: os.PathLike | str = "<records>",
) -> PreparedData:
    end_ids = set(end_ids)
    data = PreparedData(examples=[], total=len(records))
    for line, record in records:
        try:
            encoded = encode_chat(tokenizer, record["messages"], end_ids)
        except TemplateError as error:
            raise InputError(path, str(error), line=line, field="messages") from None
        prompt_ids, prompt_labels, answer_ids = encoded.prompt_ids, encoded.prompt_labels, encoded.answer_ids
        fitted = fit_length(prompt_ids, answer_ids, max_tokens, overlength)
        if fitted is None:
            data.dropped.append(record["id"])
            continue
        prompt_ids, removed = fitted
        if removed:
            data.truncated.append(record["id"])
            data.removed_tokens += removed
            prompt_labels = cut_middle(prompt_labels, len(prompt_ids))
        data.examples.append(
            Example(
                id=record["id"],
                input_ids=prompt_ids + answer_ids,
                labels=prompt_labels + answer_ids,
                removed_tokens=removed,
            )
        )
    if not data.examples:
        raise InputError(path, f"all {data.total} samples are longer than max_tokens={max_tokens} and were dropped")
    return data


def answer_weights(labels: Sequence[int], loss_weighting: str) -> list[float]:
    """Per-position loss weights: 0 off the answer; 1 per answer token, or 1 / (answer tokens) per sample.

    The loss is sum(weight * cross-entropy) / sum(weight) over the (accumulated) batch, so `sample` makes every sample
    count once whatever its answer length, as LongAlign's loss weighting does for packed sequences.
    """
    if loss_weighting not in LOSS_WEIGHTINGS:
        raise ValueError(f"loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
    answer_tokens = sum(1 for label in labels if label != IGNORE_INDEX)
    weight = 1.0 if loss_weighting == "token" else 1.0 / max(answer_tokens, 1)
    return [weight if label != IGNORE_INDEX else 0.0 for label in labels]


def _as_feature(feature: Example | dict) -> dict:
    return feature if isinstance(feature, dict) else {"input_ids": feature.input_ids, "labels": feature.labels}


@dataclass
class PadCollator:
    """Right-pads a batch: pad id in input_ids, 0 in attention_mask, -100 in labels, 0 in loss_weights.

    `real_tokens` (the non-padding count) lets the trainer report throughput without guessing the pad token.
    """

    pad_token_id: int
    loss_weighting: str = "token"

    def __call__(self, features: Sequence[Example | dict]) -> dict:
        import torch

        rows = [_as_feature(feature) for feature in features]
        width = max(len(feature["input_ids"]) for feature in rows)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        loss_weights = torch.zeros((len(rows), width), dtype=torch.float32)
        for row, feature in enumerate(rows):
            length = len(feature["input_ids"])
            input_ids[row, :length] = torch.tensor(feature["input_ids"], dtype=torch.long)
            attention_mask[row, :length] = 1
            labels[row, :length] = torch.tensor(feature["labels"], dtype=torch.long)
            loss_weights[row, :length] = torch.tensor(answer_weights(feature["labels"], self.loss_weighting))
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "loss_weights": loss_weights,
            "real_tokens": attention_mask.sum(),
            "num_samples": torch.tensor(len(rows)),
        }
