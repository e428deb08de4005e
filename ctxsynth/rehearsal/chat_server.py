"""A chat-completions server on 127.0.0.1, with faults injected on demand: the backend tests use it, and the rehearsal
of the paper's vLLM generator rows stands it in for a `vllm serve` fleet (ctxsynth/rehearsal/fake_openai.py)."""

from __future__ import annotations

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
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):  # vLLM's model list, which a starting server is polled for
                if self.path.rstrip("/") != "/v1/models":
                    self.send_error(404)
                    return
                listing = json.dumps({"object": "list", "data": [{"id": m, "object": "model"} for m in server.models]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(listing)))
                self.end_headers()
                self.wfile.write(listing.encode())

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                lines = body["messages"][-1]["content"].split("\n")
                question = lines[1] if len(lines) > 1 else lines[0]
                content = server.reply(body)
                with server.lock:
                    server.received.append(question)
                    if server.fail_matching and server.fail_matching in question:
                        fault = "500"
                    else:
                        fault = server.faults.pop(0) if server.faults else None
                if fault == "drop":
                    self.connection.shutdown(2)
                    return
                if fault == "slow":
                    time.sleep(server.slow_seconds)
                if fault in ("429", "500"):
                    self.send_response(int(fault))
                    if fault == "429":
                        self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                reply = (
                    b"{not json"
                    if fault == "malformed"
                    else json.dumps(
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
                )
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self._listen(Handler, port)
