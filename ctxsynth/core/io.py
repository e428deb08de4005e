"""File I/O shared by every stage: validated JSONL, atomic writes, hashes, params.

Errors name the file, the line and the field so a user can fix bad input without guessing.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypedDict

import yaml

_UMASK = os.umask(0)
os.umask(_UMASK)


class InputError(ValueError):
    """Bad user input, located by file, line and field."""

    def __init__(self, path: os.PathLike | str, message: str, line: int | None = None, field: str | None = None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = str(path), line, field


class SkippedRecord(TypedDict):
    """A source record skipped for an InputError, as a report lists it: where it is and why."""

    line: int | None
    field: str | None
    reason: str


def read_jsonl_numbered(
    path: os.PathLike | str, required: Iterable[str] = (), types: dict[str, type] | None = None
) -> list[tuple[int, dict]]:
    """(line number, record) for every non-blank line, so later checks can still name the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = decode_line(path, raw, number)
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise InputError(path, malformed_json(error, line), line=number) from None
            if not isinstance(record, dict):
                raise InputError(path, f"expected a JSON object, got {type(record).__name__}", line=number)
            for field in required:
                if field not in record or record[field] is None:
                    raise InputError(path, "missing required field", line=number, field=field)
            for field, kind in (types or {}).items():
                if field in record and record[field] is not None and not isinstance(record[field], kind):
                    raise InputError(
                        path, f"expected {kind.__name__}, got {type(record[field]).__name__}", line=number, field=field
                    )
            records.append((number, record))
    return records


def malformed_json(error: json.JSONDecodeError, line: str) -> str:
    """What is wrong with one JSON line and where: a line that stops early is said to be cut off, at its end."""
    content = line.rstrip("\r\n")
    reason = error.msg.removesuffix(" at")  # json's messages end "... at", before the position it reports
    if error.msg.startswith("Unterminated string"):  # json names where the string opened; the line ends inside it
        reason = f"the string opened at column {error.colno} is never closed"
    elif error.pos < len(content.rstrip()):
        return f"malformed JSON ({reason} at column {error.colno})"
    elif error.msg.startswith("Invalid control character"):  # the line's own newline, inside an open string
        reason = "the line ends inside a string"
    return f"malformed JSON (cut off at the end of the line, column {len(content) + 1}: {reason})"


def decode_line(path: os.PathLike | str, raw: bytes, number: int) -> str:
    """One line as UTF-8 (a byte-order mark opening the file is read, not refused), or an InputError naming the file,
    the line and the column of the first bad byte."""
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        byte = raw[error.start : error.start + 1].hex()
        raise InputError(path, f"not UTF-8 (byte 0x{byte} at column {error.start + 1})", line=number) from None


def read_text_utf8(path: os.PathLike | str) -> str:
    """A whole file as UTF-8; a missing file or a non-UTF-8 byte is an InputError naming the file and line."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(path, "file not found") from None
    try:
        return data.decode("utf-8-sig")  # a byte-order mark, as some Windows editors write, is not content
    except UnicodeDecodeError as error:
        line_start = data.rfind(b"\n", 0, error.start) + 1
        byte = data[error.start : error.start + 1].hex()
        column = error.start - line_start + 1
        line = data.count(b"\n", 0, error.start) + 1
        raise InputError(path, f"not UTF-8 (byte 0x{byte} at column {column})", line=line) from None


def read_jsonl(
    path: os.PathLike | str, required: Iterable[str] = (), types: dict[str, type] | None = None
) -> list[dict]:
    """Read a JSONL file; every non-blank line must be an object holding the required fields."""
    return [record for _, record in read_jsonl_numbered(path, required, types)]


def dumps(record: Any) -> str:
    """Canonical JSON: sorted keys and no ASCII escaping, so equal data gives equal bytes."""
    return json.dumps(record, ensure_ascii=False, sort_keys=True)


@contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside `path` and rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; outputs get the usual permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_jsonl(path: os.PathLike | str, records: Iterable[dict]) -> int:
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as handle:
        for record in records:
            handle.write(dumps(record) + "\n")
            count += 1
    return count


def write_json(path: os.PathLike | str, data: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, sort_keys=True, indent=2) + "\n", encoding="utf-8")


def read_json(path: os.PathLike | str) -> Any:
    path = Path(path)
    try:
        return json.loads(read_text_utf8(path))
    except json.JSONDecodeError as error:
        raise InputError(path, f"malformed JSON ({error.msg})", line=error.lineno) from None


def sha256_file(path: os.PathLike | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def user_cache_dir(*parts: str) -> Path:
    """Shared across checkouts and `dvc exp` temp dirs, so experiments reuse each other's downloads and generations."""
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root, "ctxsynth", *parts)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML as DVC reads it: a key given twice in one mapping is an error, not "the last one wins"."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (DVC refuses the file)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: os.PathLike | str) -> Any:
    """A YAML file's content; a syntax error or a duplicated key is an InputError naming its line."""
    try:
        return yaml.load(read_text_utf8(path), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(path, f"not valid YAML: {problem}", line=mark.line + 1 if mark else None) from None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """ "did you mean 'x'? " for the known name closest to a misspelt one, else ""."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean '{close[0]}'? " if close else ""


# The sections of params.yaml, one per stage's settings (ctxsynth/preflight/params.py maps each to its class; a test
# keeps the two equal). A stage refuses an unknown one too: `dvc repro -s <stage>` skips the preflight.
SECTION_NAMES = ("fetch", "benchmark", "seed", "general", "synthesize", "lengths", "mix", "finetune", "evaluate")


def load_params(section: str, path: os.PathLike | str = "params.yaml") -> dict:
    """One stage's section of params.yaml (stages read only their own knobs); an unknown section anywhere in the file
    is an error, with a did-you-mean, since its keys would silently change nothing."""
    params = read_yaml(path) or {}
    for name in params if isinstance(params, dict) else ():
        if name not in SECTION_NAMES:
            hint = did_you_mean(str(name), SECTION_NAMES)
            raise InputError(path, f"unknown section ({hint}known: {', '.join(SECTION_NAMES)})", field=str(name))
    if section not in params:
        raise InputError(path, "missing params section", field=section)
    return params[section]
