"""The OpenAI Batch API as a generator: one asynchronous batch per run, matched by custom_id and resumable.

The paper's reference script submitted a batch and zipped the output lines with its seeds by position. Here every
request line carries the request's content hash as `custom_id`, and results are matched by that id only (the API
does not promise the output keeps the input order). Unknown or repeated ids in the output stop the run.

A batch is paid for once. The request file is uploaded, the batch created and its id written to a state file
under `state_dir` (atomically, before the first poll), so a killed run resumes the batch it already submitted: the
state file is named by a hash of the request keys, the server, the model, the sampling and the seed, and the next
run with the same (or a smaller) set of uncached requests polls the stored batch instead of submitting a new one.
The upload is recorded before the batch is created, and creation is first looked up among the server's batches
when it is retried, so neither a kill nor a lost reply between the two creates a second batch.

Successful items are yielded together when the batch ends, each with the `batch_id` that produced it (cached with
the generation, so a record's provenance names the batch it was paid in; `self.batches` holds each consumed batch's
id, status, request counts and input file id); failed or missing items then raise `GenerationError`,
after the caller has cached the successes, so a rerun submits only the rest. The state file is removed once the
batch's results have been consumed.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctxsynth.core.io import atomic_path, dumps, sha256_text, user_cache_dir, write_json
from ctxsynth.generation.base import GenerationError, Request
from ctxsynth.generation.http import Retryable, RetryPolicy, http_call
from ctxsynth.generation.openai_chat import chat_completion_body
from ctxsynth.generation.settings import OpenAIBatchSettings

ENDPOINT = "/v1/chat/completions"
PENDING = ("validating", "in_progress", "finalizing", "cancelling")
TERMINAL = ("completed", "failed", "expired", "cancelled")
MAX_REQUESTS = 50_000  # the Batch API's limit per input file
MAX_FILE_BYTES = 200 * 1024 * 1024
STATE_VERSION = 1


class OpenAIBatchBackend:
    name = "openai-batch"

    def __init__(
        self,
        settings: OpenAIBatchSettings,
        api_key: str | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        verbose: bool = True,
    ):
        if not settings.base_url:
            raise ValueError("synthesize.openai_batch.base_url is empty")
        self.base_url = settings.base_url.rstrip("/")
        self.model = settings.model
        # The cache key names the model, not the server: the same weights behind another backend share entries.
        self.model_id = settings.model_id or settings.model
        # The server decides device and dtype: nothing to add to the cache key beside model_id.
        self.generation_settings: dict = {}
        self.api_key = api_key or "EMPTY"  # only the key the settings name (generation/__init__.py api_key)
        self.completion_window, self.timeout = settings.completion_window, settings.timeout
        self.poll_interval = float(settings.poll_interval)
        state_dir = settings.state_dir
        self.state_dir = Path(state_dir).expanduser() if state_dir else user_cache_dir("openai_batches")
        self.max_polls = settings.max_polls
        self.retry = RetryPolicy(settings.max_retries, backoff_base, backoff_max)
        # OpenAI rejects `repetition_penalty` (every line of the batch would fail after the wait); vLLM-style
        # servers accept it. Sending it is opt-in; a sampling that needs it and is not sent is refused up front.
        self.send_repetition_penalty = settings.send_repetition_penalty
        self.verbose = verbose
        self.batches: list[dict] = []  # provenance of every batch this backend consumed (id, status, counts)

    @property
    def retries(self) -> int:
        return self.retry.retries

    # ----------------------------------------------------------------------------------------------- requests
    def payload(self, request: Request, sampling: dict, seed: int) -> dict:
        penalty = sampling.get("repetition_penalty")
        if penalty and float(penalty) != 1.0 and not self.send_repetition_penalty:
            raise ValueError(
                "synthesize.sampling.repetition_penalty is not an OpenAI Batch API parameter (every "
                "request would be rejected); remove it, or set openai_batch.send_repetition_penalty: "
                "true for a server that accepts it"
            )
        body = chat_completion_body(self.model, request, sampling, seed)
        if penalty is not None and float(penalty) == 1.0:
            body.pop("repetition_penalty", None)  # neutral: not worth an unknown parameter
        return body

    def request_lines(self, requests: list[Request], sampling: dict, seed: int) -> bytes:
        lines = [
            json.dumps(
                {"custom_id": r.key, "method": "POST", "url": ENDPOINT, "body": self.payload(r, sampling, seed)},
                ensure_ascii=False,
            )
            for r in requests
        ]
        data = ("\n".join(lines) + "\n").encode("utf-8")
        if len(requests) > MAX_REQUESTS or len(data) > MAX_FILE_BYTES:
            raise ValueError(
                f"{len(requests)} requests ({len(data)} bytes) exceed one batch's limit of "
                f"{MAX_REQUESTS} requests / {MAX_FILE_BYTES} bytes; synthesize fewer seeds per run"
            )
        return data

    # ------------------------------------------------------------------------------------------------- state
    def scope(self, sampling: dict, seed: int) -> str:
        """What, besides the request keys, a stored batch must share to be reused."""
        return sha256_text(
            dumps(
                {
                    "base_url": self.base_url,
                    "model": self.model,
                    "sampling": sampling,
                    "seed": int(seed),
                    "endpoint": ENDPOINT,
                    "version": STATE_VERSION,
                }
            )
        )

    def state_path(self, keys: list[str], scope: str) -> Path:
        return self.state_dir / f"batch-{sha256_text(dumps({'scope': scope, 'keys': sorted(keys)}))[:32]}.json"

    def find_state(self, keys: list[str], scope: str) -> tuple[Path, dict] | None:
        """The state of a batch already submitted for these requests: the exact set first, else one covering them
        (e.g. a run killed while caching a finished batch's results, which now asks for fewer items)."""
        exact = self.state_path(keys, scope)
        candidates = [exact] + sorted(p for p in self.state_dir.glob("batch-*.json") if p != exact)
        wanted = set(keys)
        for path in candidates:
            try:
                state = json.loads(path.read_text(encoding="utf-8"))
                if state.get("scope") == scope and wanted <= set(state["custom_ids"]):
                    return path, state
            except FileNotFoundError:
                continue
            except (OSError, ValueError, KeyError, TypeError) as error:
                if path == exact:
                    raise GenerationError(
                        f"{path}: unreadable batch state ({error}); it names a batch that may "
                        "already be paid for: inspect it, then delete it to submit anew"
                    ) from None
        return None

    def _log(self, message: str) -> None:
        if self.verbose:
            print(f"openai-batch: {message}", file=sys.stderr, flush=True)

    # -------------------------------------------------------------------------------------------------- HTTP
    def _call(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> bytes:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if content_type:
            headers["Content-Type"] = content_type
        return http_call(method, f"{self.base_url}{path}", body, headers, self.timeout)

    def _retrying(self, what: str, attempt_once, before_retry=None):
        return self.retry.run(f"{what} at {self.base_url}", lambda attempt: attempt_once(), before_retry)

    def _json(
        self,
        what: str,
        method: str,
        path: str,
        body: bytes | None = None,
        content_type: str | None = None,
        before_retry=None,
    ) -> dict:
        def once():
            raw = self._call(method, path, body, content_type)
            try:
                reply = json.loads(raw)
            except ValueError as error:
                raise Retryable(f"malformed reply ({error})") from None
            if not isinstance(reply, dict):
                raise Retryable("malformed reply (not a JSON object)")
            return reply

        return self._retrying(what, once, before_retry)

    def upload(self, data: bytes, filename: str) -> str:
        boundary = uuid.uuid4().hex
        body = b"".join(
            [
                f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'.encode(),
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
                "Content-Type: application/jsonl\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        reply = self._json(
            "uploading the batch file", "POST", "/files", body, f"multipart/form-data; boundary={boundary}"
        )
        if not isinstance(reply.get("id"), str):
            raise GenerationError(f"{self.base_url}/files: the upload reply has no file id: {str(reply)[:300]}")
        return reply["id"]

    def find_batch(self, input_file_id: str, pages: int = 5) -> dict | None:
        """A batch already created over this uploaded file (the file id is unique to this run's upload)."""
        after = None
        for _ in range(pages):
            query = urllib.parse.urlencode({"limit": 100, **({"after": after} if after else {})})
            reply = self._json("listing batches", "GET", f"/batches?{query}")
            data = reply.get("data") or []
            for batch in data:
                if isinstance(batch, dict) and batch.get("input_file_id") == input_file_id:
                    return batch
            if not reply.get("has_more") or not data:
                return None
            after = data[-1].get("id")
        return None

    def create(self, input_file_id: str) -> dict:
        body = json.dumps(
            {"input_file_id": input_file_id, "endpoint": ENDPOINT, "completion_window": self.completion_window}
        ).encode("utf-8")

        def already_created():  # a retry after a lost reply must not create (and pay for) a second batch
            try:
                return self.find_batch(input_file_id)
            except GenerationError:
                return None

        reply = self._json(
            "creating the batch", "POST", "/batches", body, "application/json", before_retry=already_created
        )
        if not isinstance(reply.get("id"), str):
            raise GenerationError(f"{self.base_url}/batches: the create reply has no batch id: {str(reply)[:300]}")
        return reply

    def retrieve(self, batch_id: str) -> dict:
        return self._json("polling the batch", "GET", f"/batches/{urllib.parse.quote(batch_id)}")

    def file_content(self, file_id: str) -> str:
        raw = self._retrying(
            "downloading a batch result file",
            lambda: self._call("GET", f"/files/{urllib.parse.quote(file_id)}/content"),
        )
        return raw.decode("utf-8")

    # ---------------------------------------------------------------------------------------------- the batch
    def submit(self, requests: list[Request], sampling: dict, seed: int, path: Path, scope: str) -> dict:
        data = self.request_lines(requests, sampling, seed)  # validates before anything is uploaded or paid
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "scope": scope,
            "base_url": self.base_url,
            "model": self.model,
            "model_id": self.model_id,
            "custom_ids": sorted(r.key for r in requests),
            "batch_id": None,
            "input_file_id": None,
            "submitted_at": None,
        }
        input_path = path.with_suffix(".input.jsonl")
        with atomic_path(input_path) as tmp:
            tmp.write_bytes(data)
        input_file_id = self.upload(data, input_path.name)
        state["input_file_id"] = input_file_id
        write_json(path, state)  # from here on a killed run creates the batch over this upload, not a new one
        return self.record_batch(path, state, self.create(input_file_id))

    def resume_creation(self, path: Path, state: dict) -> dict:
        """A run killed between upload and create: adopt the batch if it was created after all, else create it."""
        try:
            batch = self.find_batch(state["input_file_id"])
        except GenerationError:  # a server without batch listing
            batch = None
        return self.record_batch(path, state, batch or self.create(state["input_file_id"]))

    def record_batch(self, path: Path, state: dict, batch: dict) -> dict:
        state.update(batch_id=batch["id"], submitted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        write_json(path, state)  # before the first poll: from here on a killed run resumes this batch
        self._log(f"submitted {len(state['custom_ids'])} requests as batch {batch['id']} (state: {path})")
        return state

    def wait(self, batch_id: str, path: Path) -> dict:
        polls, last = 0, None
        while True:
            try:
                batch = self.retrieve(batch_id)
            except GenerationError as error:
                raise GenerationError(
                    f"{error} (batch state: {path}; a rerun resumes this batch, deleting the state "
                    "file submits a new one)"
                ) from None
            polls += 1
            status = batch.get("status")
            if status != last:
                counts = batch.get("request_counts") or {}
                self._log(
                    f"batch {batch_id}: {status} ({counts.get('completed', 0)} done, "
                    f"{counts.get('failed', 0)} failed of {counts.get('total', '?')})"
                )
                last = status
            if status in TERMINAL:
                return batch
            if status not in PENDING:
                raise GenerationError(f"batch {batch_id}: unexpected status {status!r}; its state is kept in {path}")
            if self.max_polls is not None and polls >= self.max_polls:
                raise GenerationError(
                    f"batch {batch_id} is still {status} after {polls} polls; a rerun resumes it (state: {path})"
                )
            time.sleep(self.poll_interval)

    def collect(self, batch: dict, custom_ids: set[str]) -> tuple[dict[str, dict], dict[str, str]]:
        """Results and per-item errors of a finished batch, keyed by custom_id, from its output and error files."""
        results: dict[str, dict] = {}
        errors: dict[str, str] = {}
        seen: set[str] = set()
        for field in ("output_file_id", "error_file_id"):
            file_id = batch.get(field)
            if not file_id:
                continue
            for number, line in enumerate(self.file_content(file_id).splitlines(), start=1):
                if not line.strip():
                    continue
                where = f"batch {batch['id']} {field.removesuffix('_id')} {file_id}, line {number}"
                try:
                    item = json.loads(line)
                    custom_id = item["custom_id"]
                except (ValueError, KeyError, TypeError):
                    raise GenerationError(f"{where}: not a result line: {line[:200]!r}") from None
                if custom_id in seen:
                    raise GenerationError(
                        f"{where}: custom_id {str(custom_id)[:16]} appears twice; the output cannot "
                        "be matched to its requests"
                    )
                if custom_id not in custom_ids:
                    raise GenerationError(
                        f"{where}: custom_id {str(custom_id)[:16]} was not submitted; the output "
                        "cannot be matched to its requests"
                    )
                seen.add(custom_id)
                result, error = parse_result(item)
                if result is not None:
                    results[custom_id] = result
                else:
                    errors[custom_id] = error or "no reason given"
        return results, errors

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        if not requests:
            return
        for request in requests:
            self.payload(request, sampling, seed)  # refuse unsupported settings before anything is paid
        by_key = {r.key: r for r in requests}
        scope = self.scope(sampling, seed)
        found = self.find_state(list(by_key), scope)
        if found is None:
            path = self.state_path(list(by_key), scope)
            state = self.submit(list(by_key.values()), sampling, seed, path, scope)
        else:
            path, state = found
            self._log(f"resuming batch {state.get('batch_id') or '(not yet created)'} from {path}")
            if not state.get("batch_id"):
                state = self.resume_creation(path, state)
        batch = self.wait(state["batch_id"], path)
        results, errors = self.collect(batch, set(state["custom_ids"]))
        status = batch.get("status")
        self.batches.append(
            {
                "batch_id": batch.get("id"),
                "status": status,
                "input_file_id": state["input_file_id"],
                "output_file_id": batch.get("output_file_id"),
                "error_file_id": batch.get("error_file_id"),
                "request_counts": batch.get("request_counts"),
                "requested": len(by_key),
                "succeeded": sum(k in results for k in by_key),
            }
        )
        # Each result names the batch that paid for it: cached with the generation, it reaches the record's provenance.
        finished = [(by_key[k], {**results[k], "batch_id": batch.get("id")}) for k in by_key if k in results]
        if finished:
            yield finished  # the caller caches these before the state file goes
        remove_state(path)
        if status != "completed":
            raise GenerationError(
                f"batch {batch.get('id')} ended {status}: {describe_errors(batch.get('errors'))}; "
                f"{len(finished)} of {len(by_key)} results were kept; a rerun submits the rest"
            )
        failed = [k for k in by_key if k not in results]
        if failed:
            missing = [k for k in failed if k not in errors]
            examples = "; ".join([f"{by_key[k].name}: {errors[k]}" for k in failed if k in errors][:3])
            raise GenerationError(
                f"batch {batch.get('id')}: {len(failed)} of {len(by_key)} requests failed "
                f"({len(failed) - len(missing)} with errors, {len(missing)} missing from the output)"
                + (f"; first errors: {examples}" if examples else "")
                + f"; the {len(finished)} successes were kept; a rerun submits only the failed ones"
            )


def parse_result(item: dict) -> tuple[dict | None, str | None]:
    """(result, None) for a successful line, else (None, reason)."""
    if item.get("error"):
        return None, describe_error(item["error"])
    response = item.get("response")
    if not isinstance(response, dict):
        return None, "no response"
    body: Any = response.get("body")  # JSON: checked as it is read below
    status_code = response.get("status_code")
    if status_code != 200:
        detail = body.get("error") if isinstance(body, dict) and body.get("error") else body
        return None, f"HTTP {status_code}: {describe_error(detail)}"
    try:
        choice = body["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
        usage = body.get("usage") or {}
        tokens = int(usage.get("completion_tokens") or 0)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError) as error:
        return None, f"malformed response body ({type(error).__name__}: {error})"
    return {"text": text, "finish_reason": choice.get("finish_reason") or "stop", "generated_tokens": tokens}, None


def describe_error(error) -> str:
    if isinstance(error, dict):
        parts = [str(error[k]) for k in ("code", "message") if error.get(k)]
        return ": ".join(parts) if parts else json.dumps(error)[:200]
    return str(error)[:200]


def describe_errors(errors) -> str:
    data = errors.get("data") if isinstance(errors, dict) else errors
    if not data:
        return "no errors reported"
    if isinstance(data, list):
        shown = "; ".join(
            (f"line {e['line']}: " if isinstance(e, dict) and e.get("line") else "") + describe_error(e)
            for e in data[:3]
        )
        return shown + (f" (and {len(data) - 3} more)" if len(data) > 3 else "")
    return describe_error(data)


def remove_state(path: Path) -> None:
    for stale in (path, path.with_suffix(".input.jsonl")):
        try:
            stale.unlink()
        except FileNotFoundError:
            pass
