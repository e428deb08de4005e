"""GPU hours and expected interval half-widths of a group at a GPU scale, before anything runs:

    ctxsynth experiments budget main --scale qlora

Per row, from its resolved params and the figures in experiments/budget.yaml (each with its source):

    training     epochs x tokens of the mix (general records x their mean length, long samples x theirs, each cut
                 at finetune.max_tokens) / tokens per second (6 P FLOPs per token at the stated utilization)
    evaluation   one pass of the fine-tuned model (ctxsynth/preflight/eval_cost.py), and one of the base model per
                 group
    synthesis    once per distinct generation of the group (rows that share seeds and generator share the cache):
                 output tokens / the served model's tokens per second; none for the Batch API or released contexts

and per finding, the expected 95% half-width of the difference of two rows' scores (docs/../STATISTICS.md):

    1.96 x sqrt(document_sd^2 / documents + 2 x seed_sd^2 / seeds)

documents being the test documents the score averages over, seeds the training seeds per row. A finding is called
resolvable when the paper's difference is larger than that half-width (for an equivalence claim, when the half-width
is inside its margin): what the budget can show, not what the run will.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import yaml

from ctxsynth.core.io import read_text_utf8
from ctxsynth.core.settings import load_settings
from ctxsynth.preflight.eval_cost import evaluation_hours, test_documents
from ctxsynth.preflight.params import SECTIONS
from ctxsynth.preflight.rows import model_facts, shape_facts, with_overrides

BUDGET = Path("experiments/budget.yaml")
REFERENCE = Path(__file__).with_name("paper_reference.yaml")
CONTEXT_FREE_TOKENS = 400  # an instruction and its answer without any context
NEEDLE_TOKENS = 100  # a needle sample without haystack
ANSWER_TOKENS = 300  # instruction and answer beside the contexts of a long sample
# (finding, first row, second row, the paper's claim): the contrasts each group's budget is judged by. A number is the
# paper's difference (read from paper_reference.yaml when None); "equivalent: m" an equivalence claim within m points.
CONTRASTS = {
    "pilot": [("F1", "sft4-long-haystack", "sft3-short-haystack", "qualitative (NIAH recall)")],
    "main": [
        ("F2", "context-synthesis", "instruction-synthesis", None),
        ("F2", "context-synthesis", "longmit", None),
        ("F5", "context-synthesis", "context-free", "qualitative (a clearly positive gap)"),
    ],
    "main-llama2": [("F2", "context-synthesis", "instruction-synthesis", None)],
    "sharegpt": [("F2", "context-synthesis", "instruction-synthesis", None)],
    "contexts": [("F3", "n10", "n1", None)],
    "generator": [("F4", "gpt-4o-mini", "longwriter-8b", "equivalent: 1")],
}


@cache
def budget_figures(path: Path = BUDGET) -> dict:
    return yaml.safe_load(read_text_utf8(path))


def row_settings(params: dict) -> dict:
    """Every section's settings of a row's resolved params."""
    return {section: load_settings(cls, section, params.get(section) or {}) for section, cls in SECTIONS.items()}


def _records(source: str | None, count: int | None, figures: dict) -> int:
    return count if count is not None else int(figures["records_available"].get(source, 0))


def _seed_count(seed, figures: dict) -> int:
    """Seeds a row synthesizes from: `count` per task (the paper's source with tasks: null holds paper_seed_tasks)."""
    total = 0
    for source in seed.sources:
        if source.tasks:
            tasks = len(source.tasks)
        else:
            tasks = figures["paper_seed_tasks"] if source.type == "paper" else 1
        total += (source.count or 0) * tasks
    return total


def training_tokens(settings: dict, figures: dict) -> tuple[int, int]:
    """(long samples, tokens of one epoch) of a row's mix, each sample cut at finetune.max_tokens."""
    mix, synthesize, finetune = settings["mix"], settings["synthesize"], settings["finetune"]
    cap, per_word = finetune.max_tokens, figures["tokens_per_word"]
    variant = mix.variant
    if variant in ("context_synthesis", "human_context"):
        long_count = _seed_count(settings["seed"], figures)
        long_tokens = min(cap, mix.num_contexts * synthesize.target_words * per_word + ANSWER_TOKENS)
    elif variant in ("context_free", "synthesized_context_free"):
        long_count, long_tokens = _seed_count(settings["seed"], figures), CONTEXT_FREE_TOKENS
    elif variant == "prior_long":
        source = mix.long_source.source
        long_count = _records(source, mix.long_source.count, figures)
        long_tokens = min(cap, figures["tokens_per_record"].get(source, cap))
    elif variant.startswith("niah_"):
        long_count = mix.niah.per_subtask * len(mix.niah.subtasks)
        words = {"niah_short": mix.niah.short_words, "niah_long": mix.niah.long_words}.get(variant, 0)
        long_tokens = min(cap, words * per_word + NEEDLE_TOKENS)
    else:
        long_count, long_tokens = 0, 0
    general = mix.general
    general_count = round(general.ratio * long_count) if general.ratio is not None else None
    general_count = _records(general.source, general.count if general_count is None else general_count, figures)
    general_tokens = min(cap, figures["tokens_per_record"].get(general.source, cap))
    return long_count, int(long_count * long_tokens + general_count * general_tokens)


def served_generation(settings: dict, figures: dict) -> tuple | None:
    """What the row generates on the GPU, behind `vllm serve` (rows with the same value share the generation cache),
    or None when it generates nothing there (no seeds synthesized, the Batch API, released contexts)."""
    synthesize, mix = settings["synthesize"], settings["mix"]
    if mix.variant not in ("context_synthesis", "synthesized_context_free") or synthesize.backend != "openai":
        return None
    return (synthesize.openai.model, synthesize.method, synthesize.target_words, _seed_count(settings["seed"], figures))


@dataclass
class RowBudget:
    name: str
    row: str
    seeds: int
    long_samples: int
    epoch_tokens: int
    train_hours: float
    eval_hours: float
    synthesis: tuple | None
    synthesis_hours: float
    documents: int


def row_budget(name: str, row: str, params: dict, seeds: int, figures: dict) -> RowBudget:
    settings = row_settings(params)
    model, finetune, evaluate = settings["fetch"].model, settings["finetune"], settings["evaluate"]
    facts = shape_facts(model_facts()[model.id])
    long_samples, epoch_tokens = training_tokens(settings, figures)
    epochs = finetune.epochs if finetune.max_steps <= 0 else 1.0
    training = figures["training"]
    rate = training.get("tokens_per_second") or (
        training["peak_flops"] * training["flops_utilization"] / (6 * facts["parameters"])
    )
    tasks = [*evaluate.tasks, *(evaluate.longbench_tasks if evaluate.longbench_dir else [])]
    counted = sum(test_documents(task, evaluate, settings["benchmark"]) for task in tasks)
    key = served_generation(settings, figures)
    output_words = settings["synthesize"].target_words * (key[3] if key else 0)
    return RowBudget(
        name=name,
        row=row,
        seeds=seeds,
        long_samples=long_samples,
        epoch_tokens=epoch_tokens,
        train_hours=epochs * epoch_tokens / rate / 3600,
        eval_hours=evaluation_hours(facts, evaluate, settings["benchmark"], tasks),
        synthesis=key,
        synthesis_hours=output_words
        * figures["tokens_per_word"]
        / figures["generation"]["output_tokens_per_second"]
        / 3600,
        documents=counted,
    )


def half_width(documents: int, seeds: int, document_sd: float, seed_sd: float) -> float:
    return 1.96 * math.sqrt(document_sd**2 / max(documents, 1) + 2 * seed_sd**2 / max(seeds, 1))


def paper_difference(group: str, first: str, second: str) -> float | None:
    reference = yaml.safe_load(REFERENCE.read_text(encoding="utf-8"))
    for table in reference.values():
        if not isinstance(table, dict) or group not in (table.get("groups") or []):
            continue
        column = table["groups"].index(group)
        rows = table["rows"]
        if first in rows and second in rows:
            return round(rows[first][column] - rows[second][column], 2)
    return None


def group_budget(entries: list[dict], params: dict) -> tuple[list[RowBudget], float, float]:
    """Every planned run's budget (`entries`: experiments.planned_entries of a group at a scale), the hours of the base
    model's one evaluation pass, and the group's total hours."""
    seeds: dict[str, int] = {}
    for entry in entries:
        seeds[entry["row"]] = seeds.get(entry["row"], 0) + 1
    figures = budget_figures()
    runs = []
    for entry in entries:
        row_params = with_overrides(params, entry["overrides"])
        runs.append(row_budget(entry["name"], entry["row"], row_params, seeds[entry["row"]], figures))
    base_eval = max((run.eval_hours for run in runs), default=0.0)  # the base model scores the group's widest tests
    synthesis = {run.synthesis: run.synthesis_hours for run in runs if run.synthesis is not None}
    total = sum(run.train_hours + run.eval_hours for run in runs) + base_eval + sum(synthesis.values())
    return runs, base_eval, total


def finding_lines(group: str, runs: list[RowBudget]) -> list[str]:
    """Per contrast of the group: the expected half-width beside the paper's difference, and whether it resolves."""
    variance = budget_figures()["variance"]
    by_row = {run.row: run for run in runs}
    lines = []
    for code, first, second, claim in CONTRASTS.get(group, []):
        if first not in by_row or second not in by_row:
            continue
        run = by_row[first]
        needles = group == "pilot"
        sd = variance["needle_sd"] if needles else variance["document_sd"]
        width = half_width(run.documents, run.seeds, sd, variance["seed_sd"])
        paper = paper_difference(group, first, second) if claim is None else None
        if paper is not None:
            verdict = "resolvable" if abs(paper) > width else "not resolvable"
            said = f"paper {paper:+.2f}"
        elif claim and claim.startswith("equivalent"):
            margin = float(claim.split(":")[1])
            verdict = "resolvable" if width < margin else "not resolvable"
            said = f"paper: within {margin:g} point"
        else:
            verdict, said = "depends on the size of the effect", f"paper: {claim}"
        lines.append(
            f"{code} {first} - {second}: +-{width:.1f} points ({run.documents} test documents, {run.seeds} seed(s) "
            f"per row); {said}: {verdict}"
        )
    return lines


def render_budget(group: str, runs: list[RowBudget], base_eval: float, total: float) -> str:
    header = ("run", "long samples", "tokens/epoch (M)", "train h", "eval h", "synthesis h")
    cells = [
        (
            run.name,
            f"{run.long_samples:,}",
            f"{run.epoch_tokens / 1e6:.1f}",
            f"{run.train_hours:.1f}",
            f"{run.eval_hours:.1f}",
            f"{run.synthesis_hours:.1f}" if run.synthesis else "–",
        )
        for run in runs
    ]
    cells.append(("base model (once)", "", "", "", f"{base_eval:.1f}", ""))
    widths = [max(len(row[i]) for row in [header, *cells]) for i in range(len(header))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *cells]]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    limit = budget_figures()["hours_per_group"]
    lines.append(f"total: {total:.1f} h of one GPU (target {limit} h; synthesis counted once per distinct generation)")
    return "\n".join([*lines, *finding_lines(group, runs)])


def budget_main(entries: list[dict], group: str, params_path: Path) -> int:
    """Print the group's budget; exit 2 when it exceeds the target hours."""
    params = yaml.safe_load(read_text_utf8(params_path))
    runs, base_eval, total = group_budget(entries, params)
    print(render_budget(group, runs, base_eval, total))
    return 2 if total > budget_figures()["hours_per_group"] else 0
