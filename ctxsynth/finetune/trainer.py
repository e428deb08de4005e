"""The training loop's pieces around transformers.Trainer: answer-only weighted loss, counters, per-step logs."""

from __future__ import annotations

import logging
import os
import resource
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ctxsynth.core.chat_encoding import IGNORE_INDEX
from ctxsynth.core.errors import StageError
from ctxsynth.core.progress import interactive, stage_progress

log = logging.getLogger(__name__)

# What the collators produce for the model; the rest (labels, loss_weights, counters) is for the loss and the logs.
MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


class FinetuneError(StageError):
    """The run cannot start or finish (missing optional dependency, model problem)."""


def peak_memory_mb() -> float:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class LiveLog:
    """Per-step metrics in dvclive's on-disk layout, <dir>/plots/metrics/<name>.tsv (step, value), for `dvc plots`.

    dvclive.Live is not used to write them: on start it opens the enclosing DVC/git repository, raises SCMError in a
    repository without commits (this one, until the first commit) and runs `dvc init` in a git repository without
    .dvc. Its metrics.json summary is not written either: the stage's summary is the metrics file.
    """

    def __init__(self, directory: os.PathLike | str):
        self.plots = Path(directory) / "plots" / "metrics"
        shutil.rmtree(self.plots, ignore_errors=True)  # a fresh run, as dvclive does without resume
        self.plots.mkdir(parents=True)

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            path = self.plots / f"{name}.tsv"
            header = "" if path.exists() else f"step\t{name}\n"
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"{header}{step}\t{value!r}\n")


def answer_only_loss(model, inputs: Mapping[str, Any], num_items_in_batch=None, logits_only: bool = True):
    """(loss, outputs): weighted cross-entropy on the answer tokens.

    loss = sum(weight x cross-entropy) / num_items_in_batch (the weights summed over the accumulated batch), or / the
    weights' sum here. With unit weights (`token`) that is the model's own loss on `labels`; `sample` weights make
    it the mean over samples of each sample's mean answer loss (LongAlign). With `logits_only` the (tokens x
    vocabulary) projection, the largest single activation of a long sample, is computed at the answer positions
    only: about a fifth of the compute of SmolLM2-135M at 600 tokens, gigabytes at 32K tokens and a 128K vocabulary.
    """
    import torch

    labels = inputs["labels"]
    weights = inputs.get("loss_weights")
    if weights is None:
        weights = (labels != IGNORE_INDEX).float()
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX  # position t predicts token t + 1
    targets = labels[:, 1:][keep[:, :-1]]
    target_weights = weights[:, 1:][keep[:, :-1]].float()
    # No cache: with one, transformers ignores packed position ids and lets samples attend to each other
    model_inputs = {key: value for key, value in inputs.items() if key in MODEL_INPUTS} | {"use_cache": False}
    if logits_only:
        outputs = model(**model_inputs, logits_to_keep=keep)
        logits = outputs.logits.float().reshape(-1, outputs.logits.shape[-1])
        if logits.shape[0] != targets.shape[0]:
            raise FinetuneError(
                f"{type(model).__name__} ignored logits_to_keep (got {logits.shape[0]} positions for "
                f"{targets.shape[0]} answer tokens): set finetune.answer_logits_only: false"
            )
    else:
        outputs = model(**model_inputs)
        logits = outputs.logits.float()[keep]
    losses = torch.nn.functional.cross_entropy(logits, targets, reduction="none")
    total = (losses * target_weights).sum()
    if num_items_in_batch is None:
        num_items_in_batch = target_weights.sum() if target_weights.sum() > 0 else 1.0
    return total / num_items_in_batch, outputs


def make_trainer_classes():
    import torch
    from transformers import Trainer, TrainerCallback

    class CountingTrainer(Trainer):
        """Weighted answer-only loss, normalised over the whole accumulated (and gathered) batch; counts samples."""

        target_tokens = 0
        samples_seen = 0
        answer_logits_only = True
        loss_is_scaled_for_ga = True  # compute_loss divides by the accumulated batch's total weight itself

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

    class StepLogger(TrainerCallback):
        """Per logged step: loss, learning rate, tokens/s, peak memory to the live log; always logs the last step."""

        def __init__(self, live=None):
            self.live, self.history = live, []
            self._time = self._tokens = None
            self.progress = self._task = None

        def on_train_begin(self, args, state, control, **kwargs):
            self._time, self._tokens = time.perf_counter(), state.num_input_tokens_seen
            if state.is_world_process_zero and interactive():
                self.progress = stage_progress()
                self.progress.start()
                self._task = self.progress.add_task(
                    "finetune", total=state.max_steps, completed=state.global_step, stats=""
                )

        def on_train_end(self, args, state, control, **kwargs):
            if self.progress is not None:
                self.progress.stop()
                self.progress = None

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= state.max_steps:
                control.should_log = True
            if self.progress is not None:  # the bar moves every step; loss and speed change when logged
                self.progress.update(self._task, completed=state.global_step)
            return control

        def on_log(self, args, state, control, logs=None, **kwargs):
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
            if self.progress is not None:
                stats = f"loss {row['loss']:.4f}  lr {row['learning_rate']:.2e}  {speed:,.0f} tok/s"
                self.progress.update(self._task, completed=state.global_step, stats=stats)
            elif state.is_world_process_zero:  # one line per step, not one per rank
                log.info(
                    "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                    state.global_step,
                    state.max_steps,
                    row["loss"],
                    row["learning_rate"],
                    speed,
                )
            if self.live is not None and state.is_world_process_zero:
                self.live.log(state.global_step, {key: value for key, value in row.items() if key != "step"})

    return CountingTrainer, StepLogger
