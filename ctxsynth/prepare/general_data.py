"""General SFT data: the short instruction data the paper's long samples are added to (its "general data").

The paper uses ShareGPT / UltraChat from the hub. Offline, the registry data offers SQuAD v2, so `build_squad_chat`
turns answerable questions into single-turn chat samples answered from their own paragraph (a few hundred tokens
each). Paragraphs holding an evaluation item or a seed are left out: general data never leaks a test answer, and the
"general data only" row never sees the seeds' own pairs.

The mix stage reads these samples, or other general data, through `ctxsynth.mix.general_source`.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path

import yaml

from ctxsynth.core.chat import general_chat_sample
from ctxsynth.core.io import read_json, sha256_file
from ctxsynth.core.text import count_words, stable_int
from ctxsynth.prepare.benchmark import squad_paragraphs
from ctxsynth.prepare.settings import GeneralSettings

RESOURCE = Path(__file__).with_name("general_data.yaml")


@lru_cache(maxsize=1)
def templates() -> dict:
    return yaml.safe_load(RESOURCE.read_text(encoding="utf-8"))


def build_squad_chat(
    squad: dict,
    exclude_question_ids: set[str],
    exclude_paragraphs: set[str],
    count: int | None,
    seed: int,
    max_paragraph_words: int,
) -> tuple[list[dict], dict]:
    """Up to `count` SQuAD chat samples (one question per paragraph), ranked by a seeded hash of the question id."""
    template = templates()["squad_chat"]["template"]
    candidates, excluded = [], 0
    for paragraph in squad_paragraphs(squad):
        if paragraph["key"] in exclude_paragraphs or exclude_question_ids.intersection(paragraph["all_question_ids"]):
            excluded += 1
            continue
        if not paragraph["questions"] or count_words(paragraph["text"]) > max_paragraph_words:
            continue
        # One question per paragraph: many samples from one paragraph would teach that paragraph, not the format.
        question = min(paragraph["questions"], key=lambda q: stable_int(seed, "general", q["id"]))
        candidates.append((paragraph, question))
    candidates.sort(key=lambda pair: stable_int(seed, "general", pair[1]["id"]))
    chosen = candidates if count is None else candidates[: int(count)]
    samples = [
        general_chat_sample(
            f"general:squad:{q['id']}",
            "squad_chat",
            [
                {"role": "user", "content": template.format(paragraph=p["text"], question=q["question"])},
                {"role": "assistant", "content": q["answers"][0].strip()},
            ],
        )
        for p, q in chosen
    ]
    samples.sort(key=lambda s: s["id"])
    report = {"paragraphs_excluded": excluded, "candidates": len(candidates), "samples": len(samples)}
    return samples, report


def build_general(
    raw_dir: Path, reserved: dict, seeds: list[dict], settings: GeneralSettings
) -> tuple[list[dict], dict]:
    """The `general` stage: SQuAD chat samples that share no paragraph with an evaluation item or a SQuAD seed;
    returns the samples and their provenance (data/general/provenance.json)."""
    seed_ids = {record["id"].split(":", 1)[1] for record in seeds if record["id"].startswith("squad:")}
    squad_path = Path(raw_dir) / "squad.json"
    samples, report = build_squad_chat(
        read_json(squad_path),
        set(reserved.get("ids", [])) | seed_ids,
        set(reserved.get("paragraphs", [])),
        settings.count,
        settings.seed,
        settings.max_paragraph_words,
    )
    provenance = {
        "source": "squad_chat",
        "squad_sha256": sha256_file(squad_path),
        "templates_version": templates()["version"],
        "params": dataclasses.asdict(settings),
        "excluded_seed_questions": len(seed_ids),
        **report,
    }
    return samples, provenance
