"""Packing: several training samples in one sequence of at most max_tokens, with no attention across samples.

Each packed row carries `position_ids` that restart at 0 for every sample and no `attention_mask`: transformers
(>= 4.56; masking_utils.find_packed_sequence_indices) then reads the restarts as sample boundaries and builds a
block-diagonal causal mask (sdpa, eager) or varlen boundaries (flash attention). tests/test_finetune_packing.py
checks that a packed row gives the same per-sample losses as the samples run one by one.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from ctxsynth.core.chat_encoding import IGNORE_INDEX
from ctxsynth.finetune.data import Example, answer_weights


@dataclass
class Pack:
    examples: list[Example]

    def __len__(self) -> int:
        return sum(len(example) for example in self.examples)

    @property
    def ids(self) -> list[str]:
        return [example.id for example in self.examples]


def pack_examples(examples: Sequence[Example], max_tokens: int) -> list[Pack]:
    """Best-fit decreasing bin packing: deterministic, O(n log n), within a few % of the fewest rows.

    Every example must already fit (prepare_examples cut or dropped the longer ones).
    """
    if max_tokens <= 0:
        raise ValueError("packing needs a token budget: set finetune.max_tokens > 0")
    too_long = [example.id for example in examples if len(example) > max_tokens]
    if too_long:
        raise ValueError(f"{len(too_long)} samples are longer than max_tokens={max_tokens}, e.g. {too_long[0]!r}")
    order = sorted(range(len(examples)), key=lambda index: (-len(examples[index]), index))
    packs: list[list[Example]] = []
    room: list[tuple[int, int]] = []  # (free tokens, pack index), sorted
    for index in order:
        example = examples[index]
        at = bisect.bisect_left(room, (len(example), -1))
        if at == len(room):
            packs.append([example])
            bisect.insort(room, (max_tokens - len(example), len(packs) - 1))
            continue
        free, pack_index = room.pop(at)
        packs[pack_index].append(example)
        bisect.insort(room, (free - len(example), pack_index))
    return [Pack(pack) for pack in packs]


@dataclass
class PackedCollator:
    """Concatenates each pack's samples into one row; position ids restart per sample; rows padded to the longest.

    Padding (only when batch_size > 1) is a segment of its own (its positions restart too), masked out of the loss.
    """

    pad_token_id: int
    loss_weighting: str = "token"

    def __call__(self, features: Sequence[Pack | Example]) -> dict:
        import torch

        packs = [feature if isinstance(feature, Pack) else Pack([feature]) for feature in features]
        width = max(len(pack) for pack in packs)
        input_ids = torch.full((len(packs), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(packs), width), IGNORE_INDEX, dtype=torch.long)
        loss_weights = torch.zeros((len(packs), width), dtype=torch.float32)
        position_ids = torch.zeros((len(packs), width), dtype=torch.long)
        for row, pack in enumerate(packs):
            start = 0
            for example in pack.examples:
                end = start + len(example)
                input_ids[row, start:end] = torch.tensor(example.input_ids, dtype=torch.long)
                labels[row, start:end] = torch.tensor(example.labels, dtype=torch.long)
                loss_weights[row, start:end] = torch.tensor(answer_weights(example.labels, self.loss_weighting))
                position_ids[row, start:end] = torch.arange(len(example))
                start = end
            position_ids[row, start:] = torch.arange(width - start)
        real_tokens = sum(len(pack) for pack in packs)
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "labels": labels,
            "loss_weights": loss_weights,
            "real_tokens": torch.tensor(real_tokens),
            "num_samples": torch.tensor(sum(len(pack.examples) for pack in packs)),
        }
