"""Offline long-context evaluation sets in LongBench v1's release layout, built from the registry data.

- squad_long: a SQuAD v2 dev question with its gold paragraph hidden among paragraphs of other articles.
- hotpotqa_long: a HotpotQA dev question with its 10 paragraphs (2 gold, 8 distractors) padded with other
  questions' paragraphs.
- niah_single / niah_multikey / niah_multiquery / niah_multivalue: needles ("One of the special magic numbers for
  {key} is: {value}.") in Paul Graham essays at each (length, depth) of a grid, RULER style (ctxsynth.prepare.niah).

Lengths are in whitespace words, LongBench's `length` unit; evaluation truncates prompts to the model window.
Everything these items use (question ids, normalized question texts, whole gold paragraphs) is recorded as
reserved so the seed stage can keep training seeds disjoint from evaluation; every needle key (distractors
included) is reserved so training needles can avoid them.
"""

from __future__ import annotations

import random
from pathlib import Path

from ctxsynth.core.io import read_json
from ctxsynth.core.text import count_words, normalize_text, rng_for, stable_int
from ctxsynth.prepare import niah
from ctxsynth.prepare.settings import BenchmarkSettings


def longbench_item(task: str, item_id: str, question: str, context: str, answers: list[str]) -> dict:
    return {
        "_id": item_id,
        "input": question,
        "context": context,
        "answers": answers,
        "length": count_words(context),
        "dataset": task,
        "language": "en",
        "all_classes": None,
    }


def squad_paragraphs(squad: dict) -> list[dict]:
    """Flatten SQuAD into paragraphs: {article, index, text, questions[{id, question, answers}]} (answerable only)."""
    paragraphs = []
    for article_index, article in enumerate(squad["data"]):
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            questions = [
                {
                    "id": qa["id"],
                    "question": qa["question"].strip(),
                    "answers": list(dict.fromkeys(a["text"] for a in qa["answers"])),
                }
                for qa in paragraph["qas"]
                if not qa.get("is_impossible") and qa["answers"]
            ]
            paragraphs.append(
                {
                    "article": article_index,
                    "key": f"{article_index}:{paragraph_index}",
                    "text": paragraph["context"].strip(),
                    "questions": questions,
                    "all_question_ids": [qa["id"] for qa in paragraph["qas"]],
                    "all_questions": [qa["question"] for qa in paragraph["qas"]],
                }
            )
    return paragraphs


def _fill(relevant: list[str], fillers: list[str], target_words: int, rng) -> list[str]:
    """Relevant passages plus fillers (in the given order) up to target_words, then shuffled together."""
    chosen, words = list(relevant), sum(count_words(p) for p in relevant)
    for filler in fillers:
        if words >= target_words:
            break
        chosen.append(filler)
        words += count_words(filler)
    order = rng.permutation(len(chosen))
    return [chosen[i] for i in order]


def build_squad_long(squad: dict, count: int, target_words: int, seed: int) -> tuple[list[dict], dict]:
    rng = rng_for(seed, "benchmark", "squad_long")
    paragraphs = squad_paragraphs(squad)
    candidates = [p for p in paragraphs if p["questions"]]
    picks = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
    items, reserved = [], {"ids": [], "questions": [], "paragraphs": []}
    for pick in sorted(int(i) for i in picks):
        gold = candidates[pick]
        question = gold["questions"][int(rng.integers(len(gold["questions"])))]
        others = [p["text"] for p in paragraphs if p["article"] != gold["article"]]
        fillers = [others[i] for i in rng.permutation(len(others))]
        context = "\n\n".join(_fill([gold["text"]], fillers, target_words, rng))
        items.append(
            longbench_item("squad_long", f"squad:{question['id']}", question["question"], context, question["answers"])
        )
        # The whole gold paragraph is reserved: a seed asking another question of it would leak the answer text.
        reserved["ids"] += gold["all_question_ids"]
        reserved["questions"] += [normalize_text(q) for q in gold["all_questions"]]
        reserved["paragraphs"].append(gold["key"])
    return items, reserved


def hotpot_passage(title: str, sentences: list[str]) -> str:
    return f"{title}\n{''.join(sentences).strip()}"


