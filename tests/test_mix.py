import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctxsynth.core.chat_encoding import end_of_turn_ids
from ctxsynth.core.io import InputError
from ctxsynth.core.tasks import get_task
from ctxsynth.mix.assemble import assemble, length_stats, pool_for_variant


def synthesized(task: str, count: int, failed: tuple[int, ...] = ()) -> list[dict]:
    return [
        {
            "id": f"{task}-{i}",
            "task": task,
            "instruction": f"Q{i} of {task}?",
            "answer": f"A{i}",
            "context": None if i in failed else f"CTX<{task}-{i}>",
            "parse_status": "missing_marker" if i in failed else "ok",
        }
        for i in range(count)
    ]


def contexts_in(sample: dict) -> list[str]:
    return re.findall(r"CTX<[^>]+>", sample["messages"][0]["content"])


def test_distractors_come_from_the_same_task_and_never_the_item_itself():
    records = synthesized("hotpotqa", 6) + synthesized("musique", 6)
    samples = assemble(records, "context_synthesis", num_contexts=4, seed=1, summarization_distractors=True)
    assert len(samples) == 12
    for sample in samples:
        contexts = contexts_in(sample)
        assert len(contexts) == 4 and len(set(contexts)) == 4
        assert contexts.count(f"CTX<{sample['id']}>") == 1
        assert all(c.startswith(f"CTX<{sample['task']}-") for c in contexts)
        assert contexts[sample["relevant_position"]] == f"CTX<{sample['id']}>"
        assert sample["messages"][1] == {
            "role": "assistant",
            "content": records[[r["id"] for r in records].index(sample["id"])]["answer"],
        }


def test_prompt_is_the_tasks_template_with_contexts_joined_by_a_blank_line():
    records = synthesized("hotpotqa", 2)
    sample = assemble(records, "context_synthesis", num_contexts=2, seed=0, summarization_distractors=True)[0]
    ordered = [f"CTX<hotpotqa-{i}>" for i in (0, 1)]
    if sample["relevant_position"] == 1:
        ordered.reverse()
    assert sample["messages"][0]["content"] == get_task("hotpotqa").render("\n\n".join(ordered), "Q0 of hotpotqa?")


def test_shuffle_varies_with_seed_and_position_is_not_fixed():
    records = synthesized("hotpotqa", 10)
    positions = {
        s["relevant_position"]
        for s in assemble(records, "context_synthesis", 5, seed=3, summarization_distractors=True)
    }
    assert len(positions) > 1
    assert assemble(records, "context_synthesis", 5, seed=3, summarization_distractors=True) != assemble(
        records, "context_synthesis", 5, seed=4, summarization_distractors=True
    )


def test_parse_failures_never_enter_the_mix_and_small_tasks_are_capped():
    pool = pool_for_variant("context_synthesis", [], synthesized("qasper", 3, failed=(1,)))
    samples = assemble(pool, "context_synthesis", num_contexts=10, seed=0, summarization_distractors=True)
    assert [s["id"] for s in samples] == ["qasper-0", "qasper-2"]
    assert all(len(contexts_in(s)) == 2 for s in samples)


def test_variants_human_context_and_context_free():
    seeds = [
        {"id": "a", "task": "hotpotqa", "instruction": "Q?", "answer": "A", "context": "HUMAN"},
        {"id": "b", "task": "hotpotqa", "instruction": "R?", "answer": "B", "context": None},
    ]
    human = assemble(
        pool_for_variant("human_context", seeds, []), "human_context", 3, seed=0, summarization_distractors=True
    )
    assert [s["id"] for s in human] == ["a"] and "HUMAN" in human[0]["messages"][0]["content"]
    free = assemble(
        pool_for_variant("context_free", seeds, []), "context_free", 3, seed=0, summarization_distractors=True
    )
    assert [s["messages"][0]["content"] for s in free] == ["Q?", "R?"]
    with pytest.raises(ValueError, match="unknown mix.variant"):
        pool_for_variant("nonsense", seeds, [])


def test_summarization_distractors_can_be_switched_off():
    records = synthesized("gov_report", 4)
    assert all(
        len(contexts_in(s)) == 3
        for s in assemble(records, "context_synthesis", 3, seed=0, summarization_distractors=True)
    )
    assert all(
        len(contexts_in(s)) == 1
        for s in assemble(records, "context_synthesis", 3, seed=0, summarization_distractors=False)
    )


SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_mix import synthesized
from ctxsynth.core.chat_encoding import end_of_turn_ids
from ctxsynth.mix.assemble import assemble
records = synthesized("hotpotqa", 8) + synthesized("musique", 8)
print(json.dumps(assemble(records, "context_synthesis", 5, seed=42, summarization_distractors=True)))
"""


def test_assembly_is_identical_under_different_hash_seeds():
    tests = Path(__file__).parent
    code = SCRIPT.format(root=str(tests.parent), tests=str(tests))
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
        ).stdout
        for hash_seed in ("0", "1", "12345")
    }
    assert len(outputs) == 1 and len(json.loads(outputs.pop())) == 16


def test_length_stats_count_what_finetune_trains_on(tiny_model_dir):
    from transformers import AutoTokenizer

    from ctxsynth.finetune.data import prepare_examples

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    samples = assemble(synthesized("hotpotqa", 3), "context_synthesis", 2, seed=0, summarization_distractors=True)
    stats = length_stats(samples, tokenizer, end_of_turn_ids(tokenizer))
    records = [(line, sample) for line, sample in enumerate(samples, start=1)]
    examples = prepare_examples(
        records, tokenizer, max_tokens=None, overlength="drop", end_ids=end_of_turn_ids(tokenizer)
    ).examples
    lengths, answers = [len(example) for example in examples], [example.target_tokens for example in examples]
    assert stats["samples"] == 3 and stats["tokens"]["min"] == min(lengths) and stats["tokens"]["max"] == max(lengths)
    assert (stats["answer_tokens"]["min"], stats["answer_tokens"]["max"]) == (min(answers), max(answers))
    assert stats["answer_fraction"] == round(sum(answers) / sum(lengths), 4)


def test_mix_lengths_of_a_base_model_are_counted_in_the_finetune_chat_format():
    """A base model has no template of its own: the lengths use finetune.chat_template, as training will."""
    from ctxsynth.mix.run import mix_metrics
    from ctxsynth.mix.settings import MixSettings

    model = Path(__file__).resolve().parents[1] / "inputs" / "models" / "tiny-llama-base"
    samples = [
        {
            "id": "a",
            "task": "qa",
            "messages": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A."}],
        }
    ]
    metrics = mix_metrics(MixSettings(), samples, [], {}, model, "longalign")
    assert (
        metrics["chat_template"] == "longalign@v1"
        and metrics["tokens"]["max"] == len("[INST]Q?[/INST]A.") + 2  # byte tokens plus <s> and </s>
    )
    with pytest.raises(InputError) as error:
        mix_metrics(MixSettings(), samples, [], {}, model, "model")
    assert error.value.field == "finetune.chat_template"
