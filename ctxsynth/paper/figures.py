"""The report's figures as PNG files (matplotlib, no network: DVC's own HTML plots load vega from a CDN)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SUBTASK_ORDER = ("single", "multikey", "multiquery", "multivalue")
OVERALL = "overall"


def niah_heatmaps(
    cells: list[dict], model: str, title: str, out: Path, counts: dict[tuple[str, int, float], int] | None = None
) -> Path | None:
    """One panel per subtask: recall x100 per haystack length (rows) x needle depth (columns), the paper's Figure 2.
    counts: test samples per (subtask, length, depth) cell, written under each value (None: not collected)."""
    rows = [c for c in cells if c["model"] == model]
    subtasks = [s for s in SUBTASK_ORDER if any(c["subtask"] == s for c in rows)]
    if not subtasks:
        return None
    lengths = sorted({c["length"] for c in rows})
    depths = sorted({c["depth"] for c in rows})
    figure, axes = plt.subplots(
        1, len(subtasks), figsize=(3.2 * len(subtasks), 2.2 + 0.35 * len(lengths)), squeeze=False
    )
    for axis, subtask in zip(axes[0], subtasks):
        grid = [[float("nan")] * len(depths) for _ in lengths]
        for cell in rows:
            if cell["subtask"] == subtask:
                grid[lengths.index(cell["length"])][depths.index(cell["depth"])] = cell["recall"]
        image = axis.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        for i, row in enumerate(grid):
            for j, value in enumerate(row):
                if value == value:  # not NaN
                    n = (counts or {}).get((subtask, lengths[i], depths[j]))
                    label = f"{value:.0f}" if counts is None else f"{value:.0f}\nn={n if n is not None else 0}"
                    axis.text(j, i, label, ha="center", va="center", fontsize=8 if counts is None else 7)
        axis.set_xticks(range(len(depths)), [f"{d:g}" for d in depths])
        axis.set_yticks(range(len(lengths)), [str(n) for n in lengths] if axis is axes[0][0] else [])
        axis.set_xlabel("needle depth")
        axis.set_title(subtask)
    axes[0][0].set_ylabel("haystack words")
    figure.colorbar(image, ax=axes[0].tolist(), shrink=0.8, label="recall")
    figure.suptitle(title + ("" if counts is not None else " (samples per cell not collected)"), fontsize=10, y=1.02)
    return _save(figure, out)


def length_histogram(rows: list[dict], out: Path) -> Path | None:
    """Share of contexts per length bin: synthesized against evaluation contexts (the paper's Figure 5)."""
    if not rows:
        return None
    words = [r["words"] for r in rows]
    width = (words[1] - words[0]) * 0.4 if len(words) > 1 else 40
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.bar([w - width / 2 for w in words], [r["synthesized"] for r in rows], width, label="synthesized contexts")
    axis.bar([w + width / 2 for w in words], [r["evaluation"] for r in rows], width, label="evaluation contexts")
    axis.set_xlabel("context length (words, bin start)")
    axis.set_ylabel("share of contexts")
    axis.legend()
    return _save(figure, out)


def task_bars(
    series: dict[str, dict[str, float]],
    title: str,
    out: Path,
    errors: dict[str, dict[str, tuple[float, float]]] | None = None,
) -> Path | None:
    """Grouped bars: one group per task (an `overall` entry last), one bar per experiment (score x100); errors:
    experiment -> task -> (low, high) of the 95% interval, drawn as error bars (none where not collected)."""
    tasks = sorted({task for scores in series.values() for task in scores if task != OVERALL})
    if any(OVERALL in scores for scores in series.values()):
        tasks.append(OVERALL)
    if not tasks:
        return None
    width = 0.8 / max(len(series), 1)
    figure, axis = plt.subplots(figsize=(max(6, 1.6 * len(tasks) * max(1, len(series) / 3)), 3.4))
    for index, (name, scores) in enumerate(series.items()):
        values = [scores.get(task, 0.0) for task in tasks]
        bounds = (errors or {}).get(name) or {}
        below = [max(0.0, v - bounds[t][0]) if t in bounds else 0.0 for t, v in zip(tasks, values)]
        above = [max(0.0, bounds[t][1] - v) if t in bounds else 0.0 for t, v in zip(tasks, values)]
        axis.bar(
            [t + index * width for t in range(len(tasks))],
            values,
            width,
            label=name,
            yerr=[below, above] if bounds else None,
            capsize=2 if bounds else 0,
            error_kw={"elinewidth": 0.8},
        )
    axis.set_xticks([t + width * (len(series) - 1) / 2 for t in range(len(tasks))], tasks)
    axis.set_ylabel("score" + (" (bars: 95% interval)" if errors else ""))
    axis.set_title(title, fontsize=10)
    # Beside the axes, not over them: with seven experiments an in-axes legend hides the tallest bars.
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    return _save(figure, out)


def _save(figure, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fixed creation date and no software tag keep the PNG bytes stable from run to run.
    figure.savefig(out, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    return out
