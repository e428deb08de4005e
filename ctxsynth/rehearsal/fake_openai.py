"""The paid and GPU generators' stand-ins for a rehearsal: the OpenAI Batch API (GPT-4o-mini rows) and a
chat-completions server (a `vllm serve` fleet), on fixed local ports the rehearsal rows name in their params.

Replies follow the synthesis prompts (ctxsynth/synthesis/prompts.yaml) closely enough for every parser downstream:
a context-synthesis request gets "Context:" and a document of about the asked length that states the seed's answer;
an instruction-synthesis request gets "Question: ... Answer: ..." taken from its context. Replies are a function of
the request alone, so a rerun writes the same data. Any API key is accepted: nothing leaves the machine.

    python -m ctxsynth.rehearsal.fake_openai   # serve both until interrupted
    python -m ctxsynth.rehearsal.fake_openai --chat-only --chat-port 18433 --model M   # as `vllm serve M` would

The second form is what the rehearsal's open-generator rows name in `synthesize.openai.serve.command`: the
synthesize stage starts it, waits for it to list the model, and stops it, as it does `vllm serve` at the gpu scale.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import signal
import time
from collections.abc import Iterator

from ctxsynth.rehearsal.batch_server import BatchServer
from ctxsynth.rehearsal.chat_server import ChatServer

BATCH_PORT = 18431  # synthesize.openai_batch.base_url of the rehearsal rows
CHAT_PORT = 18432  # synthesize.openai.base_urls of the rehearsal rows
# The rehearsal rows' synthesize.openai_batch.api_key_env, set by the experiment runner for its queue workers: the
# fake Batch API refuses any other key, so a rehearsal proves the key named by the settings is the one sent.
REHEARSAL_KEY_ENV, REHEARSAL_KEY = "CTXSYNTH_REHEARSAL_KEY", "rehearsal-key"
FILLER = (
    "The account was kept in the town ledger for many years.",
    "Neighbours still talk about it at the market on Saturdays.",
    "Later visitors compared several versions of the story and found them consistent.",
    "The details were written down by a clerk who checked each date twice.",
)


def _field(text: str, name: str) -> str:
    match = re.search(rf"^{name}: (.*)$", text, flags=re.MULTILINE)
    return match.group(1).strip() if match else ""


def synthesized_context(user: str) -> str:
    question, answer = _field(user, "Question"), _field(user, "Answer")
    length = re.search(r"approximately (\d+) words", user)
    words = int(length.group(1)) if length else 150
    sentences = [f"This is the background to the question {question!r}.", f"The answer is {answer}."]
    index = 0
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(FILLER[index % len(FILLER)])
        index += 1
    return "Context: " + " ".join(sentences)


def synthesized_instruction(user: str) -> str:
    context = user.split("\n\nThe above is a piece of text", 1)[0].removeprefix("Context:\n")
    words = context.split()
    subject, answer = " ".join(words[:6]) or "the text", " ".join(words[6:10]) or "nothing"
    return f"Question: What follows '{subject}' in the text?\nAnswer: {answer}"


def rehearsal_reply(body: dict) -> str:
    user = body["messages"][-1]["content"]
    if user.startswith("Context: [MISSING]"):
        return synthesized_context(user)
    if user.startswith("Context:\n"):
        return synthesized_instruction(user)
    return "Context: " + user[:200]


@contextlib.contextmanager
def rehearsal_servers(batch_port: int = BATCH_PORT, chat_port: int = CHAT_PORT) -> Iterator[tuple[str, str]]:
    """Both servers, answered at once (no polling delay), for as long as the block runs: (batch url, chat url)."""
    batch = BatchServer(in_progress_polls=0, reply=rehearsal_reply, api_key=REHEARSAL_KEY, port=batch_port)
    chat = ChatServer(reply=rehearsal_reply, port=chat_port)
    with batch, chat:
        yield batch.url, chat.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-port", type=int, default=BATCH_PORT)
    parser.add_argument("--chat-port", type=int, default=CHAT_PORT)
    parser.add_argument("--chat-only", action="store_true", help="only the chat server, as `vllm serve` stands")
    parser.add_argument("--model", action="append", default=[], help="a model the chat server lists")
    args = parser.parse_args(argv)
    if args.chat_only:
        with ChatServer(reply=rehearsal_reply, port=args.chat_port, models=args.model) as chat:
            print(f"fake chat completions at {chat.url} serving {', '.join(args.model) or 'any model'}", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                signal.sigwait({signal.SIGTERM, signal.SIGINT})
        return 0
    with rehearsal_servers(args.batch_port, args.chat_port) as (batch_url, chat_url):
        print(f"fake OpenAI Batch API at {batch_url}, chat completions at {chat_url}; Ctrl-C stops")
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
