"""What a failed run's log says, short: the first traceback and the last lines."""

from __future__ import annotations

import re


def failure_excerpt(log: str, tail: int = 25) -> str:
    """The log's first traceback (where a distributed run's failing rank says why; the launcher's summary at the end
    does not), up to its exception line, then the log's last lines."""
    lines = log.splitlines()
    start = next((i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line), None)
    if start is None or start >= len(lines) - tail:
        return "\n".join(lines[-tail:])
    end = next((i + 1 for i in range(start + 1, len(lines)) if _EXCEPTION_LINE.match(lines[i])), len(lines))
    return "\n".join([*lines[start : min(end, start + 40)], "...", *lines[-tail:]])


_EXCEPTION_LINE = re.compile(r"^(\[rank\d+\]:\s*)?[A-Za-z_.]*(Error|Exception|Interrupt)\b")
