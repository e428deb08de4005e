"""What a checkpoint keeps beside the Trainer's own state so that a resumed fine-tune reports the whole run.

transformers' Trainer restores the weights, the optimizer, the schedule, the RNG state, the step and the input
tokens seen from a checkpoint, not what the run reports: the rows logged so far (loss, learning rate, grad norm,
tokens/s, peak memory), the samples and answer tokens counted, and the loss sums the mean loss and the next logged
loss are taken from. Each checkpoint keeps them in run_record.json, written (atomically) before the checkpoint's
trainer_state.json, so every checkpoint a run resumes from has one. Rows logged after the checkpoint by the process
that was killed are not in it: the resumed run computes those steps again and logs them once.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ctxsynth.core.io import InputError, read_json, write_json

RECORD_NAME = "run_record.json"
RECORD_VERSION = 1


@dataclass
class RunRecord:
    """A run's reporting state at a checkpoint (global step `step`)."""

    step: int
    rows: list[dict[str, float]]  # the logged rows up to `step`, as StepLogger.history holds them
    samples_seen: int
    target_tokens: int
    total_loss: float  # the logged steps' summed losses (Trainer._total_loss_scalar)
    pending_loss: float  # the summed losses since the last logged step, averaged over processes (Trainer._tr_loss)
    last_logged_step: int

    def save(self, checkpoint: os.PathLike | str) -> None:
        write_json(Path(checkpoint) / RECORD_NAME, {"version": RECORD_VERSION, **asdict(self)})

    @classmethod
    def load(cls, checkpoint: os.PathLike | str) -> RunRecord | None:
        """The record of a checkpoint directory (checkpoint-<step>); None where it has none (an older version's)."""
        path = Path(checkpoint) / RECORD_NAME
        if not path.is_file():
            return None
        data = read_json(path)
        names = [field.name for field in fields(cls)]
        if not isinstance(data, dict) or data.get("version") != RECORD_VERSION or not set(names) <= set(data):
            raise InputError(path, f"not a version {RECORD_VERSION} run record (expected keys {', '.join(names)})")
        record = cls(**{name: data[name] for name in names})
        if f"checkpoint-{record.step}" != path.parent.name:
            raise InputError(path, f"the record of step {record.step} is in {path.parent.name}")
        return record