def format_passages(passages: list[str]) -> str:
    """LongBench's multi-document layout: `Passage 1:` headers, one blank line apart."""
    return "\n\n".join(f"Passage {i}:\n{text}" for i, text in enumerate(passages, start=1))


def build_hotpotqa_long(hotpot: list[dict], count: int, target_words: int, seed: int) -> tuple[list[dict], dict]:
    rng = rng_for(seed, "benchmark", "hotpotqa_long")
    picks = sorted(int(i) for i in rng.choice(len(hotpot), size=min(count, len(hotpot)), replace=False))
    picked = set(picks)
    items, reserved = [], {"ids": [], "questions": []}
    for pick in picks:
        example = hotpot[pick]
        own = [hotpot_passage(title, sentences) for title, sentences in example["context"]]
        own_titles = {title for title, _ in example["context"]}
        fillers = []
        for other in rng.permutation(len(hotpot))[:200]:
            if int(other) in picked:
                continue
            fillers += [hotpot_passage(t, s) for t, s in hotpot[int(other)]["context"] if t not in own_titles]
        context = format_passages(_fill(own, fillers, target_words, rng))
        items.append(
            longbench_item(
                "hotpotqa_long", f"hotpotqa:{example['_id']}", example["question"].strip(), context, [example["answer"]]
            )
        )
        reserved["ids"].append(example["_id"])
        reserved["questions"].append(normalize_text(example["question"]))
    return items, reserved


def build_niah(
    essays: str,
    subtasks: list[str],
    lengths: list[int],
    depths: list[float],
    samples: int,
    seed: int,
    needles: dict[str, int] | None = None,
) -> dict[str, list[dict]]:
    """The NIAH test sets, {task: rows}: one sample per (subtask, length, depth, sample index), each drawn from its
    own generator, so adding a length or a depth leaves the other cells' samples unchanged."""
    sentences = niah.haystack_sentences(essays)
    pool = niah.key_pool(essays)
    sets = {}
    for subtask in subtasks:
        task = niah.task_name(subtask)
        count = (needles or {}).get(subtask)
        rows = []
        for length in lengths:
            for depth in depths:
                for index in range(samples):
                    rng = random.Random(stable_int(seed, "benchmark", task, length, float(depth), index))
                    sample = niah.make_sample(subtask, rng, pool, sentences, int(length), float(depth), count)
                    row = longbench_item(
                        task,
                        f"{task}:{length}:{float(depth)}:{index}",
                        sample["input"],
                        sample["context"],
                        sample["answers"],
                    )
                    row.update(
                        {"niah_length": int(length), "niah_depth": float(depth), "needle_keys": sample["needle_keys"]}
                    )
                    rows.append(row)
        sets[task] = rows
    return sets


def build_benchmark(raw_dir: Path, settings: BenchmarkSettings) -> tuple[dict[str, list[dict]], dict]:
    """Every test set of the `benchmark` section, {task: rows}, and the reserved items (reserved.json) that the
    seed and general stages keep out of training."""
    raw_dir = Path(raw_dir)
    squad, hotpot, test_niah = settings.squad_long, settings.hotpotqa_long, settings.niah
    squad_items, squad_reserved = build_squad_long(
        read_json(raw_dir / "squad.json"), squad.count, squad.target_words, settings.seed
    )
    hotpot_items, hotpot_reserved = build_hotpotqa_long(
        read_json(raw_dir / "hotpotqa.json"), hotpot.count, hotpot.target_words, settings.seed
    )
    niah_sets = build_niah(
        read_json(raw_dir / "PaulGrahamEssays.json")["text"],
        list(test_niah.subtasks),
        [int(n) for n in test_niah.lengths],
        [float(d) for d in test_niah.depths],
        test_niah.samples,
        settings.seed,
        test_niah.needles,
    )
    reserved = {
        "ids": sorted(set(squad_reserved["ids"] + hotpot_reserved["ids"])),
        "questions": sorted(set(squad_reserved["questions"] + hotpot_reserved["questions"])),
        "paragraphs": sorted(squad_reserved["paragraphs"]),
        "niah_keys": sorted({key for items in niah_sets.values() for item in items for key in item["needle_keys"]}),
    }
    return {"squad_long": squad_items, "hotpotqa_long": hotpot_items, **niah_sets}, reserved
