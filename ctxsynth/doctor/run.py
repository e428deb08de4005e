"""`ctxsynth doctor`: every CUDA path of the pipeline checked in minutes, on small random-weight models, no network.

    ctxsynth doctor                              # every check; metrics/doctor.json
    ctxsynth doctor --only packing generation    # the checks whose names start so

Each check prints pass, fail (with its numbers) or skipped (naming what is missing: "no CUDA device",
"bitsandbytes not installed"). metrics/doctor.json records the device, the driver, the library versions and each
check's result and seconds. Any fail exits 1. On CPU the checks with a CPU form run; on a GPU machine it is the first
thing to run (docs/paper-scale.md).
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
import tempfile
from pathlib import Path
from typing import Any

from ctxsynth.core.io import write_json
from ctxsynth.core.versions import library_versions
from ctxsynth.doctor.checks import FAIL, Check, Result, run_check

OPTIONAL = ("bitsandbytes", "flash_attn", "deepspeed", "vllm")  # detected, never required


def all_checks(workdir: Path) -> list[Check]:
    from ctxsynth.doctor.engines import engine_checks
    from ctxsynth.doctor.numerics import generation_checks, packing_checks
    from ctxsynth.doctor.training import training_checks

    return [*training_checks(workdir), *packing_checks(workdir), *generation_checks(workdir), *engine_checks(workdir)]


def machine() -> dict[str, Any]:
    """What ran the checks: the device, its driver and CUDA, and the versions that decide kernels and numerics."""
    import torch

    found: dict[str, Any] = {"platform": platform.platform(), "versions": library_versions()}
    found["optional"] = {name: importlib.util.find_spec(name) is not None for name in OPTIONAL}
    if torch.cuda.is_available():
        found["device"] = torch.cuda.get_device_name(0)
        found["cuda"] = torch.version.cuda
        found["driver"] = _driver_version()
        found["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    else:
        found["device"] = f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return found


def _driver_version() -> str | None:
    import subprocess

    try:
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def table(results: list[Result], width: int = 0) -> str:
    width = max([width, *(len(result.name) for result in results)])
    lines = []
    for result in results:
        numbers = ", ".join(f"{key} {_short(value)}" for key, value in result.numbers.items())
        detail = result.detail + (f" [{numbers}]" if numbers else "")
        lines.append(f"{result.name:<{width}}  {result.status:<7}  {result.seconds:6.1f}s  {detail}")
    return "\n".join(lines)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)[:200]


def run(names: list[str] | None, out: Path | None) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="ctxsynth-doctor-") as scratch:
        checks = all_checks(Path(scratch))
        chosen = [check for check in checks if not names or check.name.startswith(tuple(names))]
        results, width = [], max((len(check.name) for check in chosen), default=0)
        for check in chosen:  # printed as each ends: a slow or hanging path shows which
            results.append(run_check(check))
            print(table(results[-1:], width), flush=True)
    if out is not None:
        report = {**machine(), "checks": {r.name: {k: v for k, v in vars(r).items() if k != "name"} for r in results}}
        write_json(out, report)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", help="run only the checks whose names start with these")
    parser.add_argument("--out", type=Path, default=Path("metrics/doctor.json"))
    args = parser.parse_args(argv)
    results = run(args.only, args.out)
    failed = [result.name for result in results if result.status == FAIL]
    counts = {status: sum(r.status == status for r in results) for status in ("pass", "fail", "skipped")}
    print(f"doctor: {counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
