"""One look for long-running work (synthesis, fine-tuning, evaluation): a rich progress bar with ETA and the
stage's own live figures (loss, tokens/s). Where nobody watches (DVC logs, CI) the bar is off and the stages log
plain lines instead, so captured output stays readable."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def interactive() -> bool:
    return Console(stderr=True).is_terminal


def stage_progress(*, transient: bool = False) -> Progress:
    """A progress display on stderr: description, bar, done/total, elapsed, ETA, then the task's `stats` field."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=Console(stderr=True),
        transient=transient,
        disable=not interactive(),
    )
