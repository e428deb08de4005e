"""Offline long-context evaluation sets in LongBench v1's release layout, built from the registry data.

- squad_long: a SQuAD v2 dev question with its gold paragraph hidden among paragraphs of other articles.
- hotpotqa_long: a HotpotQA dev question with its 10 paragraphs (2 gold, 8 distractors) padded with other
  questions' paragraphs.
- niah_single: one needle ("One of the special magic numbers for {key} is: {value}.") in Paul Graham essays at
  each (length, depth) of a grid, RULER style.

Lengths are in whitespace words, LongBench's `length` unit; evaluation truncates prompts to the model window.
Everything these items use (question ids, normalized question texts, whole gold paragraphs) is recorded as
reserved so the seed stage can keep training seeds disjoint from evaluation.
"""

from __future__ import annotations

import re

from ctxsynth.text import count_words, normalize_text, rng_for

NEEDLE = "One of the special magic numbers for {key} is: {value}."
NIAH_QUESTION = "What is the special magic number for {key} mentioned in the provided text?"


def longbench_item(task: str, item_id: str, question: str, context: str, answers: list[str]) -> dict:
    return {"_id": item_id, "input": question, "context": context, "answers": answers,
            "length": count_words(context), "dataset": task, "language": "en", "all_classes": None}


def squad_paragraphs(squad: dict) -> list[dict]:
    """Flatten SQuAD into paragraphs: {article, index, text, questions[{id, question, answers}]} (answerable only)."""
    paragraphs = []
    for article_index, article in enumerate(squad["data"]):
        for paragraph_index, paragraph in enumerate(article["paragraphs"]):
            questions = [{"id": qa["id"], "question": qa["question"].strip(),
                          "answers": list(dict.fromkeys(a["text"] for a in qa["answers"]))}
                         for qa in paragraph["qas"] if not qa.get("is_impossible") and qa["answers"]]
            paragraphs.append({"article": article_index, "key": f"{article_index}:{paragraph_index}",
                               "text": paragraph["context"].strip(), "questions": questions,
                               "all_question_ids": [qa["id"] for qa in paragraph["qas"]],
                               "all_questions": [qa["question"] for qa in paragraph["qas"]]})
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
        items.append(longbench_item("squad_long", f"squad:{question['id']}", question["question"], context,
                                    question["answers"]))
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
        items.append(longbench_item("hotpotqa_long", f"hotpotqa:{example['_id']}", example["question"].strip(),
                                    context, [example["answer"]]))
        reserved["ids"].append(example["_id"])
        reserved["questions"].append(normalize_text(example["question"]))
    return items, reserved


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", " ".join(text.split())) if s]


def niah_key_pool(text: str) -> list[str]:
    """Candidate needle keys: distinct lower-case alphabetic words of the essays (sorted, so seeding is stable)."""
    return sorted({w for w in re.findall(r"[a-z]{6,12}", text.lower())})


def build_niah_single(essays: str, lengths: list[int], depths: list[float], samples: int, seed: int,
                      exclude_keys: set[str] = frozenset()) -> list[dict]:
    """One needle per haystack of `length` words, inserted at the sentence boundary nearest `depth`."""
    rng = rng_for(seed, "benchmark", "niah_single")
    sentences = _sentences(essays)
    pool = niah_key_pool(essays)
    items = []
    for length in lengths:
        for depth in depths:
            for sample in range(samples):
                key = "-".join(pool[int(i)] for i in rng.choice(len(pool), size=2, replace=False))
                while key in exclude_keys:
                    key = "-".join(pool[int(i)] for i in rng.choice(len(pool), size=2, replace=False))
                value = str(int(rng.integers(1_000_000, 10_000_000)))
                start = int(rng.integers(0, max(1, len(sentences) - 4 * length // 10)))
                haystack, words = [], 0
                for sentence in sentences[start:]:
                    if words >= length:
                        break
                    haystack.append(sentence)
                    words += count_words(sentence)
                position = round(depth * len(haystack))
                haystack.insert(position, NEEDLE.format(key=key, value=value))
                item = longbench_item("niah_single", f"niah:{length}:{depth}:{sample}",
                                      NIAH_QUESTION.format(key=key), " ".join(haystack), [value])
                item.update({"niah_length": length, "niah_depth": depth, "needle_key": key})
                items.append(item)
    return items
