"""One check's result and how every check is run: timed, a raised exception a fail with its message, a missing
library or device a skip that names it."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PASS, FAIL, SKIPPED = "pass", "fail", "skipped"


class Skip(Exception):
    """Raised by a check that cannot run here; the message names what is missing ("no CUDA device")."""


class Failed(AssertionError):
    """Raised by a check whose numbers are off; `numbers` say by how much."""

    def __init__(self, message: str, **numbers: Any):
        super().__init__(message)
        self.numbers = numbers


@dataclass
class Result:
    name: str
    status: str
    detail: str = ""
    numbers: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass(frozen=True)
class Check:
    name: str  # e.g. "train.lora", "packing.sdpa"
    what: str  # the property checked, in a few words
    run: Callable[[], dict[str, Any]]  # returns the numbers that passed; raises Skip or Failed


def run_check(check: Check) -> Result:
    started = time.perf_counter()
    try:
        numbers = check.run()
        status, detail = PASS, check.what
    except Skip as reason:
        status, detail, numbers = SKIPPED, str(reason), {}
    except Failed as failure:
        status, detail, numbers = FAIL, str(failure), failure.numbers
    except Exception as error:  # noqa: BLE001 - a crash in a path is that path failing, reported with where it broke
        where = traceback.extract_tb(error.__traceback__)[-1]
        status, detail, numbers = FAIL, f"{type(error).__name__}: {error} ({where.filename}:{where.lineno})", {}
    return Result(check.name, status, detail, numbers, round(time.perf_counter() - started, 2))


def require(condition: bool, message: str, **numbers: Any) -> None:
    if not condition:
        raise Failed(message, **numbers)


def needs_module(name: str, why: str = "") -> None:
    import importlib.util

    if importlib.util.find_spec(name) is None:
        raise Skip(f"{name} not installed" + (f" ({why})" if why else ""))


def needs_cuda() -> None:
    import torch

    if not torch.cuda.is_available():
        raise Skip("no CUDA device")
