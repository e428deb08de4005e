"""Stage synthesize: the generator writes a context for every seed (cached by content hash, resumable)."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json, write_jsonl
from ctxsynth.core.progress import stage_progress
from ctxsynth.core.settings import load_settings
from ctxsynth.core.versions import library_versions
from ctxsynth.prepare.seeds import read_seed_dir
from ctxsynth.synthesis.run import run_synthesis
from ctxsynth.synthesis.settings import SynthesizeSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--out", default="data/synth/contexts.jsonl", type=Path)
    parser.add_argument("--metrics", default="metrics/synthesize.json", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(SynthesizeSettings, "synthesize")
    seeds = read_seed_dir(args.seeds)
    with stage_progress() as progress:
        records, metrics = run_synthesis(seeds, args.model, settings, progress)
    write_jsonl(args.out, records)
    write_json(args.metrics, {**metrics, "versions": library_versions()})
    run = metrics["run"]
    print(f"synthesize: {len(records)} records, {run['generated']} generated, {run['from_cache']} from cache")


if __name__ == "__main__":
    sys.exit(main())
