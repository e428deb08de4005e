"""The finetune stage's error, in a module of its own: train.py raises it, and so does the loss on the answer tokens."""

from __future__ import annotations

from ctxsynth.core.errors import StageError


class FinetuneError(StageError):
    """The run cannot start or finish (missing optional dependency, model problem)."""
