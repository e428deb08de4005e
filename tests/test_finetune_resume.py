"""A fine-tune killed with SIGKILL after a checkpoint and run again reports the whole run (issue 26, item 4).

Before, the resumed run's metrics/train.json (first_loss, mean_loss, samples_seen, target_tokens) and its loss.tsv
covered only the steps after the checkpoint: the live log was wiped on start and the summary came from the resumed
segment. Now each checkpoint keeps a run record (ctxsynth/finetune/run_record.py) that the resumed run starts from.

Compared with an uninterrupted run of the same settings: every field of metrics/train.json except the timings and
resumed_from_step, and every row of loss.tsv, learning_rate.tsv and grad_norm.tsv. The timing files
(tokens_per_second.tsv, peak_memory_mb.tsv) are compared on their steps only: their values are measured, not computed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import chat, write_jsonl

from ctxsynth.finetune.run_record import RECORD_NAME, RunRecord
from ctxsynth.finetune.train import _last_checkpoint

ROOT = Path(__file__).resolve().parents[1]
MAX_STEPS, SAVE_STEPS, LOGGING_STEPS = 12, 5, 2  # a checkpoint (5) between two logged steps (4, 6): a pending loss
PARAMS = f"""finetune:
  max_steps: {MAX_STEPS}
  save_steps: {SAVE_STEPS}
  logging_steps: {LOGGING_STEPS}
  batch_size: 2
  grad_accum: 1
  lora_r: 4
  lora_alpha: 8
  learning_rate: 0.005
  lr_scheduler: linear
  max_tokens: 512
  seed: 7
"""
# Measured, not computed: a resumed run's are its own process's (this segment's speed, this process's peak memory).
TIMINGS = {"wall_time_s", "train_time_s", "tokens_per_second", "seconds_per_step", "peak_rss_mb", "peak_cuda_mb"}
COMPUTED_PLOTS = ("loss", "learning_rate", "grad_norm")
MEASURED_PLOTS = ("tokens_per_second", "peak_memory_mb")


def _stage_main():
    spec = importlib.util.spec_from_file_location("finetune_stage", ROOT / "stages" / "finetune.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _argv(root: Path, model: Path, train_path: Path, params: Path) -> list[str]:
    return [
        *("--model", str(model), "--train", str(train_path), "--params", str(params)),
        *("--adapter", str(root / "adapter"), "--metrics", str(root / "train.json")),
        *("--live-dir", str(root / "live"), "--checkpoints", str(root / "checkpoints")),
    ]


def _plot(root: Path, name: str) -> list[tuple[int, str]]:
    """(step, value as written) per complete row of a live log file."""
    path = root / "live" / "plots" / "metrics" / f"{name}.tsv"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = text.split("\n")[1:-1]  # the header; a row being written has no newline yet
    return [(int(step), value) for step, value in (line.split("\t") for line in lines)]


def _killable_state(root: Path) -> tuple[int, list[int]] | None:
    """(the checkpoint a rerun would resume from, the steps logged) once steps are logged past a complete checkpoint
    and no newer checkpoint is being written; else None."""
    runs = list((root / "checkpoints").glob("*"))
    if len(runs) != 1 or (root / "adapter").exists():
        return None
    last = _last_checkpoint(runs[0])
    steps = [step for step, _ in _plot(root, "loss")]
    if last is None or len(list(runs[0].glob("checkpoint-*"))) != 1:
        return None
    checkpoint = int(Path(last).name.split("-")[-1])
    return (checkpoint, steps) if steps and steps[-1] > checkpoint else None


def _kill_after_a_checkpoint(process: subprocess.Popen, root: Path, log: Path) -> tuple[int, list[int]]:
    """SIGKILL the run once it has logged steps past a checkpoint; the state it died in. SIGSTOP first, so the
    state seen is the state it dies in."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
        if _killable_state(root) is not None:
            os.kill(process.pid, signal.SIGSTOP)
            state = _killable_state(root)
            if state is not None:
                os.kill(process.pid, signal.SIGKILL)
                process.wait()
                return state
            os.kill(process.pid, signal.SIGCONT)
        time.sleep(0.002)
    process.kill()
    pytest.fail("no checkpoint with steps logged past it within 120 s")


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`", "ignore:Setting `save_embedding_layers`")
def test_a_killed_and_resumed_run_reports_the_whole_run(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the three runs in one place, outside the repository's dvc.yaml
    rows = [
        {"id": f"s{i}", "task": "qa", "messages": chat(f"Question {i}: " + "why? " * (20 + 7 * i), "Answer " * (2 + i))}
        for i in range(24)
    ]
    train_path = write_jsonl(tmp_path / "train.jsonl", rows)
    params = tmp_path / "params.yaml"
    params.write_text(PARAMS, encoding="utf-8")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    main = _stage_main()
    assert main(_argv(straight, tiny_model_dir, train_path, params)) == 0

    log = tmp_path / "killed.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONHASHSEED": "0"}
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "stages" / "finetune.py"), *_argv(resumed, tiny_model_dir, train_path, params)],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
        checkpoint, logged = _kill_after_a_checkpoint(process, resumed, log)
    assert not (resumed / "adapter").exists() and not (resumed / "train.json").exists()  # killed, unfinished
    (run_dir,) = (resumed / "checkpoints").iterdir()
    record = RunRecord.load(run_dir / f"checkpoint-{checkpoint}")
    assert record is not None and [row["step"] for row in record.rows] == [s for s in logged if s <= checkpoint]
    assert logged[-1] > checkpoint  # steps logged after the checkpoint: the rerun computes them again

    assert main(_argv(resumed, tiny_model_dir, train_path, params)) == 0
    assert list((resumed / "checkpoints").iterdir()) == []
    expected, got = (json.loads((root / "train.json").read_text()) for root in (straight, resumed))
    assert (expected.pop("resumed_from_step"), got.pop("resumed_from_step")) == (0, checkpoint)
    assert expected.keys() == got.keys() and TIMINGS <= got.keys()
    assert {key: got[key] for key in got.keys() - TIMINGS} == {key: expected[key] for key in expected.keys() - TIMINGS}
    assert got["steps"] == MAX_STEPS and got["samples_seen"] == 2 * MAX_STEPS  # not the resumed segment's counts

    logged_steps = [*range(LOGGING_STEPS, MAX_STEPS + 1, LOGGING_STEPS)]
    for name in COMPUTED_PLOTS:
        assert _plot(resumed, name) == _plot(straight, name), name
        assert [step for step, _ in _plot(resumed, name)] == logged_steps, name  # each step once
    for name in MEASURED_PLOTS:
        assert [step for step, _ in _plot(resumed, name)] == logged_steps, name
    assert sorted(p.name for p in (resumed / "live" / "plots" / "metrics").iterdir()) == sorted(
        f"{name}.tsv" for name in COMPUTED_PLOTS + MEASURED_PLOTS
    )


def test_a_checkpoint_cut_short_while_written_is_not_resumed(tmp_path):
    run_dir = tmp_path / "run"
    for step, complete in ((5, True), (10, False), (15, False)):
        (run_dir / f"checkpoint-{step}").mkdir(parents=True)
        (run_dir / f"checkpoint-{step}" / RECORD_NAME).write_text("{}", encoding="utf-8")
        if complete:  # trainer_state.json is the last file a checkpoint gets
            (run_dir / f"checkpoint-{step}" / "trainer_state.json").write_text("{}", encoding="utf-8")
    (run_dir / "checkpoint-x").mkdir()
    assert _last_checkpoint(run_dir) == str(run_dir / "checkpoint-5")
    assert _last_checkpoint(tmp_path / "none") is None
