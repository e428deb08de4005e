"""Continuous batching for a Hugging Face causal LM on one device: finished rows leave the batch at once and waiting
prompts take their slots, so no slot idles while the longest row of a static batch finishes.

Why not `model.generate` or transformers' own continuous batching (`generate_batch`): `generate` keeps a finished row
in the batch until the last row ends, and `generate_batch` samples every request from one shared random stream,
which would make an item's sample depend on its batch companions. Here every item keeps its own generator for its
whole life and its repetition penalty sees only its own prompt and output tokens.

The running batch is one left-padded `DynamicCache`: newcomers are prefilled on their own and their cache is
left-padded and concatenated to it; rows that finish are selected out; columns that no row uses any more are cut.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


def cache_argument(model) -> str:
    """The forward() keyword for the KV cache: transformers 5.2x renamed `past_key_values` to `cache` and removes the
    old name in 5.40, while older 5.x releases know only `past_key_values`."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sample_rows(scores, generators: list, temperature: float, top_p: float):
    """One token per row: temperature, then top-p, then a draw from the row's own generator. A row's token depends
    on its own seed and logits only, not on which other rows are in the batch."""
    import torch

    probs = torch.softmax(scores.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        sorted_probs[(sorted_probs.cumsum(-1) - sorted_probs) > top_p] = 0.0  # smallest set reaching top_p
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_probs)
    return torch.cat(
        [torch.multinomial(probs[row], 1, generator=generator) for row, generator in enumerate(generators)]
    )


@dataclass
class Item:
    index: int  # position in the caller's list
    prompt_ids: list[int]
    generator: object = None  # torch.Generator when sampling, else None (greedy)
    output_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    repetition_penalty: float | None = None
    min_new_tokens: int = 0

    @classmethod
    def from_params(cls, sampling: dict) -> Sampling:
        return cls(
            max_new_tokens=int(sampling["max_new_tokens"]),
            temperature=float(sampling.get("temperature") or 0),
            top_p=float(sampling.get("top_p", 1.0)),
            repetition_penalty=float(sampling["repetition_penalty"]) if sampling.get("repetition_penalty") else None,
            min_new_tokens=int(sampling.get("min_new_tokens") or 0),
        )


