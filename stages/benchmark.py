"""Stage benchmark: held-out long-context evaluation sets (LongBench layout) and the items they reserve."""

import argparse
from pathlib import Path

from ctxsynth.core.io import InputError, load_params, read_json, write_json, write_jsonl
from ctxsynth.prepare.benchmark import build_hotpotqa_long, build_niah, build_squad_long
from ctxsynth.prepare.niah import SUBTASKS


def niah_params(params: dict) -> dict:
    """benchmark.niah; a params file from before the four subtasks (`niah_single:` only) still builds niah_single."""
    if "niah" in params:
        niah = params["niah"]
    elif "niah_single" in params:
        niah = {"subtasks": ["single"], **params["niah_single"]}
    else:
        raise InputError("params.yaml", "missing the NIAH test settings", field="benchmark.niah")
    unknown = [name for name in niah["subtasks"] if name not in SUBTASKS]
    if unknown:
        raise InputError(
            "params.yaml", f"unknown subtasks {unknown} (known: {', '.join(SUBTASKS)})", field="benchmark.niah.subtasks"
        )
    return niah


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--raw", default="data/raw", type=Path)
    parser.add_argument("--out", default="data/benchmark", type=Path)
    args = parser.parse_args()
    params = load_params("benchmark")
    seed = int(params["seed"])
    squad = params["squad_long"]
    hotpot = params["hotpotqa_long"]
    niah = niah_params(params)
    squad_items, squad_reserved = build_squad_long(
        read_json(args.raw / "squad.json"), int(squad["count"]), int(squad["target_words"]), seed
    )
    hotpot_items, hotpot_reserved = build_hotpotqa_long(
        read_json(args.raw / "hotpotqa.json"), int(hotpot["count"]), int(hotpot["target_words"]), seed
    )
    essays = read_json(args.raw / "PaulGrahamEssays.json")["text"]
    niah_sets = build_niah(
        essays,
        list(niah["subtasks"]),
        [int(n) for n in niah["lengths"]],
        [float(d) for d in niah["depths"]],
        int(niah["samples"]),
        seed,
        niah.get("needles"),
    )
    counts = {}
    for task, items in {"squad_long": squad_items, "hotpotqa_long": hotpot_items, **niah_sets}.items():
        counts[task] = write_jsonl(args.out / f"{task}.jsonl", items)
    reserved = {
        "ids": sorted(set(squad_reserved["ids"] + hotpot_reserved["ids"])),
        "questions": sorted(set(squad_reserved["questions"] + hotpot_reserved["questions"])),
        "paragraphs": sorted(squad_reserved["paragraphs"]),
        "niah_keys": sorted({key for items in niah_sets.values() for item in items for key in item["needle_keys"]}),
    }
    write_json(args.out / "reserved.json", reserved)
    print(f"benchmark: {counts}")


if __name__ == "__main__":
    main()
