"""What each settings field means, read from the comment beside it in its dataclass: the one place a knob is
explained (params.yaml says only why a run sets a value). `ctxsynth params` prints it beside the value and default."""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any, get_args, get_type_hints


@dataclass(frozen=True)
class Knob:
    key: str  # dotted params.yaml key
    default: Any  # the dataclass default (dataclasses.MISSING where it has none)
    meaning: str  # the comment beside the field, or above it


def field_meanings(cls: type) -> dict[str, str]:
    """Field name -> its comment: the end-of-line comment, or the comment lines right above the field."""
    lines = inspect.getsource(cls).splitlines()
    meanings = {}
    for field in dataclasses.fields(cls):
        index = next(i for i, line in enumerate(lines) if re.match(rf"\s+{field.name}\s*:", line))
        inline = lines[index].split("  # ", 1)
        above: list[str] = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            above.insert(0, line.strip().lstrip("#").strip())
        meanings[field.name] = " ".join(above + ([inline[1].strip()] if len(inline) > 1 else []))
    return meanings


def plain(value: Any) -> Any:
    """A default as params.yaml would spell it: settings objects inside lists and mappings become mappings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [plain(item) for item in value]
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _nested_class(hint: Any) -> type | None:
    for candidate in (hint, *get_args(hint)):
        if isinstance(candidate, type) and dataclasses.is_dataclass(candidate):
            return candidate
    return None


def knobs(cls: type, prefix: str) -> list[Knob]:
    """Every leaf knob of settings class `cls` under the dotted `prefix`, nested sections expanded in field order."""
    hints, meanings = get_type_hints(cls, include_extras=True), field_meanings(cls)
    found = []
    for field in dataclasses.fields(cls):
        key, nested = f"{prefix}.{field.name}", _nested_class(hints[field.name])
        if nested is not None and not isinstance(_default(field), (list, dict)):
            found += knobs(nested, key)
        else:
            found.append(Knob(key, plain(_default(field)), meanings[field.name]))
    return found
