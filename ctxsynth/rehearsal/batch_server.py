"""A fake OpenAI Batch API on 127.0.0.1: files, batches, polling, results; faults on demand. The backend tests use
it, and the rehearsal of the paper's GPT-4o-mini rows stands it in for the paid API (ctxsynth/rehearsal/fake_openai.py).

By default each request line is answered `Context: reply to <second line of the last user message>` (the seed's
question), so a test can check every result against its own request; `reply` answers otherwise. Results are written
in a shuffled order, so a client that matched them by position would get them wrong.
"""

from __future__ import annotations

import functools
import json
import random
import threading
import urllib.parse
from collections.abc import Callable
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler

from ctxsynth.rehearsal.local_server import LocalServer, echo_question, question_of


class BatchServer(LocalServer):
    """Options:
    - `in_progress_polls`: polls answered `in_progress` (after one `validating`) before the batch ends.
    - `terminal`: how a batch ends: "completed", "failed" (no output, `errors` set), "expired" or "cancelled"
      (the output holds the first half of the items, in input order before shuffling).
    - `error_matching` / `omit_matching`: items whose question contains the string get an error line (in the error
      file, or in the output file if `errors_in_output`) / appear in no file at all.
    - `duplicate_output`: the first result line is written twice.
    - `faults`: {"POST /files" | "POST /batches" | "GET /batches/" | "GET /content": [fault, ...]}, consumed one per
      call: "500" / "429" fail the call before it does anything; "500-after" does the work and then answers 500
      (a lost reply); None answers normally.
    """

    def __init__(
        self,
        in_progress_polls: int = 2,
        terminal: str = "completed",
        error_matching: str | None = None,
        omit_matching: str | None = None,
        errors_in_output: bool = False,
        duplicate_output: bool = False,
        faults: dict[str, list] | None = None,
        shuffle_seed: int = 1,
        reply: Callable[[dict], str] | None = None,
        api_key: str | None = "test-key",  # None: any key (a local rehearsal)
        port: int = 0,
    ):
        self.in_progress_polls, self.terminal = in_progress_polls, terminal
        self.error_matching, self.omit_matching = error_matching, omit_matching
        self.errors_in_output, self.duplicate_output = errors_in_output, duplicate_output
        self.faults = {route: list(values) for route, values in (faults or {}).items()}
        self.random = random.Random(shuffle_seed)
        self.reply = reply or echo_question
        self.authorization = f"Bearer {api_key}" if api_key else None
        self.lock = threading.Lock()
        self.files: dict[str, dict] = {}  # id -> {"purpose", "filename", "content": bytes}
        self.batches: dict[str, dict] = {}
        self.batch_inputs: dict[str, list[dict]] = {}  # batch id -> parsed request lines, in input order
        self.output_order: dict[str, list[str]] = {}  # batch id -> custom_ids in the order written
        self.counts = {"uploads": 0, "creates": 0, "polls": 0, "downloads": 0, "lists": 0}
        self._listen(functools.partial(BatchRequestHandler, fake=self), port, poll_interval=0.02)

    # --------------------------------------------------------------------------------------------- endpoints
    def upload(self, content_type: str, body: bytes):
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        if not message.is_multipart():
            return 400, {"error": {"message": "expected multipart/form-data"}}
        fields = {}
        for part in message.iter_parts():
            fields[part.get_param("name", header="content-disposition")] = (
                part.get_filename(),
                part.get_payload(decode=True),
            )
        if "file" not in fields or fields.get("purpose", (None, b""))[1] != b"batch":
            return 400, {"error": {"message": "need a file and purpose=batch"}}
        with self.lock:
            self.counts["uploads"] += 1
            file_id = f"file-in{len(self.files)}"
            self.files[file_id] = {"purpose": "batch", "filename": fields["file"][0], "content": fields["file"][1]}
        return 200, {"id": file_id, "object": "file", "purpose": "batch", "bytes": len(fields["file"][1])}

    def create(self, body: dict):
        with self.lock:
            if body.get("input_file_id") not in self.files or body.get("endpoint") != "/v1/chat/completions":
                return 400, {"error": {"message": "bad input_file_id or endpoint"}}
            if body.get("completion_window") != "24h":
                return 400, {"error": {"message": "completion_window must be 24h"}}
            self.counts["creates"] += 1
            batch_id = f"batch_{len(self.batches)}"
            lines = [json.loads(line) for line in self.files[body["input_file_id"]]["content"].decode().splitlines()]
            self.batch_inputs[batch_id] = lines
            self.batches[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": "24h",
                "status": "validating",
                "output_file_id": None,
                "error_file_id": None,
                "errors": None,
                "created_at": len(self.batches),
                "polls": 0,
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            }
            return 200, self.public(batch_id)

    def public(self, batch_id: str) -> dict:
        return {k: v for k, v in self.batches[batch_id].items() if k != "polls"}

    def list_batches(self, query: dict):
        with self.lock:
            self.counts["lists"] += 1
            ordered = sorted(self.batches, key=lambda b: -self.batches[b]["created_at"])  # newest first
            if query.get("after") in ordered:
                ordered = ordered[ordered.index(query["after"]) + 1 :]
            limit = int(query.get("limit", 20))
            page = ordered[:limit]
            return 200, {
                "object": "list",
                "data": [self.public(b) for b in page],
                "has_more": len(ordered) > limit,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }

    def poll(self, batch_id: str):
        with self.lock:
            if batch_id not in self.batches:
                return 404, {"error": {"message": f"no batch {batch_id}"}}
            self.counts["polls"] += 1
            batch = self.batches[batch_id]
            if batch["status"] in ("validating", "in_progress"):
                batch["polls"] += 1
                if batch["polls"] == 1:
                    batch["status"] = "validating"
                elif batch["polls"] <= 1 + self.in_progress_polls:
                    batch["status"] = "in_progress"
                else:
                    self.finish(batch)
            return 200, self.public(batch_id)

    def content(self, file_id: str):
        with self.lock:
            if file_id not in self.files:
                return 404, {"error": {"message": f"no file {file_id}"}}
            self.counts["downloads"] += 1
            return 200, self.files[file_id]["content"]

    # ------------------------------------------------------------------------------------------------ results
    def finish(self, batch: dict) -> None:
        """End `batch` the way `terminal` says: its result files written, its request counts and status set."""
        if self.terminal == "failed":
            batch["status"] = "failed"
            batch["errors"] = {
                "object": "list",
                "data": [
                    {"code": "model_not_found", "line": 1, "param": "body.model", "message": "The model does not exist"}
                ],
            }
            return
        lines = self.batch_inputs[batch["id"]]
        if self.terminal in ("expired", "cancelled"):
            lines = lines[: len(lines) // 2]
        outputs, errors = self.result_lines(lines)
        self.random.shuffle(outputs)
        if self.duplicate_output and outputs:
            outputs.insert(1, outputs[0])
        self.output_order[batch["id"]] = [o["custom_id"] for o in outputs]
        self.write_result_files(batch, outputs, errors)
        succeeded = sum(o["response"]["status_code"] == 200 for o in outputs)
        batch["request_counts"] = {
            "total": len(self.batch_inputs[batch["id"]]),
            "completed": succeeded,
            "failed": len(lines) - succeeded,
        }
        batch["status"] = self.terminal

    def result_lines(self, lines: list[dict]) -> tuple[list[dict], list[dict]]:
        """(output lines, error lines) for the request lines, in input order: an item matching `omit_matching` gets
        none, one matching `error_matching` an error line (among the outputs with `errors_in_output`)."""
        outputs, errors = [], []
        for number, line in enumerate(lines):
            question = question_of(line["body"])
            if self.omit_matching and self.omit_matching in question:
                continue
            if self.error_matching and self.error_matching in question:
                (outputs if self.errors_in_output else errors).append(error_line(number, line, question))
                continue
            outputs.append(completion_line(number, line, self.reply(line["body"])))
        return outputs, errors

    def write_result_files(self, batch: dict, outputs: list[dict], errors: list[dict]) -> None:
        """The batch's output and error files, each only where it has lines, as the API writes them."""
        for field, items in (("output_file_id", outputs), ("error_file_id", errors)):
            if items:
                file_id = f"file-{field.split('_')[0]}-{batch['id']}"
                self.files[file_id] = {
                    "purpose": "batch_output",
                    "filename": f"{file_id}.jsonl",
                    "content": "".join(json.dumps(o) + "\n" for o in items).encode(),
                }
                batch[field] = file_id

    def requests_of(self, batch_id: str) -> list[dict]:
        return self.batch_inputs[batch_id]


def error_line(number: int, line: dict, question: str) -> dict:
    """The result line of an item the API refused (HTTP 400 inside the batch)."""
    return {
        "id": f"batch_req_{number}",
        "custom_id": line["custom_id"],
        "response": {
            "status_code": 400,
            "request_id": f"req_{number}",
            "body": {"error": {"message": f"invalid prompt: {question}", "code": "bad_item"}},
        },
        "error": None,
    }


def completion_line(number: int, line: dict, content: str) -> dict:
    """The result line of an item answered with `content`, a chat completion as the API returns it."""
    return {
        "id": f"batch_req_{number}",
        "custom_id": line["custom_id"],
        "error": None,
        "response": {
            "status_code": 200,
            "request_id": f"req_{number}",
            "body": {
                "object": "chat.completion",
                "model": line["body"]["model"],
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": content},
                    }
                ],
                "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
            },
        },
    }


