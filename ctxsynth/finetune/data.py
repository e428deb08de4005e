"""Training examples for the finetune stage: validated chat records -> token ids with answer-only labels.

Every sample is rendered with the base model's own chat template. Every assistant turn is trained (LongAlign's rule
for multi-turn data): its tokens and the end-of-turn token that closes it are the labels; everything else (system,
user turns, the template's scaffolding) is masked with -100.
Over-long samples are either cut in the middle of the prompt (the answer is never cut) or dropped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ctxsynth.core.chat import validate_messages
from ctxsynth.core.io import InputError, read_jsonl_numbered

IGNORE_INDEX = -100
OVERLENGTH_MODES = ("truncate_middle", "drop")
# token: every answer token weighs the same; sample (LongAlign): each sample's answer tokens together weigh one sample
LOSS_WEIGHTINGS = ("token", "sample")
# A prompt cut below this many tokens has lost its instruction scaffolding: drop the sample instead.
MIN_PROMPT_TOKENS = 16


class TemplateError(ValueError):
    """The chat template does not render the prompt as a prefix of the full conversation."""


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


def end_of_turn_ids(tokenizer, generation_config=None) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(value) for value in source)
    if not ids:
        raise TemplateError("the tokenizer has no eos token: cannot mark the end of the answer")
    return ids


def _ids(tokenizer, text: str) -> list[int]:
    # The chat template writes its own special tokens (as apply_chat_template(tokenize=True) assumes).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_chat(tokenizer, messages: Sequence[dict], end_ids: Iterable[int]) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids): the answer runs up to and including its end-of-turn token."""
    end_ids = set(end_ids)
    prompt_text = tokenizer.apply_chat_template(list(messages[:-1]), tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(list(messages), tokenize=False)
    if not full_text.startswith(prompt_text):
        raise TemplateError(
            "the chat template's generation prompt is not a prefix of the rendered conversation "
            f"(prompt ends {prompt_text[-60:]!r}, conversation has {full_text[: len(prompt_text)][-60:]!r})"
        )
    prompt_ids, full_ids = _ids(tokenizer, prompt_text), _ids(tokenizer, full_text)
    if full_ids[: len(prompt_ids)] != prompt_ids:
        at = next((i for i, (a, b) in enumerate(zip(prompt_ids, full_ids)) if a != b), len(full_ids))
        raise TemplateError(
            f"the prompt's tokens are not a prefix of the conversation's tokens (they differ at "
            f"token {at} of {len(prompt_ids)}); the answer probably merges with the end of the "
            "prompt, e.g. it starts with whitespace"
        )
    answer_ids = full_ids[len(prompt_ids) :]
    ends = [index for index, token in enumerate(answer_ids) if token in end_ids]
    if ends:
        answer_ids = answer_ids[: ends[-1] + 1]  # drop what the template writes after the turn (a newline)
    else:
        answer_ids = answer_ids + [tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(end_ids)]
    return prompt_ids, answer_ids


def earlier_turn_labels(tokenizer, messages: Sequence[dict], prompt_ids: list[int], end_ids: set[int]) -> list[int]:
    """Labels over `prompt_ids` (the conversation before its last answer) that train every earlier assistant turn,
    as LongAlign does for multi-turn data: each turn's tokens and its end-of-turn token, everything else ignored.

    Each earlier turn is encoded as if it were the last one; a template that renders past turns differently from
    the last (so that encoding is not a prefix of the conversation) raises TemplateError."""
    labels = [IGNORE_INDEX] * len(prompt_ids)
    for index, message in enumerate(messages[:-1]):
        if message["role"] != "assistant":
            continue
        turn_prompt, turn_answer = encode_chat(tokenizer, messages[: index + 1], end_ids)
        start, stop = len(turn_prompt), len(turn_prompt) + len(turn_answer)
        if prompt_ids[start:stop] != turn_answer or prompt_ids[:start] != turn_prompt:
            raise TemplateError(f"the chat template renders assistant turn {index} differently once it is not the last")
        labels[start:stop] = turn_answer
    return labels


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
            prompt_ids, answer_ids = encode_chat(tokenizer, record["messages"], end_ids)
            prompt_labels = earlier_turn_labels(tokenizer, record["messages"], prompt_ids, end_ids)
        except TemplateError as error:
            raise InputError(path, str(error), line=line, field="messages") from None
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

        features = [_as_feature(feature) for feature in features]
        width = max(len(feature["input_ids"]) for feature in features)
        input_ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), width), dtype=torch.long)
        labels = torch.full((len(features), width), IGNORE_INDEX, dtype=torch.long)
        loss_weights = torch.zeros((len(features), width), dtype=torch.float32)
        for row, feature in enumerate(features):
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
            "num_samples": torch.tensor(len(features)),
        }
