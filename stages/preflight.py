"""Stage preflight: every params section and every file a parameter names, checked in seconds, first in every
`dvc repro` and every queued experiment; fetch_model and synthesize depend on its report, so a bad row stops before
any download, generation or training. It always runs (the checks read files DVC cannot list); its report changes
only when the checks' outcome does, so nothing downstream reruns because of it."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json
from ctxsynth.preflight.params import SECTIONS, collect_problems, warnings


@stage_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml", type=Path)
    parser.add_argument("--out", default="metrics/preflight.json", type=Path)
    args = parser.parse_args(argv)
    problems, checked = collect_problems(args.params)  # every section through load_settings, every named input
    for line in problems:
        print(line, file=sys.stderr)
    if problems:
        return 2
    found = warnings(args.params)
    for line in found:
        print(line, file=sys.stderr)
    write_json(args.out, {"sections": len(SECTIONS), "named_inputs_checked": checked, "warnings": found})
    print(f"preflight: {len(SECTIONS)} sections valid; {checked} named inputs exist and are tracked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
