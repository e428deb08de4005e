"""Stage general: offline general SFT data (chat format) from SQuAD, disjoint from evaluation items and seeds."""

import argparse
from pathlib import Path

from ctxsynth.core.io import load_params, read_json, sha256_file, write_json, write_jsonl
from ctxsynth.prepare.general_data import build_squad_chat, templates
from ctxsynth.prepare.seeds import read_seed_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--reserved", default="data/benchmark/reserved.json", type=Path)
    parser.add_argument("--seeds", default="data/seed", type=Path)
    parser.add_argument("--out", default="data/general", type=Path)
    args = parser.parse_args()
    params = load_params("general")
    reserved = read_json(args.reserved)
    seed_ids = {
        record["id"].split(":", 1)[1] for record in read_seed_dir(args.seeds) if record["id"].startswith("squad:")
    }
    squad_path = args.raw / "squad.json"
    samples, report = build_squad_chat(
        read_json(squad_path),
        set(reserved.get("ids", [])) | seed_ids,
        set(reserved.get("paragraphs", [])),
        params.get("count"),
        int(params["seed"]),
        int(params["max_paragraph_words"]),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(args.out / "train.jsonl", samples)
    write_json(
        args.out / "provenance.json",
        {
            "source": "squad_chat",
            "squad_sha256": sha256_file(squad_path),
            "templates_version": templates()["version"],
            "params": params,
            "excluded_seed_questions": len(seed_ids),
            **report,
        },
    )
    print(f"general: {len(samples)} chat samples from SQuAD ({report['paragraphs_excluded']} paragraphs excluded)")


if __name__ == "__main__":
    main()
