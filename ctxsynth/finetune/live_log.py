"""The per-step log files (dvclive's layout, for `dvc plots`) and the peak memory that goes into them."""

from __future__ import annotations

import os
import resource
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path


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
        # A fresh log: a resumed run replays the rows its checkpoint recorded, so rows a killed run logged after
        # that checkpoint (the resumed run computes those steps again) are not written twice.
        shutil.rmtree(self.plots, ignore_errors=True)
        self.plots.mkdir(parents=True, exist_ok=True)

    def replay(self, rows: Iterable[Mapping[str, float]]) -> None:
        """Rows logged before, each {"step": step, name: value, ...}, written as `log` wrote them."""
        for row in rows:
            self.log(int(row["step"]), {name: value for name, value in row.items() if name != "step"})

    def log(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            path = self.plots / f"{name}.tsv"
            header = "" if path.exists() else f"step\t{name}\n"
            with path.open("a", encoding="utf-8") as handle:
                handle.write(f"{header}{step}\t{value!r}\n")
