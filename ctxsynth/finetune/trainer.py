"""The training loop's pieces that subclass transformers: the Trainer with the answer-only weighted loss and the
counters (kept in each checkpoint's run record, put back on resume), the per-step logger, the early stop.

Importing transformers' Trainer takes seconds, so train.py imports this module when a run starts, not when it is
itself imported (the finetune stage reads its settings, and may relaunch under accelerate, before that).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Any

import torch
from rich.progress import Progress, TaskID
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_pt_utils import nested_gather
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ctxsynth.core.chat_encoding import IGNORE_INDEX
from ctxsynth.core.progress import interactive, stage_progress
from ctxsynth.finetune.errors import FinetuneError
from ctxsynth.finetune.live_log import LiveLog, peak_memory_mb
from ctxsynth.finetune.loss import answer_only_loss
from ctxsynth.finetune.run_record import RunRecord

log = logging.getLogger(__name__)


class CountingTrainer(Trainer):
    """Weighted answer-only loss, normalised over the whole accumulated (and gathered) batch; counts samples.

    Each checkpoint gets a run record (run_record.py) beside the Trainer's own state: the logged rows, the counters
    and the loss sums, which `restore` puts back when a resumed run starts.
    """

    target_tokens = 0
    samples_seen = 0
    answer_logits_only = True
    loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated batch's total weight itself
    logged_rows: list[dict[str, float]] | None = None  # the step logger's history, kept in each checkpoint
    restored = False  # whether a checkpoint's run record was put back (restore)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.target_tokens += int((inputs["labels"] != IGNORE_INDEX).sum())
            self.samples_seen += int(inputs["num_samples"])
        loss, outputs = answer_only_loss(model, inputs, num_items_in_batch, logits_only=self.answer_logits_only)
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # DDP averages gradients; the divisor is global
        return (loss, outputs) if return_outputs else loss

    def _get_num_items_in_batch(self, batch_samples, device):
        if not batch_samples:
            return None
        total = sum(batch["loss_weights"][..., 1:].sum() for batch in batch_samples).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            total = self.accelerator.gather(total).sum()
        return total

    def _track_num_input_tokens(self, inputs):
        tokens = torch.as_tensor(inputs["real_tokens"], device=self.args.device, dtype=torch.int64)
        self.state.num_input_tokens_seen += int(self.accelerator.gather(tokens).sum().item())

    def _save_checkpoint(self, model, trial):
        # The record first: a checkpoint with a trainer_state.json (written last) always has its record.
        record = self.run_record()
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            record.save(os.path.join(self._get_output_dir(trial=trial), folder))
        super()._save_checkpoint(model, trial)

    def run_record(self) -> RunRecord:
        """What the run reports, as of now (every process calls this: the pending loss is gathered)."""
        pending = float(nested_gather(self._tr_loss, self.args.parallel_mode).mean().item())
        return RunRecord(
            step=int(self.state.global_step),
            rows=list(self.logged_rows or []),
            samples_seen=self.samples_seen,
            target_tokens=self.target_tokens,
            total_loss=float(self._total_loss_scalar),
            pending_loss=pending,
            last_logged_step=int(self._globalstep_last_logged),
        )

    def restore(self, record: RunRecord) -> None:
        """Put back a checkpoint's counters and loss sums, once Trainer has reset its own as training begins.

        The pending loss goes to every process: the mean over processes of (mean + own) is mean + mean(own), so the
        next logged loss averages the same steps with the same values as the uninterrupted run.
        """
        self.samples_seen, self.target_tokens = record.samples_seen, record.target_tokens
        self._total_loss_scalar = record.total_loss
        self._tr_loss.fill_(record.pending_loss)
        self._globalstep_last_logged = record.last_logged_step
        self.restored = True

    def mean_loss(self, training_loss: float) -> float:
        """The mean per-step loss of the run. Trainer's `training_loss` averages the steps of this train() call only;
        after `restore` its loss sum holds every step's, the resumed checkpoint's included."""
        if not self.restored:
            return float(training_loss)
        return self._total_loss_scalar / max(self.state.global_step, 0.001)


class RestoreRun(TrainerCallback):
    """Hands a resumed run its checkpoint's record when training begins (Trainer resets the loss sums just before)."""

    def __init__(self, trainer: CountingTrainer, record: RunRecord):
        self.trainer, self.record = trainer, record

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.global_step != self.record.step:
            raise FinetuneError(f"resumed at step {state.global_step} with the run record of step {self.record.step}")
        self.trainer.restore(self.record)


class StepLogger(TrainerCallback):
    """Per logged step: loss, learning rate, tokens/s, peak memory to the live log; always logs the last step.

    A resumed run starts from the rows its checkpoint recorded (`history`) and writes them to the live log first.
    """

    def __init__(self, live: LiveLog | None = None, history: Iterable[dict[str, float]] = ()):
        self.live = live
        self.history: list[dict[str, float]] = list(history)
        self._time = 0.0  # when the last logged step ended (set when training begins)
        self._tokens = 0  # the input tokens seen by then
        self.start_step, self.start_tokens = 0, 0  # where this call of train() began (a resumed run: > 0)
        self.progress: Progress | None = None
        self._task: TaskID | None = None

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self._time, self._tokens = time.perf_counter(), state.num_input_tokens_seen
        self.start_step, self.start_tokens = state.global_step, state.num_input_tokens_seen
        if self.live is not None and state.is_world_process_zero:
            self.live.replay(self.history)
        if state.is_world_process_zero and interactive():
            self.progress = stage_progress()
            self.progress.start()
            self._task = self.progress.add_task(
                "finetune", total=state.max_steps, completed=state.global_step, stats=""
            )

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if state.global_step >= state.max_steps:
            control.should_log = True
        if self.progress is not None and self._task is not None:  # the bar moves every step; the stats when logged
            self.progress.update(self._task, completed=state.global_step)
        return control

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ):
        if not logs or "loss" not in logs:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        speed = (tokens - self._tokens) / max(now - self._time, 1e-9)
        self._time, self._tokens = now, tokens
        row = {
            "step": state.global_step,
            "loss": float(logs["loss"]),
            "learning_rate": float(logs.get("learning_rate", 0.0)),
            "tokens_per_second": speed,
            "peak_memory_mb": peak_memory_mb(),
        }
        if "grad_norm" in logs:
            row["grad_norm"] = float(logs["grad_norm"])
        self.history.append(row)
        self.report(state, row)
        if self.live is not None and state.is_world_process_zero:
            self.live.log(state.global_step, {key: value for key, value in row.items() if key != "step"})

    def report(self, state: TrainerState, row: dict[str, float]) -> None:
        """The logged step on the progress bar, or as one log line per step (from rank 0 only, not one per rank)."""
        if self.progress is not None and self._task is not None:
            stats = f"loss {row['loss']:.4f}  lr {row['learning_rate']:.2e}  {row['tokens_per_second']:,.0f} tok/s"
            self.progress.update(self._task, completed=state.global_step, stats=stats)
        elif state.is_world_process_zero:
            log.info(
                "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                state.global_step,
                state.max_steps,
                row["loss"],
                row["learning_rate"],
                row["tokens_per_second"],
            )


class StopEarly(TrainerCallback):
    """Ends the run after `steps` steps without writing its outputs, as a kill would (for tests)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        control.should_training_stop = state.global_step >= self.steps
        return control
