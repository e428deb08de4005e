"""The chat record schema every stage shares: what mix writes, finetune trains on and general data must match."""

from __future__ import annotations

import os
from functools import cache
from importlib import resources
from typing import Any

import yaml

from ctxsynth.core.io import InputError, read_yaml
from ctxsynth.core.settings import convert

MODEL_TEMPLATE = "model"  # the chat template the model's tokenizer ships


def general_chat_sample(sample_id: str, source: str, messages: list[dict]) -> dict:
    """A general-data training record: short chat data that the long samples are added to."""
    return {"id": sample_id, "task": "general", "variant": "general", "source": source, "messages": messages}


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


@cache
def chat_templates() -> dict[str, dict]:
    """The versioned chat formats of chat_templates.yaml, by name."""
    text = resources.files("ctxsynth.core").joinpath("chat_templates.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def apply_chat_template_choice(tokenizer, name: str, key: str, source: os.PathLike | str = "params.yaml") -> str:
    """Give `tokenizer` the chat format `name` names (`model`: its own) and return what was used, for provenance:
    `model` or `<name>@v<version>`. A model without a template of its own needs a named one (a base model)."""
    if name == MODEL_TEMPLATE:
        if not getattr(tokenizer, "chat_template", None):
            known = ", ".join(chat_templates())
            raise InputError(
                source, f"the model has no chat template of its own (a base model): name one ({known})", field=key
            )
        return MODEL_TEMPLATE
    if name not in chat_templates():
        known = ", ".join([MODEL_TEMPLATE, *chat_templates()])
        raise InputError(source, f"unknown chat template {name!r} (known: {known})", field=key)
    spec = chat_templates()[name]
    tokenizer.chat_template = spec["template"]
    return f"{name}@v{spec['version']}"


def configured_chat_template(section: str, source: os.PathLike | str = "params.yaml") -> str:
    """`<section>.chat_template` as params.yaml sets it, type-checked, for a stage outside that section that must
    render samples the way it will (mix counts lengths in the format finetune will train in). The one key is read
    rather than the section's settings class, which lives in a later stage's package; unset or null ("the default"),
    it is MODEL_TEMPLATE, the default that class names (tests/test_settings.py holds them equal)."""
    value = ((read_yaml(source) or {}).get(section) or {}).get("chat_template")
    return MODEL_TEMPLATE if value is None else convert(str, value, f"{section}.chat_template", source)
