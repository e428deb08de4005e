"""One error path for every stage script and command: an expected failure is one line on stderr and exit code 2.

Expected failures are bad input (`InputError`: a params key, a file, a line, a field) and the domain errors a stage
raises when it cannot go on (`StageError` and its subclasses, such as `FetchError`; a stage names the others it
expects, e.g. `GenerationError`, `FinetuneError`). They print as `error: <message>` with no traceback, since the
message says what to fix. Anything else is a bug and keeps its traceback.

    @stage_main(GenerationError)
    def main(argv=None) -> int | None: ...

    if __name__ == "__main__":
        sys.exit(main())
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

from ctxsynth.core.io import InputError

EXIT_EXPECTED_ERROR = 2


class StageError(RuntimeError):
    """A stage cannot go on for a reason its message explains (base class of the domain errors)."""


EXPECTED_ERRORS: tuple[type[BaseException], ...] = (InputError, StageError)


def error_line(error: BaseException) -> str:
    """`error: <message>` on one line (a multi-line message, such as pip's tail, is joined with ' | ')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "error: " + (" | ".join(lines) or type(error).__name__)


def run_reporting_errors(main: Callable[[], Any], *expected: type[BaseException]) -> int:
    """Run `main()` and return its exit code (None = 0); an expected error prints one line and returns 2."""
    try:
        code = main()
    except (*EXPECTED_ERRORS, *expected) as error:
        print(error_line(error), file=sys.stderr)
        return EXIT_EXPECTED_ERROR
    return 0 if code is None else int(code)


def stage_main(*expected: Any) -> Callable:
    """Decorate a stage's `main`: it then returns an exit code, and InputError, StageError and the `expected` error
    classes become one `error: ...` line on stderr and code 2. Usable bare (`@stage_main`) or with classes."""
    if len(expected) == 1 and callable(expected[0]) and not _is_error_class(expected[0]):
        return stage_main()(expected[0])
    for cls in expected:
        if not _is_error_class(cls):
            raise TypeError(f"stage_main takes exception classes, not {cls!r}")

    def decorate(main: Callable[..., Any]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapper(*args: Any, **kwargs: Any) -> int:
            try:
                code = run_reporting_errors(lambda: main(*args, **kwargs), *expected)
            except BaseException:
                put_back_outputs()
                raise
            if code != 0:
                put_back_outputs()
            return code

        return wrapper

    return decorate


def put_back_outputs() -> None:
    """Under `dvc repro`, a failed stage's outputs as its last good run left them (ctxsynth/core/dvc_outputs.py);
    silent when all are back, one line naming the commands for what is not."""
    from ctxsynth.core.dvc_outputs import restore_outputs, running_stage

    stage = None
    try:
        stage = running_stage(sys.argv)
        if stage is None:  # not a dvc.yaml stage command (a test, a library call): DVC removed nothing
            return
        _, lost = restore_outputs(stage)
    except Exception as error:  # noqa: BLE001 - the stage's own failure, already reported, is what matters
        where = f"`dvc checkout {stage}`" if stage else "`dvc checkout`"
        print(
            f"note: outputs not restored ({type(error).__name__}: {error}): {where} brings them back", file=sys.stderr
        )
        return
    if lost:
        print(
            f"note: {', '.join(lost)} could not be restored from the DVC cache here: `dvc checkout {stage}` or "
            f"`dvc pull {stage}` brings back what a remote holds",
            file=sys.stderr,
        )


def _is_error_class(value: Any) -> bool:
    return isinstance(value, type) and issubclass(value, BaseException)
