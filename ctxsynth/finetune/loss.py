"""The training loss: weighted cross-entropy on the answer tokens only.

It needs torch but not transformers' Trainer, so the memory measurements and the tests call it on a bare model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ctxsynth.core.chat_encoding import IGNORE_INDEX
from ctxsynth.finetune.errors import FinetuneError

# What the collators produce for the model; the rest (labels, loss_weights, counters) is for the loss and the logs.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def answer_only_loss(model, inputs: Mapping[str, Any], num_items_in_batch=None, logits_only: bool = True):
    """(loss, outputs): weighted cross-entropy on the answer tokens.

    loss = sum(weight x cross-entropy) / num_items_in_batch (the weights summed over the accumulated batch), or / the
    weights' sum here. With unit weights (`token`) that is the model's own loss on `labels`; `sample` weights make
    it the mean over samples of each sample's mean answer loss (LongAlign). With `logits_only` the (tokens x
    vocabulary) projection, the largest single activation of a long sample, is computed at the answer positions
    only: about a fifth of the compute of SmolLM2-135M at 600 tokens, gigabytes at 32K tokens and a 128K vocabulary.
    """
    import torch

    labels = inputs["labels"]
    weights = inputs.get("loss_weights")
    if weights is None:
        weights = (labels != IGNORE_INDEX).float()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    targets = labels[:, 1:][keep[:, :-1]]
    target_weights = weights[:, 1:][keep[:, :-1]].float()
    # No cache: with one, transformers ignores packed position ids and lets samples attend to each other
    model_inputs = {key: value for key, value in inputs.items() if key in MODEL_INPUTS} | {"use_cache": False}
    if logits_only:
        outputs = model(**model_inputs, logits_to_keep=keep)
        logits = outputs.logits.float().reshape(-1, outputs.logits.shape[-1])
        if logits.shape[0] != targets.shape[0]:
            raise FinetuneError(
                f"{type(model).__name__} ignored logits_to_keep (got {logits.shape[0]} positions for "
                f"{targets.shape[0]} answer tokens): set finetune.answer_logits_only: false"
            )
    else:
        outputs = model(**model_inputs)
        logits = outputs.logits.float()[keep]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    total = (losses * target_weights).sum()
    if num_items_in_batch is None:
        num_items_in_batch = target_weights.sum() if target_weights.sum() > 0 else 1.0
    return total / num_items_in_batch, outputs
