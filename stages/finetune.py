"""DVC stage: fine-tuning of the base model on the training mix (recipe cpu | qlora | paper), answer tokens only."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from ctxsynth.core.chat_encoding import TemplateError
from ctxsynth.core.errors import stage_main
from ctxsynth.core.settings import load_settings
from ctxsynth.finetune.settings import FinetuneSettings, read_accelerate_config
from ctxsynth.finetune.train import train

ROOT = Path(__file__).resolve().parents[1]

ACCELERATE_CONFIGS = ROOT / "configs" / "accelerate"
LAUNCHED = "CTXSYNTH_FINETUNE_LAUNCHED"  # set in the processes `accelerate launch` starts: do not relaunch


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def relaunch_with_accelerate(settings: FinetuneSettings, argv: list[str], source: str) -> int:
    """This script again, under `accelerate launch` with the config `finetune.accelerate_config` names.

    On one machine, the process group gets a free port unless the config names one: accelerate's default, 29500, is
    taken by the first of two rows that run side by side on one node (two Slurm jobs, two queue workers)."""
    config_path, config = read_accelerate_config(settings.accelerate_config, ACCELERATE_CONFIGS, source)
    port = []
    if int(config.get("num_machines") or 1) == 1 and not config.get("main_process_port"):
        port = ["--main_process_port", str(free_port())]
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config_path),
        *port,
        str(Path(__file__).resolve()),
        *argv,
    ]
    print("finetune: " + " ".join(command), file=sys.stderr)
    return subprocess.run(command, env={**os.environ, LAUNCHED: "1"}).returncode


@stage_main(TemplateError)  # FinetuneError is a StageError
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="data/model", help="base model (HF directory)")
    parser.add_argument("--train", default="data/mix/train.jsonl", help="chat-format training samples")
    parser.add_argument(
        "--adapter", default="data/adapter", help="output: a PEFT adapter (LoRA, QLoRA) or a whole model (method: full)"
    )
    parser.add_argument("--metrics", default="metrics/train.json", help="output training summary")
    parser.add_argument("--live-dir", default="metrics/train_live", help="dvclive per-step logs")
    parser.add_argument(
        "--checkpoints",
        default="data/finetune_checkpoints",
        help="resumable checkpoints (a persistent output), one subdirectory per run key",
    )
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = load_settings(FinetuneSettings, "finetune", source=args.params)
    if settings.launcher == "accelerate" and not os.environ.get(LAUNCHED):
        return relaunch_with_accelerate(settings, argv, args.params)
    Path(args.checkpoints).mkdir(parents=True, exist_ok=True)  # DVC expects the persistent output to exist
    summary = train(
        args.model,
        args.train,
        args.adapter,
        args.metrics,
        settings,
        live_dir=args.live_dir,
        checkpoint_dir=args.checkpoints,
    )
    if int(os.environ.get("RANK", 0)) == 0:
        print(
            f"finetune ({settings.recipe}, {settings.method}): {summary['steps']} steps, loss "
            f"{summary['first_loss']:.4f} -> {summary['final_loss']:.4f}, {summary['samples_used']}/"
            f"{summary['samples_total']} samples ({summary['samples_truncated']} truncated, "
            f"{summary['samples_dropped']} dropped), {summary['tokens_per_second']:.0f} tok/s, "
            f"{summary['wall_time_s']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    # SIGTERM (timeout, a cancelled dvc repro) unwinds like Ctrl-C, so temporary directories are removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sys.exit(main())
