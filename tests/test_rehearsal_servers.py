"""The rehearsal's fake OpenAI servers answer the real synthesis prompts in a form every parser downstream accepts."""

from ctxsynth.generation.base import Request
from ctxsynth.generation.openai_batch import OpenAIBatchBackend
from ctxsynth.generation.openai_chat import OpenAIBackend
from ctxsynth.generation.settings import OpenAIBatchSettings, OpenAISettings
from ctxsynth.rehearsal.fake_openai import REHEARSAL_KEY, rehearsal_servers
from ctxsynth.synthesis.contexts import parse_context
from ctxsynth.synthesis.instructions import parse_question_answer
from ctxsynth.synthesis.prompts import get_prompt

SAMPLING = {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0}
PAIRS = [("Where was the bell of Orlin cast?", "in Vessany"), ("How many bridges cross the Tamm?", "seven")]


def _generate(backend, requests):
    return {
        request.key: result["text"]
        for batch in backend.iter_generate(requests, SAMPLING, 0)
        for request, result in batch
    }


def test_context_synthesis_through_the_fake_batch_api_parses_and_states_the_answer(tmp_path):
    prompt = get_prompt("context_synthesis")
    requests = [
        Request(f"k{i}", prompt.messages(instruction=question, answer=answer, length=80))
        for i, (question, answer) in enumerate(PAIRS)
    ]
    with rehearsal_servers(batch_port=0, chat_port=0) as (batch_url, _):
        settings = OpenAIBatchSettings(
            base_url=batch_url, model="gpt-4o-mini-2024-07-18", poll_interval=0.01, state_dir=str(tmp_path)
        )
        backend = OpenAIBatchBackend(settings, api_key=REHEARSAL_KEY, verbose=False)
        texts = _generate(backend, requests)
    for i, (_, answer) in enumerate(PAIRS):
        context, status = parse_context(texts[f"k{i}"], prompt.marker)
        assert status == "ok" and answer in context and len(context.split()) >= 80


def test_instruction_synthesis_through_the_fake_chat_server_parses(tmp_path):
    prompt = get_prompt("instruction_synthesis")
    context = "The harbour of Lessing froze in the winter of 1821 and the ferries stopped for nine weeks."
    with rehearsal_servers(batch_port=0, chat_port=0) as (_, chat_url):
        texts = _generate(
            OpenAIBackend(OpenAISettings(base_urls=[chat_url], model="served")),
            [Request("k", prompt.messages(context=context))],
        )
    question, answer, status = parse_question_answer(texts["k"])
    assert status == "ok" and question and answer in context
