"""`ctxsynth inputs`: bring the paper scale's inputs into the repository as pinned, DVC-tracked directories.

    ctxsynth inputs seeds ~/context-synthesis/data --revision <commit>   # the paper's seed release
    ctxsynth inputs longbench ~/Downloads/data.zip --revision <commit> [--sha256 <hex>]   # THUDM's LongBench v1

Each command checks the whole input with the loader that will read it (a bad record stops it here, with its file,
line and field, not hours later in a queued row), copies it under the directory a stage declares as a dependency
(inputs/seeds/context_synthesis, inputs/longbench/LongBench), writes SOURCE.json (where it came from, the revision
you name, and a sha256 per file) and runs `dvc add`, so `dvc exp run --queue` and fresh clones (`dvc pull`) see
exactly these bytes and any change to them reruns what reads them. Nothing is downloaded: fetch the release where
you have the network, at the commit you name here.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ctxsynth.core.dvc_deps import DVC
from ctxsynth.core.io import InputError, sha256_file, write_json

SEEDS_DEST = Path("inputs/seeds/context_synthesis")
LONGBENCH_DEST = Path("inputs/longbench/LongBench")
LONGBENCH_TASKS = ("narrativeqa", "qasper", "hotpotqa", "2wikimqa", "musique", "gov_report", "qmsum", "multi_news")


def check_seeds(directory: Path) -> str:
    from ctxsynth.prepare.seeds import load_paper_seeds

    records = load_paper_seeds(directory, None)
    with_context = sum(record.get("context") is not None for record in records)
    return f"{len(records)} seeds, {with_context} with a human context"


def check_longbench(directory: Path) -> str:
    from ctxsynth.evaluate.run import load_benchmark

    missing = [task for task in LONGBENCH_TASKS if not (directory / "data" / f"{task}.jsonl").is_file()]
    if missing:
        raise InputError(directory / "data", "missing task files: " + ", ".join(f"{task}.jsonl" for task in missing))
    counts = {task: len(load_benchmark(directory / "data" / f"{task}.jsonl", task)) for task in LONGBENCH_TASKS}
    return ", ".join(f"{task} {count}" for task, count in counts.items())


def unpack_longbench(source: Path, into: Path, sha256: str | None) -> Path:
    """THUDM's data.zip (members data/<task>.jsonl) or a directory holding data/; only the English v1 tasks."""
    if source.is_dir():
        return source
    if sha256 and sha256_file(source) != sha256.lower():
        raise InputError(source, f"sha256 {sha256_file(source)} is not the expected {sha256}")
    with zipfile.ZipFile(source) as archive:
        for task in LONGBENCH_TASKS:
            member = f"data/{task}.jsonl"
            if member not in archive.namelist():
                raise InputError(source, f"no member {member} (not THUDM's LongBench data.zip?)")
            (into / "data").mkdir(parents=True, exist_ok=True)
            (into / member).write_bytes(archive.read(member))
    return into


def install(source: Path, dest: Path, files: list[Path], provenance: dict, track: bool) -> None:
    """Copy `files` (relative to source) to dest, write SOURCE.json, `dvc add` dest."""
    if dest.exists():
        shutil.rmtree(dest)
    for relative in files:
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, dest / relative)
    write_json(
        dest / "SOURCE.json",
        {**provenance, "files": {str(f): sha256_file(dest / f) for f in sorted(files, key=str)}},
    )
    if track:
        subprocess.run([*DVC, "add", str(dest)], check=True)
        print(f"tracked: git add {dest}.dvc {dest.parent}/.gitignore && git commit (and `dvc push` to share the data)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("seeds", "longbench"))
    parser.add_argument("source", type=Path, help="seeds: the release's directory; longbench: data.zip or its dir")
    parser.add_argument("--revision", required=True, help="the commit or release the source was taken at")
    parser.add_argument("--sha256", help="longbench: the expected sha256 of data.zip")
    parser.add_argument("--dest", type=Path, help="default: inputs/seeds/context_synthesis, inputs/longbench/LongBench")
    parser.add_argument("--no-dvc", action="store_true", help="copy and check only; do not run `dvc add`")
    args = parser.parse_args(argv)
    if not args.source.exists():
        raise InputError(args.source, "does not exist")
    with tempfile.TemporaryDirectory(prefix="ctxsynth-inputs-") as scratch:
        if args.kind == "seeds":
            source, dest = args.source, args.dest or SEEDS_DEST
            summary = check_seeds(source)
            files = sorted(p.relative_to(source) for p in source.glob("seed_*/*.jsonl"))
        else:
            source, dest = unpack_longbench(args.source, Path(scratch), args.sha256), args.dest or LONGBENCH_DEST
            summary = check_longbench(source)
            files = [Path("data") / f"{task}.jsonl" for task in LONGBENCH_TASKS]
        provenance = {"kind": args.kind, "source": str(args.source), "revision": args.revision}
        if args.sha256:
            provenance["source_sha256"] = args.sha256.lower()
        install(source, dest, files, provenance, track=not args.no_dvc)
    print(f"{args.kind}: {summary} -> {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
