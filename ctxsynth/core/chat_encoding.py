"""Chat samples -> token ids and answer labels, one segment at a time, so that byte-pair merges cannot move the
boundary between a prompt and its answer.

Tokenizing the rendered conversation once lets an answer's first characters merge with the end of the prompt: on the
LLaMA-3.1 and LLaMA-2 tokenizers `[/INST]` followed by `"`, `(`, `$`, `*`, `-`, `<`, `[` or a newline becomes other
tokens, and the prompt's tokens stop being a prefix of the conversation's (tests/test_real_tokenizers.py). Here, as
LongWriter's pre_tokenize_llama3.py does, the rendered conversation is split into the text around the answers
(template scaffolding, system and user turns, the generation prompt) and the answers, each is tokenized on its own
and the ids are concatenated, so every answer's tokens are exactly what the model is asked to generate after its
prompt. A single-turn sample's prompt is one segment, tokenized exactly as evaluation tokenizes a prompt; in a longer
conversation the earlier answers are segments of their own, as their labels need.

Every assistant turn is trained (LongAlign's rule for multi-turn data): its tokens and the end-of-turn token that
closes it are the labels; everything else is IGNORE_INDEX. Mix counts lengths with the same function, so the lengths
it reports are the lengths fine-tuning trains on.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IGNORE_INDEX = -100
# Stands in for each answer while the template renders the conversation, to find where the answers go. NUL bytes:
# no template trims or escapes them away, and no validated chat record contains this text (checked per record).
_ANSWER_MARK = "\x00ctxsynth-answer-{}\x00"
_ANSWER_MARK_PATTERN = re.compile("\x00ctxsynth-answer-(\\d+)\x00")
# Templates that change an answer as they render it: as written, or trimmed (LLaMA-3's `content | trim`).
_ANSWER_RENDERINGS = (("as written", lambda text: text), ("trimmed", str.strip))
# The end-of-turn token closes an answer when it is among the first tokens after it (ChatML writes it at once).
_END_TOKEN_WINDOW = 2


class TemplateError(ValueError):
    """The chat template renders the conversation in a way the answers cannot be located or trained in."""


@dataclass(frozen=True)
class EncodedChat:
    prompt_ids: list[int]  # everything before the last answer, ending with the generation prompt
    prompt_labels: list[int]  # over prompt_ids: the earlier assistant turns trained, the rest IGNORE_INDEX
    answer_ids: list[int]  # the last answer and the end-of-turn token that closes it

    @property
    def input_ids(self) -> list[int]:
        return self.prompt_ids + self.answer_ids

    @property
    def labels(self) -> list[int]:
        return self.prompt_labels + self.answer_ids

    @property
    def target_tokens(self) -> int:
        return len(self.answer_ids) + sum(1 for label in self.prompt_labels if label != IGNORE_INDEX)


def end_of_turn_ids(tokenizer, generation_config=None) -> set[int]:
    """The ids that end a turn: the generation config's eos ids (LLaMA-3 instruct lists several) and the tokenizer's."""
    ids: set[int] = set()
    for source in (getattr(generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif isinstance(source, (list, tuple)):
            ids.update(int(value) for value in source)
    if not ids:
        raise TemplateError("the tokenizer has no eos token: cannot mark the end of the answer")
    return ids


def model_generation_config(model_dir):
    """The generation config from_pretrained would attach to the model (its eos ids end a turn), read without
    loading the weights; finetune and mix must agree on it."""
    from transformers import AutoConfig, GenerationConfig

    try:
        return GenerationConfig.from_pretrained(model_dir)
    except OSError:  # no generation_config.json: transformers derives it from the model config
        return GenerationConfig.from_model_config(AutoConfig.from_pretrained(model_dir))


def _render(tokenizer, messages: Sequence[dict], **kwargs) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, **kwargs)


def chat_segments(tokenizer, messages: Sequence[dict]) -> list[tuple[str, bool]]:
    """The rendered conversation as (text, is_answer) segments, alternating the text around the answers with the
    answers as the template writes them; their concatenation is the template's own rendering."""
    answer_turns = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    if any("\x00ctxsynth-answer-" in message["content"] for message in messages):
        raise TemplateError("a message contains the answer marker the encoder reserves")
    masked = [
        {**message, "content": _ANSWER_MARK.format(turn)} if message["role"] == "assistant" else message
        for turn, message in enumerate(messages)
    ]
    pieces = _ANSWER_MARK_PATTERN.split(_render(tokenizer, masked))
    if [int(turn) for turn in pieces[1::2]] != answer_turns:
        raise TemplateError("the chat template does not write every assistant turn once, in order")
    rendered = _render(tokenizer, messages)
    for _name, rendering in _ANSWER_RENDERINGS:
        answers = [rendering(messages[turn]["content"]) for turn in answer_turns]
        segments = [(pieces[0], False)]
        for answer, around in zip(answers, pieces[2::2]):
            segments += [(answer, True), (around, False)]
        if "".join(text for text, _ in segments) == rendered:
            break
    else:
        tried = " nor ".join(name for name, _ in _ANSWER_RENDERINGS)
        raise TemplateError(f"the chat template changes the answers as it renders them (neither {tried})")
    prompt_text = "".join(text for text, _ in segments[:-2])
    generation_prompt = _render(tokenizer, messages[:-1], add_generation_prompt=True)
    if prompt_text != generation_prompt:
        raise TemplateError(
            "the chat template's generation prompt is not what it writes before the answer "
            f"(generation prompt ends {generation_prompt[-60:]!r}, conversation has {prompt_text[-60:]!r})"
        )
    return segments


