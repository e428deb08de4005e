"""Stage general: offline general SFT data (chat format) from SQuAD, disjoint from evaluation items and seeds."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import read_json, write_json, write_jsonl
from ctxsynth.core.settings import load_settings
from ctxsynth.prepare.general_data import build_general
from ctxsynth.prepare.seeds import read_seed_dir
from ctxsynth.prepare.settings import GeneralSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--reserved", default="data/benchmark/reserved.json", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--out", default="data/general", type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(GeneralSettings, "general")
    samples, provenance = build_general(args.raw, read_json(args.reserved), read_seed_dir(args.seeds), settings)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", samples)
    write_json(args.out / "provenance.json", provenance)
    print(f"general: {len(samples)} chat samples from SQuAD ({provenance['paragraphs_excluded']} paragraphs excluded)")


if __name__ == "__main__":
    sys.exit(main())
