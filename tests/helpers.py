"""Helpers several test files share (imported as `from helpers import ...`; conftest.py puts this folder on the
path). Fixtures they share are in conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_jsonl(path: Path, rows: list) -> Path:
    """Rows as JSON lines (a str row is written as it is: a malformed line on purpose); parents created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows), encoding="utf-8"
    )
    return path


def chat(prompt: str, answer: str) -> list[dict]:
    """One user turn and its answer, in the chat record schema (ctxsynth/core/chat.py)."""
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def run_stage(workdir: Path, hash_seed: str, *args: str) -> None:
    """`python stages/<args[0]> <args[1:]>` in `workdir` as DVC runs it, offline, under the given PYTHONHASHSEED."""
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(ROOT / "stages" / args[0]), *args[1:]],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
