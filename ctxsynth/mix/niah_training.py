"""Training needles for the pilot study (finding F1): SFT2 needles only, SFT3 a short essay haystack, SFT4 a long one.

Every sample comes from the same generator as the test set (ctxsynth.prepare.niah), wrapped in the same task
template, with keys drawn from a pool that shares no word with the test keys (`reserved.json` `niah_keys`): the
model can learn the format and the retrieval, never a test needle. Samples are drawn per (seed, variant, subtask,
index), so the set does not depend on PYTHONHASHSEED or on which other subtasks are asked for.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ctxsynth.core.settings import coerce
from ctxsynth.core.tasks import get_task
from ctxsynth.core.text import stable_int
from ctxsynth.mix.settings import NIAH_VARIANTS, NiahTrainingSettings
from ctxsynth.prepare import niah


def niah_training_samples(
    essays: str, reserved_keys: list[str], variant: str, options: NiahTrainingSettings | Mapping, seed: int
) -> list[dict]:
    """`options` is `mix.niah`: {subtasks, per_subtask, short_words, long_words}."""
    if variant not in NIAH_VARIANTS:
        raise ValueError(f"not a NIAH training variant: {variant!r}; expected one of {', '.join(NIAH_VARIANTS)}")
    options = coerce(NiahTrainingSettings, options, "mix.niah")
    length_key = NIAH_VARIANTS[variant]
    length_words = 0 if length_key is None else int(getattr(options, length_key))
    pool = niah.disjoint_pool(niah.key_pool(essays), reserved_keys)
    sentences = niah.haystack_sentences(essays)
    subtasks = options.subtasks or list(niah.SUBTASKS)
    samples = []
    for subtask in subtasks:
        spec = get_task(niah.task_name(subtask))
        for index in range(int(options.per_subtask)):
            rng = random.Random(stable_int(seed, "mix", variant, subtask, index))
            depth = rng.random()  # training needles at every depth; the test grid asks for fixed ones
            item = niah.make_sample(subtask, rng, pool, sentences, length_words, depth, exclude=reserved_keys)
            samples.append(
                {
                    "id": f"{variant}:{subtask}:{index}",
                    "task": spec.name,
                    "variant": variant,
                    "messages": [
                        {"role": "user", "content": spec.render(item["context"], item["input"])},
                        {"role": "assistant", "content": ", ".join(item["answers"])},
                    ],
                    "needle_keys": item["needle_keys"],
                    "haystack_words": length_words,
                    "depth": round(depth, 4),
                }
            )
    return samples
