"""Stage evaluate: score the base model and base + LoRA adapter on the long-context benchmark through lm-eval."""

import argparse
import logging
import os
import sys
from pathlib import Path

# Offline by construction: lm-eval reads local JSON files only and the model is a local directory.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from ctxsynth.core.errors import stage_main
from ctxsynth.core.settings import load_settings
from ctxsynth.evaluate.run import evaluate
from ctxsynth.evaluate.settings import EvalSettings


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", type=Path)
    parser.add_argument("--adapter", default="data/adapter", type=Path)
    parser.add_argument("--benchmark-dir", default="data/benchmark", type=Path)
    parser.add_argument("--metrics", default="metrics/eval.json", type=Path)
    parser.add_argument("--predictions", default="data/eval/predictions.jsonl", type=Path)
    parser.add_argument(
        "--niah-plot",
        default="metrics/plots/niah.json",
        type=Path,
        help="NIAH recall per model x subtask x length x depth (heatmap rows)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = load_settings(EvalSettings, "evaluate").resolved()
    report = evaluate(
        args.model,
        args.adapter,
        args.benchmark_dir,
        args.metrics,
        args.predictions,
        settings,
        niah_plot_path=args.niah_plot,
    )
    for variant in ("base", "finetuned"):
        if report[variant] is None:
            print(f"evaluate: {variant}: not scored" + (" (no adapter)" if variant == "finetuned" else ""))
        else:
            print(f"evaluate: {variant}: overall {report[variant]['overall']} {report[variant]['tasks']}")
    if report["delta"] is not None:
        print(f"evaluate: delta overall {report['delta']['overall']:+.2f}")


if __name__ == "__main__":
    sys.exit(main())
