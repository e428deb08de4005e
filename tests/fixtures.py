"""Small hand-made stand-ins for the registry data, in the same layouts (SQuAD v2 JSON, HotpotQA list)."""

from __future__ import annotations


def make_squad(articles: int = 4, paragraphs: int = 3, questions: int = 2) -> dict:
    data = []
    for a in range(articles):
        paras = []
        for p in range(paragraphs):
            text = f"Article {a} paragraph {p} says that the answer {a}-{p} is kept here. " + "filler words " * 20
            qas = [
                {
                    "id": f"q{a}-{p}-{q}",
                    "question": f"What does article {a} paragraph {p} keep, variant {q}?",
                    "answers": [{"text": f"answer {a}-{p}", "answer_start": 0}],
                    "is_impossible": False,
                }
                for q in range(questions)
            ]
            qas.append(
                {"id": f"q{a}-{p}-x", "question": f"Impossible question {a}-{p}?", "answers": [], "is_impossible": True}
            )
            paras.append({"context": text, "qas": qas})
        data.append({"title": f"Article {a}", "paragraphs": paras})
    return {"version": "v2.0", "data": data}


def make_hotpot(count: int = 12) -> list[dict]:
    return [
        {
            "_id": f"h{i}",
            "question": f"Which entity number {i} is linked?",
            "answer": f"entity {i}",
            "supporting_facts": [[f"Title {i}a", 0]],
            "context": [[f"Title {i}{c}", [f"Sentence about {i}{c}.", " More words here."]] for c in "abcd"],
        }
        for i in range(count)
    ]


ESSAYS = " ".join(f"Essay sentence number {i} talks about startups and founders and programming." for i in range(400))
