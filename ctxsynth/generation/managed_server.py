"""A generator's OpenAI-compatible server (`vllm serve`) that the synthesize stage starts, waits for and stops.

An open-generator row (Qwen2.5-72B, LongWriter-8B) runs unattended on the machine that then fine-tunes: the stage
starts the server for the model the row names (`synthesize.openai.serve.command`) the first time a generation is not
in the cache, polls `GET /v1/models` until the model is listed, generates, and stops the whole process group before
the stage ends, so fine-tuning gets every GPU back. A run served entirely from the cache starts nothing. The rehearsal
starts its fake chat server through the same path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ctxsynth.generation.base import GenerationError, Request

PLACEHOLDERS = ("model", "port", "python")
STOP_GRACE_SECONDS = 60  # vLLM frees its GPU memory on SIGTERM; after this it is killed
POLL_SECONDS = 2.0


def render_command(command: list[str], model: str, port: int) -> list[str]:
    """`command` with {model}, {port} and {python} (this interpreter) filled in."""
    values = {"model": model, "port": str(port), "python": sys.executable}
    return [part.format(**values) for part in command]


class ManagedServer:
    def __init__(self, command: list[str], model: str, port: int, startup_timeout: float, log_path: Path):
        self.command = render_command(command, model, port)
        self.model, self.port, self.startup_timeout, self.log_path = model, port, startup_timeout, Path(log_path)
        self.url = f"http://127.0.0.1:{port}/v1"
        self.process: subprocess.Popen | None = None
        self.started = False  # whether this run needed the server at all (everything cached: no)

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _serves_model(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=5) as response:
                listed = [entry.get("id") for entry in json.loads(response.read()).get("data", [])]
        except (OSError, ValueError, urllib.error.URLError):
            return False
        return self.model in listed or not listed

    def start(self) -> str:
        """Start the server (once) and return its base URL when it serves the model."""
        if self.process is not None:
            return self.url
        if self._serves_model():
            raise GenerationError(
                f"port {self.port} already answers (another server?): synthesize.openai.serve starts its own; stop "
                "that one or set synthesize.openai.serve.port"
            )
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("w", encoding="utf-8")
        print(f"synthesize: starting {' '.join(self.command)} (log: {self.log_path})", file=sys.stderr)
        try:
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        except OSError as error:
            message = f"synthesize.openai.serve.command: cannot start {self.command[0]!r}: {error}"
            raise GenerationError(message) from None
        finally:
            log.close()
        deadline = time.monotonic() + self.startup_timeout
        while not self._serves_model():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise GenerationError(f"the generator's server exited with {code} before serving:\n{self._log_tail()}")
            if time.monotonic() > deadline:
                self.stop()
                raise GenerationError(
                    f"the generator's server did not serve {self.model} within {self.startup_timeout:g} s "
                    f"(synthesize.openai.serve.startup_timeout):\n{self._log_tail()}"
                )
            time.sleep(POLL_SECONDS)
        self.started = True
        return self.url

    def stop(self) -> None:
        """Stop the server and everything it started (vLLM's workers): SIGTERM to the group, SIGKILL after a grace."""
        if self.process is None:
            return
        process, self.process = self.process, None
        with contextlib.suppress(ProcessLookupError):  # it exited on its own
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        print(f"synthesize: stopped the generator's server (exit {process.returncode})", file=sys.stderr)


class ServedBackend:
    """A backend whose server is started on the first request that is not cached."""

    def __init__(self, backend, server: ManagedServer):
        self.backend, self.server = backend, server
        self.name, self.model_id = backend.name, backend.model_id
        self.generation_settings = backend.generation_settings

    def iter_generate(self, requests: list[Request], sampling: dict, seed: int) -> Iterator[list[tuple[Request, dict]]]:
        if requests:
            self.server.start()
        yield from self.backend.iter_generate(requests, sampling, seed)

    def __getattr__(self, name):  # batches and the like, as the wrapped backend has them
        return getattr(self.backend, name)