class ContinuousBatcher:
    """Generates token ids for prompts, at most `batch_size` at a time, refilling slots as rows finish.

    `run(prompts, seeds)` takes prompts in the order they should enter the batch and yields, after every step,
    the list of (index, output_ids, finish_reason) that finished in it; output_ids stop before the end-of-turn token.
    """

    def __init__(self, model, batch_size: int, eos_ids: set[int], pad_id: int, device):
        self.model, self.batch_size, self.eos_ids, self.pad_id, self.device = model, batch_size, eos_ids, pad_id, device
        self.cache_arg = cache_argument(model)

    def run(
        self, prompts: list[list[int]], seeds: list[int], sampling: Sampling
    ) -> Iterator[list[tuple[int, list[int], str]]]:
        import torch

        waiting = list(range(len(prompts)))[::-1]  # a stack: pop() takes the next prompt in the caller's order
        active: list[Item] = []
        cache: Any = None
        mask: Any = None  # both set by the first prefill step, which always comes first
        with torch.inference_mode():
            while waiting or active:
                free = self.batch_size - len(active)
                if free > 0 and waiting:  # a prefill step: the newcomers' first tokens
                    newcomers = [
                        self._new_item(i, prompts[i], seeds[i], sampling)
                        for i in (waiting.pop() for _ in range(min(free, len(waiting))))
                    ]
                    new_cache, new_mask, logits = self._prefill(newcomers)
                    tokens = self._pick(logits, newcomers, sampling)
                    cache, mask = self._merge(cache, mask, new_cache, new_mask)
                    stepped, active = newcomers, active + newcomers  # newcomers' rows follow the running ones
                else:  # a decode step for every active row
                    last = torch.tensor([[item.output_ids[-1]] for item in active], device=self.device)
                    positions = mask.sum(-1, keepdim=True)  # real tokens so far = the new token's position
                    mask = torch.cat([mask, mask.new_ones(len(active), 1)], dim=-1)
                    logits = self.model(
                        input_ids=last,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        logits_to_keep=1,
                        **{self.cache_arg: cache},
                    ).logits[:, -1]
                    tokens = self._pick(logits, active, sampling)
                    stepped = active
                for item, token in zip(stepped, tokens.tolist()):
                    item.output_ids.append(token)
                finished, keep = [], []
                for row, item in enumerate(active):
                    if item.output_ids[-1] in self.eos_ids:
                        finished.append((item.index, item.output_ids[:-1], "stop"))
                    elif len(item.output_ids) >= sampling.max_new_tokens:
                        finished.append((item.index, item.output_ids, "length"))
                    else:
                        keep.append(row)
                if finished:
                    active = [active[row] for row in keep]
                    cache, mask = self._select(cache, mask, keep)
                    yield finished

    def _new_item(self, index: int, prompt_ids: list[int], seed: int, sampling: Sampling) -> Item:
        import torch

        generator = torch.Generator(device=self.device).manual_seed(seed) if sampling.temperature > 0 else None
        return Item(index=index, prompt_ids=prompt_ids, generator=generator)

    def _prefill(self, items: list[Item]):
        import torch
        from transformers import DynamicCache

        width = max(len(item.prompt_ids) for item in items)
        ids = torch.tensor(
            [[self.pad_id] * (width - len(it.prompt_ids)) + it.prompt_ids for it in items], device=self.device
        )
        mask = torch.tensor(
            [[0] * (width - len(it.prompt_ids)) + [1] * len(it.prompt_ids) for it in items], device=self.device
        )
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: cache},
        ).logits[:, -1]
        return cache, mask, logits

    def _pick(self, logits, items: list[Item], sampling: Sampling):
        """The next token of every row, after the same processors `generate` applies, in its order."""
        import torch
        from transformers import RepetitionPenaltyLogitsProcessor

        scores = logits.float()
        if sampling.repetition_penalty:
            # Each row sees only its own prompt and output: short rows are padded with their own first token,
            # which changes nothing because the penalty applies once per distinct token.
            seen = [item.prompt_ids + item.output_ids for item in items]
            width = max(len(s) for s in seen)
            seen_ids = torch.tensor([s + [s[0]] * (width - len(s)) for s in seen], device=scores.device)
            scores = RepetitionPenaltyLogitsProcessor(sampling.repetition_penalty)(seen_ids, scores)
        too_short = [row for row, item in enumerate(items) if len(item.output_ids) < sampling.min_new_tokens]
        if too_short:
            eos = torch.tensor(sorted(self.eos_ids), device=scores.device)
            scores[torch.tensor(too_short, device=scores.device)[:, None], eos[None, :]] = float("-inf")
        if sampling.temperature > 0:
            return sample_rows(scores, [item.generator for item in items], sampling.temperature, sampling.top_p)
        return scores.argmax(dim=-1)

    @staticmethod
    def _merge(cache, mask, new_cache, new_mask):
        """The running batch with the newcomers appended as rows, both left-padded to a common length."""
        import torch
        import torch.nn.functional as F

        if cache is None:
            return new_cache, new_mask
        width = max(mask.shape[1], new_mask.shape[1])
        old_pad, new_pad = width - mask.shape[1], width - new_mask.shape[1]
        for layer, new_layer in zip(cache.layers, new_cache.layers):
            layer.keys = torch.cat([F.pad(layer.keys, (0, 0, old_pad, 0)), F.pad(new_layer.keys, (0, 0, new_pad, 0))])
            layer.values = torch.cat(
                [F.pad(layer.values, (0, 0, old_pad, 0)), F.pad(new_layer.values, (0, 0, new_pad, 0))]
            )
        return cache, torch.cat([F.pad(mask, (old_pad, 0)), F.pad(new_mask, (new_pad, 0))])

    @staticmethod
    def _select(cache, mask, keep: list[int]):
        """Only the rows in `keep`, without the leading columns none of them uses (attention cost follows length)."""
        import torch

        if not keep:
            return None, None
        rows = torch.tensor(keep, device=mask.device)
        mask = mask[rows]
        start = int(mask.any(0).int().argmax())  # first column some remaining row attends to
        for layer in cache.layers:
            layer.keys = layer.keys[rows, :, start:]
            layer.values = layer.values[rows, :, start:]
        return cache, mask[:, start:]
