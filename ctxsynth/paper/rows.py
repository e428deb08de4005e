"""The report's rows: one per plan row, its experiments one per training seed, with their per-document scores."""

from __future__ import annotations

from ctxsynth.paper import stats


def niah_cell(document: str) -> tuple[int, float] | None:
    """(haystack length, needle depth) of a NIAH test document, from its id `<task>:<length>:<depth>:<index>`
    (ctxsynth/prepare/benchmark.py); None for other documents."""
    parts = str(document).split(":")
    if len(parts) != 4 or not parts[0].startswith("niah_"):
        return None
    try:
        return int(parts[1]), float(parts[2])
    except ValueError:
        return None


def mean_of(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def per_document(run: dict) -> dict | None:
    """An experiment's per-document scores: as collected, or, for a NIAH-only row collected without them, its
    heatmap cells when each cell is one test sample (the collected sample count per subtask equals the number of
    cells), under the benchmark's document ids; otherwise None."""
    if run.get("per_document"):
        return run["per_document"]
    counts = run.get("test_documents") or {}
    tasks = set((((run.get("eval") or {}).get("finetuned")) or {}).get("tasks") or {})
    scores: dict[str, dict[str, dict[str, float]]] = {}
    for cell in run.get("niah") or []:
        task = f"niah_{cell['subtask']}"
        document = f"{task}:{int(cell['length'])}:{float(cell['depth'])}:0"
        scores.setdefault(cell["model"], {}).setdefault(task, {})[document] = float(cell["recall"])
    finetuned = scores.get("finetuned") or {}
    if not finetuned or set(finetuned) != tasks or any(counts.get(t) != len(d) for t, d in finetuned.items()):
        return None
    return scores


class Row:
    """A row of the plan: its collected experiments, one per training seed (one when the row has no seeds)."""

    def __init__(self, name: str, runs: list[dict]):
        self.name = name
        self.runs = sorted(runs, key=lambda run: (run.get("seed") is not None, run.get("seed") or 0))

    @property
    def seeds(self) -> int:
        return len(self.runs)

    def score(self, model: str = "finetuned", task: str | None = None) -> float | None:
        """The mean over seeds of the collected score (overall, or one task's)."""
        values = []
        for run in self.runs:
            block = (run.get("eval") or {}).get(model) or {}
            values.append(block.get("overall") if task is None else (block.get("tasks") or {}).get(task))
        return None if any(v is None for v in values) else mean_of(values)

    def tasks(self, model: str = "finetuned") -> list[str]:
        return sorted({t for run in self.runs for t in (((run.get("eval") or {}).get(model) or {}).get("tasks") or {})})

    def seed_range(self, model: str = "finetuned") -> tuple[float, float] | None:
        values = [((run.get("eval") or {}).get(model) or {}).get("overall") for run in self.runs]
        return None if None in values or len(values) < 2 else (min(values), max(values))

    @property
    def has_documents(self) -> bool:
        return all(per_document(run) for run in self.runs)

    def documents(self, model: str = "finetuned", by_length: bool = False) -> list[stats.Run] | None:
        """Per seed: {task: {document: score}} (by_length: NIAH strata `<task>@<length>`); None without them."""
        if not self.has_documents:
            return None
        runs = []
        for run in self.runs:
            tasks = (per_document(run).get(model)) or {}
            if not by_length:
                runs.append(tasks)
                continue
            split: dict[str, dict[str, float]] = {}
            for task, documents in tasks.items():
                for document, value in documents.items():
                    cell = niah_cell(document)
                    if cell is not None:
                        split.setdefault(f"{task}@{cell[0]}", {})[document] = value
            runs.append(split)
        return runs

    def test_documents(self) -> int | None:
        counts = self.runs[0].get("test_documents") or {}
        return sum(counts.values()) or None

    def niah(self, model: str) -> list[dict]:
        """The NIAH heatmap cells, recall averaged over seeds."""
        cells: dict[tuple, list[float]] = {}
        for run in self.runs:
            for cell in run.get("niah") or []:
                if cell["model"] == model:
                    key = (cell["subtask"], cell["length"], cell["depth"])
                    cells.setdefault(key, []).append(float(cell["recall"]))
        return [
            {"model": model, "subtask": s, "length": n, "depth": d, "recall": mean_of(v)}
            for (s, n, d), v in sorted(cells.items())
        ]

    def cells_per_subtask(self, model: str = "finetuned") -> int:
        cells = self.niah(model)
        return len(cells) // max(1, len({cell["subtask"] for cell in cells}))

    def cell_counts(self, model: str) -> dict[tuple[str, int, float], int] | None:
        """Test samples per NIAH heatmap cell (per seed), from the per-document scores; None without them."""
        if not self.has_documents:
            return None
        counts: dict[tuple[str, int, float], int] = {}
        for task, documents in ((per_document(self.runs[0]).get(model)) or {}).items():
            for document in documents:
                cell = niah_cell(document)
                if cell is not None:
                    key = (task[len("niah_") :], cell[0], cell[1])
                    counts[key] = counts.get(key, 0) + 1
        return counts

    def field(self, section: str, key: str) -> str | None:
        values = sorted({(run.get(section) or {}).get(key) for run in self.runs}, key=str)
        if None in values:
            return None
        return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def rows_of(results: dict, group: str, scale: str = "cpu") -> dict[str, Row]:
    """Row name -> Row (its experiments across seeds), in the plan's order."""
    found = [e for e in results["experiments"].values() if e["group"] == group and e["scale"] == scale and e["eval"]]
    grouped: dict[str, list[dict]] = {}
    for experiment in sorted(found, key=lambda e: e.get("order", 0)):
        grouped.setdefault(experiment["row"], []).append(experiment)
    return {name: Row(name, runs) for name, runs in grouped.items()}
