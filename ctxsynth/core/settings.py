"""One settings pattern for every stage: a dataclass per params.yaml section, loaded and validated here.

A stage's settings class is a plain dataclass whose fields are the section's keys; each field's annotation says what
the key may hold and its default is the one place that default lives. `load_settings(cls, section)` walks the fields
and their type hints and raises `InputError("params.yaml", message, field="section.key")`, naming the full dotted
key (`synthesize.sampling.temperature`, `seed.sources[1].type`), for an unknown key, a missing required key, a wrong
type or a value outside a `Literal[...]`. Supported annotations: bool, int, float, str, `X | None`, `A | B`,
`list[X]`, `tuple[X, ...]`, `dict[str, X]`, `Literal[...]`, `Annotated[X, "noun"]` (the noun names the value in an
error: "unknown seed source type 'web'") and nested dataclasses.

Types are checked, not converted: bool is not an int, a string is not a number; an int is accepted where a float is
expected and kept as written (sampling values are hashed into generation cache keys, so 1 must stay 1).

Hooks a settings class may define:
- `normalize_params(cls, data: dict) -> dict` (classmethod): rewrites the raw mapping before it is checked
  (a legacy key, nulls that mean "unset");
- `validate(self) -> None`: checks across fields or ranges; raises `Invalid(key, message)` with `key` relative to
  the class's own section ("" for the section itself); the loader adds the section's dotted path.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from ctxsynth.core.io import InputError, did_you_mean, load_params

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")  # every settings class is a dataclass


class Invalid(ValueError):
    """A settings value that fails a check of its class's `validate`; `key` is relative to that class's section."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}" if key else message)
        self.key, self.message = key, message


def load_settings(
    cls: type[T], section: str, params: Mapping[str, Any] | None = None, source: os.PathLike | str = "params.yaml"
) -> T:
    """The `section` of params.yaml (or the given mapping of that section) as a validated `cls`."""
    if params is None:
        params = load_params(section, source)
    return from_mapping(cls, params, section, source)


def coerce(cls: type[T], value: T | Mapping[str, Any], path: str, source: os.PathLike | str = "params.yaml") -> T:
    """`value` if it is a `cls` already, else the mapping loaded as one (library functions accept either)."""
    return value if isinstance(value, cls) else from_mapping(cls, value, path, source)


def from_mapping(cls: type[T], data: Any, path: str, source: os.PathLike | str = "params.yaml") -> T:
    """Check `data` (the mapping found at dotted `path`) against the dataclass `cls` and build it."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise InputError(source, f"expected a mapping, got {_show(data)}", field=path)
    data = dict(data)
    normalize = getattr(cls, "normalize_params", None)
    if normalize is not None:
        data = normalize(data)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    for key in data:
        if key not in fields:
            hint = did_you_mean(str(key), fields).rstrip()
            hint = f"; {hint}" if hint else ""
            raise InputError(source, f"unknown key{hint} (known: {', '.join(fields)})", field=join(path, str(key)))
    hints = get_type_hints(cls, include_extras=True)
    values = {}
    for name, field in fields.items():
        if name in data:
            values[name] = convert(hints[name], data[name], join(path, name), source)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise InputError(source, "missing required key", field=join(path, name))
    try:
        instance = cls(**values)
        validate = getattr(instance, "validate", None)
        if validate is not None:
            validate()
    except Invalid as error:
        raise InputError(source, error.message, field=join(path, error.key)) from None
    return instance


def check(instance: Any, path: str, source: os.PathLike | str = "params.yaml") -> None:
    """Check settings built in code as the loader checks a mapping: every field against its annotation, then
    `validate()`; failures are the loader's InputErrors."""
    hints = get_type_hints(type(instance), include_extras=True)
    for field in dataclasses.fields(instance):
        convert(hints[field.name], getattr(instance, field.name), join(path, field.name), source)
    validate = getattr(instance, "validate", None)
    try:
        if validate is not None:
            validate()
    except Invalid as error:
        raise InputError(source, error.message, field=join(path, error.key)) from None


def join(path: str, key: str) -> str:
    if not key:
        return path
    return f"{path}{key}" if key.startswith("[") else f"{path}.{key}"


def convert(hint: Any, value: Any, path: str, source: os.PathLike | str = "params.yaml") -> Any:
    """`value` checked against the annotation `hint` (nested mappings and lists converted); errors name `path`."""
    noun = None
    if get_origin(hint) is Annotated:
        hint, *extras = get_args(hint)
        noun = next((extra for extra in extras if isinstance(extra, str)), None)
    origin = get_origin(hint)
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        return _convert_union(hint, value, path, source)
    if origin is Literal:
        return _convert_literal(hint, value, path, source, noun)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_mapping(hint, value, path, source)
    if origin in (list, tuple) or hint in (list, tuple):
        return _convert_sequence(hint, value, path, source)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return _convert_mapping(hint, value, path, source)
    return _convert_scalar(hint, value, path, source)


