"""Stage preflight: every params section and every file a parameter names, checked in seconds, first in every
`dvc repro` and every queued experiment. Each stage depends on its own verdict, data/preflight/<stage>.json (the
named inputs checked for it): a bad setting stops the pipeline before any stage removes its outputs, and a change
that concerns one stage leaves every other stage's verdict, and so that stage, untouched. metrics/preflight.json
summarizes the checks and their warnings; no stage depends on it."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json
from ctxsynth.preflight.params import SECTIONS, collect_problems, inputs_by_stage, warnings


def write_verdicts(directory: Path, by_stage: dict[str, list[str]]) -> None:
    """One file per stage, and no other: a stage dropped from dvc.yaml leaves no verdict behind."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.json"):
        if stale.stem not in by_stage:
            stale.unlink()
    for stage, inputs in by_stage.items():
        write_json(directory / f"{stage}.json", {"stage": stage, "named_inputs": inputs})


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--out", default="metrics/preflight.json", type=Path)
    parser.add_argument("--verdicts", default="data/preflight", type=Path)
    args = parser.parse_args(argv)
    problems, checked = collect_problems(args.params)  # every section through load_settings, every named input
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 2
    found = warnings(args.params)
    for line in found:
        print(line, file=sys.stderr)
    by_stage = inputs_by_stage(args.params)
    write_verdicts(args.verdicts, by_stage)
    write_json(
        args.out, {"sections": len(SECTIONS), "named_inputs_checked": checked, "warnings": found, "inputs": by_stage}
    )
    print(f"preflight: {len(SECTIONS)} sections valid; {checked} named inputs exist and are tracked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
