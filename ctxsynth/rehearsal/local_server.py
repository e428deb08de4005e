"""What the fake servers share: an HTTP server on 127.0.0.1 in a daemon thread for as long as a `with` block runs,
and the seed question a request carries (the second line of its last user message)."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LocalServer:
    def _listen(self, handler, port: int, poll_interval: float = 0.5) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": poll_interval}, daemon=True
        )

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def question_of(body: dict) -> str:
    return body["messages"][-1]["content"].split("\n")[1]


def echo_question(body: dict) -> str:
    """The tests' default reply: every result can be checked against its own request."""
    return "Context: reply to " + question_of(body)