def _convert_union(hint: Any, value: Any, path: str, source: os.PathLike | str) -> Any:
    """`X | None` takes null; otherwise the first option that accepts the value wins."""
    args = get_args(hint)
    options = [arg for arg in args if arg is not type(None)]
    if value is None:
        if len(options) < len(args):
            return None
        raise InputError(source, f"expected {describe(hint)}, got null", field=path)
    if len(options) == 1:
        return convert(options[0], value, path, source)
    for option in options:
        try:
            return convert(option, value, path, source)
        except InputError:
            continue
    raise InputError(source, f"expected {describe(hint)}, got {_show(value)}", field=path)


def _convert_literal(hint: Any, value: Any, path: str, source: os.PathLike | str, noun: str | None) -> Any:
    """One of the allowed values, of the same type too (True is not 1); the error names the value by `noun` or by
    the key."""
    args = get_args(hint)
    if any(value == allowed and type(value) is type(allowed) for allowed in args):
        return value
    what = noun or path.rsplit(".", 1)[-1].split("[", 1)[0].replace("_", " ")
    allowed = ", ".join(repr(arg) for arg in args)
    raise InputError(source, f"unknown {what} {_show(value, kind=False)}; expected one of {allowed}", field=path)


def _convert_sequence(hint: Any, value: Any, path: str, source: os.PathLike | str) -> list | tuple:
    if not isinstance(value, (list, tuple)):
        raise InputError(source, f"expected {describe(hint)}, got {_show(value)}", field=path)
    origin, args = get_origin(hint), get_args(hint)
    item = args[0] if args else Any
    items = [convert(item, element, f"{path}[{index}]", source) for index, element in enumerate(value)]
    return tuple(items) if (origin or hint) is tuple else items


def _convert_mapping(hint: Any, value: Any, path: str, source: os.PathLike | str) -> dict:
    if not isinstance(value, Mapping):
        raise InputError(source, f"expected {describe(hint)}, got {_show(value)}", field=path)
    args = get_args(hint)
    key_hint, item_hint = args if args else (Any, Any)
    converted = {}
    for key, element in value.items():
        where = join(path, str(key))
        converted[convert(key_hint, key, where, source)] = convert(item_hint, element, where, source)
    return converted


def _convert_scalar(hint: Any, value: Any, path: str, source: os.PathLike | str) -> Any:
    """bool, int, float or str, checked, not converted: a bool is no int; an int passes as a float, as written."""
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
    elif hint is str:
        if isinstance(value, str):
            return value
    else:
        raise TypeError(f"{path}: unsupported settings annotation {hint!r}")
    raise InputError(source, f"expected {describe(hint)}, got {_show(value)}", field=path)


def describe(hint: Any) -> str:
    """What an annotation accepts, in words, for error messages."""
    if get_origin(hint) is Annotated:
        hint = get_args(hint)[0]
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        words = [describe(arg) for arg in args if arg is not type(None)]
        return " or ".join(words) + (" or null" if type(None) in args else "")
    if origin is Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if dataclasses.is_dataclass(hint) or origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a mapping"
    if origin in (list, tuple) or hint in (list, tuple):
        return f"a list of {_plural(args[0])}" if args and args[0] is not Any else "a list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, repr(hint))


def _plural(hint: Any) -> str:
    word = describe(hint)
    for article in ("an ", "a "):
        if word.startswith(article):
            return word[len(article) :] + "s"
    return word


def _show(value: Any, kind: bool = True) -> str:
    """A value for an error message: its repr, shortened, and (with `kind`) what sort of value it is."""
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if not kind:
        return text
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list"}
    kinds[dict] = "a mapping"
    return f"{text} ({kinds.get(type(value), type(value).__name__)})"


def defaults(cls: type) -> dict[str, Any]:
    """The dataclass's default for every field that has one, nested dataclasses as dicts (for comparing with a
    params file); fields without a default are left out."""
    result = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            continue
        nested = dataclasses.is_dataclass(value) and not isinstance(value, type)
        result[field.name] = dataclasses.asdict(value) if nested else value
    return result


__all__ = [
    "Invalid",
    "check",
    "coerce",
    "convert",
    "defaults",
    "describe",
    "from_mapping",
    "join",
    "load_settings",
]
