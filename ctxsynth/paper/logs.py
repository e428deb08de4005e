"""What runs say while and after they run: one status line each time their states change, until every one has
finished; a failed run's log, short (the first traceback and the last lines)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable


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


def report_until_finished(
    read_states: Callable[[], dict[str, str]], finished: Callable[[str], bool], poll_seconds: float
) -> dict[str, str]:
    """Name -> final state: polls `read_states`, printing a line whenever a state changes, until every state is
    `finished`."""
    last = None
    while True:
        states = read_states()
        summary = ", ".join(f"{name}: {state.lower()}" for name, state in states.items())
        if summary != last:
            print(time.strftime("%H:%M:%S"), summary, flush=True)
            last = summary
        if all(finished(state) for state in states.values()):
            return states
        time.sleep(poll_seconds)