def _tokens(tokenizer, text: str) -> list[int]:
    # The chat template writes its own special tokens (as apply_chat_template(tokenize=True) assumes).
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _prepends_space(tokenizer) -> bool:
    """Whether the tokenizer writes a space before whatever it encodes (SentencePiece's dummy prefix: LLaMA-2)."""
    tokens = tokenizer.convert_ids_to_tokens(_tokens(tokenizer, "a"))
    return bool(tokens) and tokens[0].startswith("\u2581")


def _continuation_tokens(tokenizer, text: str) -> list[int]:
    """The tokens of `text` where it follows other text. A tokenizer with a dummy prefix would write a space that the
    conversation does not have, so `text` is encoded after a newline (a byte token that merges with nothing there)
    and the newline's tokens are dropped."""
    if not text or not _prepends_space(tokenizer):
        return _tokens(tokenizer, text)
    anchor = _tokens(tokenizer, "\n")
    anchored = _tokens(tokenizer, "\n" + text)
    if anchored[: len(anchor)] != anchor:
        raise TemplateError(f"cannot encode {text[:40]!r} as a continuation: it merges with a newline before it")
    return anchored[len(anchor) :]


def _closing_tokens(ids: list[int], end_ids: set[int]) -> int:
    """How many of `ids` (the text after an answer) to train with it: up to its end-of-turn token, or none."""
    for index, token in enumerate(ids[:_END_TOKEN_WINDOW]):
        if token in end_ids:
            return index + 1
    return 0


def encode_chat(tokenizer, messages: Sequence[dict], end_ids: Iterable[int]) -> EncodedChat:
    """Token ids and labels of a validated chat record (core.chat.validate_messages), segment by segment."""
    end_ids = set(end_ids)
    segments = chat_segments(tokenizer, messages)
    ids: list[int] = []
    labels: list[int] = []
    for index, (text, is_answer) in enumerate(segments[:-2]):
        tokens = _continuation_tokens(tokenizer, text) if index else _tokens(tokenizer, text)
        closing = _closing_tokens(tokens, end_ids) if index and not is_answer else 0
        ids += tokens
        labels += tokens if is_answer else tokens[:closing] + [IGNORE_INDEX] * (len(tokens) - closing)
    # The last answer: its tokens, then the end-of-turn token; what the template writes after that turn is not kept.
    answer_ids = _continuation_tokens(tokenizer, segments[-2][0])
    tail = _continuation_tokens(tokenizer, segments[-1][0])
    closing = _closing_tokens(tail, end_ids)
    if closing:
        answer_ids += tail[:closing]
    else:
        answer_ids.append(tokenizer.eos_token_id if tokenizer.eos_token_id is not None else min(end_ids))
    return EncodedChat(prompt_ids=ids, prompt_labels=labels, answer_ids=answer_ids)
