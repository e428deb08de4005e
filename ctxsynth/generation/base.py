"""What every generation backend shares: the request, the backend protocol and the error it raises.

A backend's `iter_generate(requests, sampling, seed)` yields finished batches as they complete, so the caller can
cache each item at once and a killed run loses at most what is in flight.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from ctxsynth.core.errors import StageError


@dataclass(frozen=True)
class Request:
    key: str
    messages: list[dict]
    response_prefix: str = ""
    # What a person knows the item by (the seed's id), for error messages; not part of the cache key.
    label: str = ""

    @property
    def name(self) -> str:
        return f"{self.label} (request {self.key[:12]})" if self.label else f"request {self.key[:12]}"


class GenerationError(StageError):
    """A generation that cannot be completed (retries exhausted, a failed batch, a refused request)."""


class Backend(Protocol):
    name: str
    model_id: str  # the cache identity of the weights behind this backend
    generation_settings: dict  # what else changes its outputs (device, dtype, ...): part of the stored cache key

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        """Yield lists of (request, {"text", "generated_tokens", "finish_reason"}) as they finish."""
        ...
