"""The report's text comes from Jinja2 templates: the report (report.md.j2), the README's findings table
(findings_table.md.j2), both package data beside this module, and the phrases of ctxsynth/paper/findings.yaml. Code
hands them numbers; these filters are the only place numbers become text."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import NamedTuple

import jinja2

from ctxsynth.paper import stats


class SeedRange(NamedTuple):
    """A table cell: a row's seeds and the range of its overall score over them."""

    seeds: int
    low: float
    high: float


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.2f}"


def cell(value) -> str:
    """A table cell: – for a number not measured, two decimals for a score, [low, high] for an interval."""
    if value is None:
        return "–"
    if isinstance(value, stats.Estimate):
        return f"[{value.low:.2f}, {value.high:.2f}]"
    if isinstance(value, SeedRange):
        return f"{value.seeds} ({fmt(value.low)}–{fmt(value.high)})"
    return fmt(value) if isinstance(value, float) else str(value)


def _package_file(name: str) -> str:
    return resources.files("ctxsynth.paper").joinpath(name).read_text(encoding="utf-8")


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    # Markdown, not HTML: nothing to escape. StrictUndefined: a misspelt name fails instead of printing nothing.
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(_package_file),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=fmt, signed=signed, cell=cell)
    return env


@lru_cache(maxsize=1024)
def _compiled(source: str) -> jinja2.Template:
    return environment().from_string(source)


def phrase(source: str, context: dict) -> str:
    """A string of findings.yaml rendered with the finding's context."""
    return _compiled(source).render(context)


def render(name: str, **context) -> str:
    return environment().get_template(name).render(**context)
