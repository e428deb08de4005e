"""The chat record schema every stage shares: what mix writes, finetune trains on and general data must match."""

from __future__ import annotations

import os
from typing import Any

from ctxsynth.core.io import InputError


def validate_messages(path: os.PathLike | str, line: int, messages: Any) -> None:
    """[system?] user, assistant, ..., user, assistant: every assistant turn is a training target."""
    if not isinstance(messages, list) or len(messages) < 2:
        raise InputError(
            path, "expected a list of at least a user and an assistant message", line=line, field="messages"
        )
    for index, message in enumerate(messages):
        where = f"messages[{index}]"
        if not isinstance(message, dict):
            raise InputError(path, f"expected an object, got {type(message).__name__}", line=line, field=where)
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise InputError(path, "missing or not a string", line=line, field=f"{where}.{key}")
        body = messages[1:] if messages[0]["role"] == "system" else messages
        offset = len(messages) - len(body)
        if index >= offset:
            expected = "user" if (index - offset) % 2 == 0 else "assistant"
            if message["role"] != expected:
                raise InputError(
                    path, f"expected role '{expected}', got '{message['role']}'", line=line, field=f"{where}.role"
                )
    if messages[-1]["role"] != "assistant":
        raise InputError(
            path,
            f"the last message must be the assistant's answer, got '{messages[-1]['role']}'",
            line=line,
            field=f"messages[{len(messages) - 1}].role",
        )
    if not messages[-1]["content"].strip():
        raise InputError(path, "empty answer", line=line, field=f"messages[{len(messages) - 1}].content")