class BatchRequestHandler(BaseHTTPRequestHandler):
    """One HTTP request to the fake Batch API: checks the key, routes it to `fake` (the BatchServer whose state it
    reads and changes) and applies the route's next fault."""

    def __init__(self, *args, fake: BatchServer, **kwargs):
        self.fake = fake  # before the base __init__, which handles the request
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def reply(self, status: int, body: bytes = b"", content_type: str = "application/json"):
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status: int, data):
        self.reply(status, json.dumps(data).encode())

    def handle_route(self, route: str, work):
        with self.fake.lock:
            fault = self.fake.faults[route].pop(0) if self.fake.faults.get(route) else None
        if fault in ("500", "429"):
            return self.reply(int(fault))
        status, data = work()
        if fault == "500-after":
            return self.reply(500)
        if isinstance(data, bytes):
            return self.reply(status, data, "application/octet-stream")
        return self.reply_json(status, data)

    def do_POST(self):
        fake = self.fake
        if fake.authorization and self.headers.get("Authorization") != fake.authorization:
            return self.reply_json(401, {"error": {"message": "bad key"}})
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/v1/files":
            return self.handle_route("POST /files", lambda: fake.upload(self.headers["Content-Type"], body))
        if self.path == "/v1/batches":
            return self.handle_route("POST /batches", lambda: fake.create(json.loads(body)))
        return self.reply_json(404, {"error": {"message": f"no route {self.path}"}})

    def do_GET(self):
        fake = self.fake
        if fake.authorization and self.headers.get("Authorization") != fake.authorization:
            return self.reply_json(401, {"error": {"message": "bad key"}})
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.strip("/").split("/")
        if parts == ["v1", "batches"]:
            query = dict(urllib.parse.parse_qsl(url.query))
            return self.handle_route("GET /batches", lambda: fake.list_batches(query))
        if len(parts) == 3 and parts[:2] == ["v1", "batches"]:
            return self.handle_route("GET /batches/", lambda: fake.poll(parts[2]))
        if len(parts) == 4 and parts[:2] == ["v1", "files"] and parts[3] == "content":
            return self.handle_route("GET /content", lambda: fake.content(parts[2]))
        return self.reply_json(404, {"error": {"message": f"no route {self.path}"}})
