"""The mix stage as one call: the long samples `mix.variant` names (from the seeds, the synthesized records, the
training needles or a prior long SFT dataset) plus the general data `mix.general` names, and the stage's metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ctxsynth.core.chat import apply_chat_template_choice
from ctxsynth.core.chat_encoding import TemplateError, end_of_turn_ids, model_generation_config
from ctxsynth.core.io import InputError, read_json, read_jsonl
from ctxsynth.core.tasks import templates_version
from ctxsynth.mix.assemble import apply_filter, assemble, length_stats, pool_for_variant, require_filter_scores
from ctxsynth.mix.general_source import load_general, require_general_source
from ctxsynth.mix.long_sft import load_long_sft, require_long_source
from ctxsynth.mix.niah_training import niah_training_samples
from ctxsynth.mix.settings import GENERAL_ONLY, NIAH_VARIANTS, PRIOR_LONG, MixSettings
from ctxsynth.prepare.seeds import read_seed_dir


def long_samples(
    settings: MixSettings, *, raw_dir: Path, reserved_path: Path, seeds_dir: Path, contexts_path: Path
) -> tuple[list[dict], dict]:
    """The variant's long samples and what they were built from."""
    variant = settings.variant
    if variant == GENERAL_ONLY:
        return [], {}
    if variant in NIAH_VARIANTS:
        essays = read_json(Path(raw_dir) / "PaulGrahamEssays.json")["text"]
        reserved_keys = read_json(reserved_path).get("niah_keys", [])
        samples = niah_training_samples(essays, reserved_keys, variant, settings.niah, settings.seed)
        return samples, {"niah": dataclasses.asdict(settings.niah), "reserved_test_keys": len(reserved_keys)}
    if variant == PRIOR_LONG:  # the dataset's own documents and answers: no seeds, no synthesized contexts
        samples, report = load_long_sft(settings.long_source, settings.seed)
        return samples, {"long_source": report}
    seeds = read_seed_dir(seeds_dir)
    synthesized = read_jsonl(contexts_path, required=("id", "task", "parse_status"))
    pool = pool_for_variant(variant, seeds, synthesized)
    filter_report: dict[str, dict[str, int]] = {}
    if variant == "context_synthesis" and settings.filter.active:
        require_filter_scores(pool, settings.filter, contexts_path)
        pool, filter_report = apply_filter(pool, settings.filter)
    if not pool:
        raise InputError(
            "params.yaml",
            f"no records usable for variant {variant!r} (seeds in {seeds_dir}, contexts in {contexts_path})",
            field="mix.variant",
        )
    samples = assemble(pool, variant, settings.num_contexts, settings.seed, settings.summarization_distractors)
    return samples, {"records_available": len(pool), "records_total": len(seeds), "filter": filter_report}


def build_mix(
    settings: MixSettings, *, raw_dir: Path, reserved_path: Path, seeds_dir: Path, contexts_path: Path
) -> tuple[list[dict], list[dict], dict]:
    """(long samples, general samples, report); the training file is the long samples followed by the general."""
    require_general_source(settings.general)  # a file it names is checked before anything is read
    if settings.variant == PRIOR_LONG:
        require_long_source(settings.long_source)
    samples, report = long_samples(
        settings, raw_dir=raw_dir, reserved_path=reserved_path, seeds_dir=seeds_dir, contexts_path=contexts_path
    )
    general, general_report = load_general(settings.general, len(samples), settings.seed)
    if not samples and not general:
        raise InputError(
            "params.yaml",
            f"nothing to train on: mix.variant is {settings.variant!r} and mix.general.source is null "
            "(name a general SFT file, e.g. data/general/train.jsonl)",
            field="mix.general.source",
        )
    return samples, general, {"general": general_report, **report}


def mix_metrics(
    settings: MixSettings,
    samples: list[dict],
    general: list[dict],
    report: dict,
    model_dir: Path,
    chat_template: str,
) -> dict:
    """metrics/mix.json: token lengths in the chat format fine-tuning will use (`finetune.chat_template`: a base model
    has none of its own), the variant and what the samples came from."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    chat_format = apply_chat_template_choice(tokenizer, chat_template, "finetune.chat_template")
    end_ids = end_of_turn_ids(tokenizer, model_generation_config(model_dir))
    try:
        stats = length_stats(samples + general, tokenizer, end_ids)
        if "long_source" in report:  # the prior dataset's own lengths, beside those of the whole training file
            lengths = length_stats(samples, tokenizer, end_ids)
            report = {**report, "long_source": {**report["long_source"], "lengths": lengths}}
    except TemplateError as error:
        raise InputError("params.yaml", str(error), field="finetune.chat_template") from None
    return {
        **stats,
        "chat_template": chat_format,
        "variant": settings.variant,
        "num_contexts": settings.num_contexts,
        "templates_version": templates_version(),
        "long_samples": len(samples),
        **report,
    }
