"""Any OpenAI-compatible chat-completions server as a generator (a `vllm serve` fleet, llama.cpp, OpenAI).

Requests run with bounded concurrency, spread round-robin over one or more base URLs, and are retried with
exponential backoff and full jitter on 429 (honouring Retry-After), 5xx, timeouts, dropped connections and
malformed replies. When retries run out the run stops with a clear error; it never writes an empty context.
Finished items are yielded one by one, so the caller caches each as soon as it arrives.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from ctxsynth.generation.base import Request
from ctxsynth.generation.http import Retryable, RetryPolicy, http_call
from ctxsynth.generation.settings import OpenAISettings


def chat_completion_body(model: str, request: Request, sampling: dict, seed: int) -> dict:
    """The chat-completions request for one item; repetition_penalty is a vLLM / llama.cpp extension."""
    if request.response_prefix:
        raise ValueError('synthesize.response_prefix is not supported by chat-completions servers; set it to ""')
    body = {
        "model": model,
        "messages": request.messages,
        "max_tokens": int(sampling["max_new_tokens"]),
        "temperature": float(sampling.get("temperature", 0.0)),
        "seed": int(seed),
    }
    if "top_p" in sampling:
        body["top_p"] = float(sampling["top_p"])
    if sampling.get("repetition_penalty"):
        body["repetition_penalty"] = float(sampling["repetition_penalty"])
    return body


class OpenAIBackend:
    name = "openai"

    def __init__(
        self,
        settings: OpenAISettings,
        default_model_id: str | None = None,
        api_key: str | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
    ):
        """`default_model_id` names the model in the cache when `settings.model_id` is null (the pipeline's base
        model, so its entries are shared with the transformers backend); else the served model's name does."""
        self.base_urls = [url.rstrip("/") for url in settings.base_urls]
        if not self.base_urls:
            raise ValueError("synthesize.openai.base_urls is empty")
        self.model = settings.model
        # The cache key names the model, not the server: the same weights behind another backend share entries.
        self.model_id = settings.model_id or default_model_id or settings.model
        # The server decides device and dtype: nothing to add to the cache key beside model_id.
        self.generation_settings: dict = {}
        self.api_key = api_key or "EMPTY"  # only the key the settings name (generation/__init__.py api_key)
        self.concurrency, self.timeout = settings.concurrency, settings.timeout
        self.retry = RetryPolicy(settings.max_retries, backoff_base, backoff_max)

    @property
    def retries(self) -> int:
        return self.retry.retries

    def payload(self, request: Request, sampling: dict, seed: int) -> dict:
        return chat_completion_body(self.model, request, sampling, seed)

    def _post(self, url: str, body: dict) -> dict:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {self.api_key}"}
        raw = http_call("POST", f"{url}/chat/completions", json.dumps(body).encode("utf-8"), headers, self.timeout)
        try:
            reply = json.loads(raw)
            choice = reply["choices"][0]
            text = choice["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (ValueError, KeyError, IndexError, TypeError) as error:
            raise Retryable(f"{url}: malformed reply ({error})") from None
        usage = reply.get("usage") or {}
        return {
            "text": text,
            "finish_reason": choice.get("finish_reason") or "stop",
            "generated_tokens": int(usage.get("completion_tokens") or 0),
        }

    def _generate_one(self, index: int, request: Request, sampling: dict, seed: int) -> dict:
        body = self.payload(request, sampling, seed)

        def attempt_once(attempt: int) -> dict:  # round-robin: each retry goes to the next server
            url = self.base_urls[(index + attempt) % len(self.base_urls)]
            try:
                return self._post(url, body)
            except Retryable as error:
                raise Retryable(f"{url}: {error}", error.retry_after) from None

        return self.retry.run(request.name, attempt_once)

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        """Yield finished items as they arrive; after a final failure, keep what is in flight, then raise."""
        error = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            pending = {pool.submit(self._generate_one, i, r, sampling, seed): r for i, r in enumerate(requests)}
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                finished = []
                for future in done:
                    request = pending.pop(future)
                    if future.cancelled():
                        continue
                    if future.exception() is not None:
                        error = error or future.exception()
                        continue
                    finished.append((request, future.result()))
                if error is not None:
                    for future in pending:
                        future.cancel()
                if finished:
                    yield finished
        if error is not None:
            raise error
