"""HTTP calls with retries, shared by the chat-completions and Batch API backends.

Transient failures (429 with its Retry-After, 5xx, timeouts, dropped connections, malformed replies) are retried
with exponential backoff and full jitter; anything else, or running out of attempts, raises `GenerationError`.
"""

from __future__ import annotations

import http.client
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ctxsynth.generation.base import GenerationError

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
T = TypeVar("T")


class Retryable(Exception):
    """A failure worth another attempt, after at least `retry_after` seconds when the server said so."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After is either delta-seconds or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def http_call(method: str, url: str, body: bytes | None, headers: dict, timeout: float) -> bytes:
    """One HTTP call: the reply's bytes; transient failures raise `Retryable`, others `GenerationError`."""
    http_request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(http_request, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as error:
        if error.code in RETRYABLE_STATUS:
            raise Retryable(f"HTTP {error.code}", retry_after_seconds(error.headers.get("Retry-After"))) from None
        raise GenerationError(f"{method} {url}: HTTP {error.code}: {error.read()[:300]!r}") from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
        raise Retryable(f"{type(error).__name__}: {error}") from None


@dataclass
class RetryPolicy:
    max_retries: int = 6
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retries: int = 0  # retries made so far, across calls (reported in the synthesis metrics)

    def run(self, what: str, attempt_once: Callable[[int], T], before_retry: Callable[[], T | None] | None = None) -> T:
        """`attempt_once(attempt)` until it returns; `before_retry()` may find the result another way first
        (for example a batch created by an attempt whose reply was lost)."""
        failures = []
        for attempt in range(self.max_retries + 1):
            if attempt and before_retry is not None:
                found = before_retry()
                if found is not None:
                    return found
            try:
                return attempt_once(attempt)
            except Retryable as error:
                failures.append(str(error))
                if attempt == self.max_retries:
                    break
                self.retries += 1
                delay = random.uniform(0, min(self.backoff_max, self.backoff_base * 2**attempt))
                time.sleep(max(delay, error.retry_after or 0.0))
        raise GenerationError(f"{what} failed after {self.max_retries + 1} attempts: " + "; ".join(failures[-3:]))
