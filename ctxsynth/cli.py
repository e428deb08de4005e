"""The `ctxsynth` command: what is not a DVC stage. Stages run through `dvc repro` / `dvc exp run`.

ctxsynth preflight                          # check params.yaml and every file it names, in seconds
ctxsynth params [mix.general]               # every knob: its value here, its default, what it means
ctxsynth inputs seeds DIR --revision REV    # the paper's seeds (or LongBench) as a checked, DVC-tracked input
ctxsynth experiments list                   # the paper's experiment groups and their rows
ctxsynth experiments run main --scale cpu   # queue a group as DVC experiments, run it, wait
ctxsynth report [--from-results]            # collect the rows and render metrics/report.md
ctxsynth doctor [--only packing]            # every CUDA path checked in minutes (metrics/doctor.json)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "preflight": ("ctxsynth.preflight.params", "check params.yaml and the files it names before any expensive work"),
    "params": ("ctxsynth.params", "every knob with its value in params.yaml, its default and what it means"),
    "inputs": ("ctxsynth.inputs", "check the paper's seeds or LongBench and add them as DVC-tracked inputs"),
    "experiments": (
        "ctxsynth.paper.commands",
        "list, check, budget and run the paper's experiment groups (locally or on Slurm)",
    ),
    "doctor": ("ctxsynth.doctor.run", "check every CUDA path (and its CPU form) on small models, in minutes"),
    "report": ("ctxsynth.paper.report", "collect the experiments' results and render metrics/report.md"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    return "usage: ctxsynth COMMAND [ARGS]  (ctxsynth COMMAND --help)\n\ncommands:\n" + "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ctxsynth.core.errors import run_reporting_errors

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, args = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"ctxsynth: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv[0] = f"ctxsynth {name}"  # argparse's prog in the subcommand's usage and errors
    return run_reporting_errors(lambda: module.main(args))


if __name__ == "__main__":
    sys.exit(main())
