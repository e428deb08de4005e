"""A chat-completions server on 127.0.0.1, with faults injected on demand: the backend tests use it, and the rehearsal
of the paper's vLLM generator rows stands it in for a `vllm serve` fleet (ctxsynth/rehearsal/fake_openai.py)."""

from __future__ import annotations

import functools
import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from ctxsynth.rehearsal.local_server import LocalServer, echo_question


class ChatServer(LocalServer):
    """Answers `Context: reply to <second line of the last user message>` (or what `reply` says); `faults` are
    consumed one per request: "429", "500", "slow", "malformed", "drop", or None for a normal reply.
    Questions containing `fail_matching` always get a 500."""

    def __init__(
        self,
        faults: list[str | None] | None = None,
        slow_seconds: float = 1.0,
        fail_matching: str | None = None,
        reply: Callable[[dict], str] | None = None,
        port: int = 0,
        models: list[str] | None = None,
    ):
        self.reply = reply or echo_question
        self.models = list(models or [])
        self.faults, self.fail_matching, self.slow_seconds = list(faults or []), fail_matching, slow_seconds
        self.lock = threading.Lock()
        self.received: list[str] = []
        self.authorizations: list[str | None] = []  # each request's Authorization header: which key was sent
        self._listen(functools.partial(ChatRequestHandler, fake=self), port)

    def next_fault(self, question: str) -> str | None:
        """The fault for the request asking `question` (recorded as received): a 500 where it contains
        `fail_matching`, else the next of `faults`."""
        with self.lock:
            self.received.append(question)
            if self.fail_matching and self.fail_matching in question:
                return "500"
            return self.faults.pop(0) if self.faults else None


def completion_body(content: str) -> bytes:
    """A chat completion answering `content`, as much of one as the clients read."""
    return json.dumps(
        {
            "choices": [
                {
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"completion_tokens": 5},
        }
    ).encode()


class ChatRequestHandler(BaseHTTPRequestHandler):
    """One HTTP request to the fake chat server `fake` (the ChatServer whose replies and faults it takes)."""

    def __init__(self, *args, fake: ChatServer, **kwargs):
        self.fake = fake  # before the base __init__, which handles the request
        super().__init__(*args, **kwargs)

    def log_message(self, *args):
        pass

    def do_GET(self):  # vLLM's model list, which a starting server is polled for
        if self.path.rstrip("/") != "/v1/models":
            self.send_error(404)
            return
        listing = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in self.fake.models]})
        self.send_body(listing.encode())

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.fake.authorizations.append(self.headers.get("Authorization"))
        lines = body["messages"][-1]["content"].split("\n")
        question = lines[1] if len(lines) > 1 else lines[0]
        content = self.fake.reply(body)
        fault = self.fake.next_fault(question)
        if fault == "drop":
            self.connection.shutdown(2)
            return
        if fault == "slow":
            time.sleep(self.fake.slow_seconds)
        if fault in ("429", "500"):
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_body(b"{not json" if fault == "malformed" else completion_body(content))

    def send_body(self, body: bytes) -> None:
        """A 200 response carrying `body` as JSON (a malformed body is sent as JSON too)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
