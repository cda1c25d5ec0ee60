"""The OpenAI-compatible HTTP API, driven by OpenAI's own Python client, on the embedded model:
chat (whole and streamed), completions, models, the Responses API continued token for token
like a gRPC chat, resident sessions extended by stateless clients, tools and their parsing."""

from __future__ import annotations

import asyncio
import copy
import json

import openai
import pytest

from kakeya import ChatSession, Client
from kakeya.runtime.http.template import ChatTemplate, message_dicts
from kakeya.runtime.http.schemas import ChatCompletionRequest
from kakeya.runtime.http.tool_calls import parse_reply

from .harness import TIMEOUT_S
from .http_harness import settled, start_http

pytestmark = pytest.mark.timeout(600)
QUESTIONS = ["What is the capital of France?", "Name a famous landmark there.", "Say goodbye."]
WEATHER_TOOL = {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                                 "parameters": {"type": "object",
                                                                "properties": {"city": {"type": "string"}}}}}
# A tool-capable template in the Qwen/Hermes form, as a model that supports tools ships it.
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call these functions:\n<tools>\n"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n{% endif %}"
    "{%- for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content %}{{ message.content }}{% endif %}"
    "{% for call in message.tool_calls or [] %}<tool_call>\n"
    "{\"name\": \"{{ call.function.name }}\", \"arguments\": {{ call.function.arguments | tojson }}}\n"
    "</tool_call>{%- endfor %}<|im_end|>\n{% endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


async def bounded(awaitable):
    return await asyncio.wait_for(awaitable, TIMEOUT_S)


@pytest.fixture(scope="module")
async def http(loaded_model, tokenizer):
    handle = await start_http(loaded_model, tokenizer)
    yield handle
    await handle.stop()


@pytest.fixture
async def client(http):
    client = http.client()
    yield client
    await client.close()
    await settled(http)


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


async def test_chat_whole_and_streamed_agree_with_usage(client):
    whole = await bounded(client.chat.completions.create(model="any", messages=ask(QUESTIONS[0]),
                                                         max_tokens=12, temperature=0))
    stream = await bounded(client.chat.completions.create(model="any", messages=ask(QUESTIONS[0]), max_tokens=12,
                                                          temperature=0, stream=True,
                                                          stream_options={"include_usage": True}))
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert whole.choices[0].message.content and text == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens


async def test_a_conversation_that_goes_on_extends_its_resident_session(http, client):
    messages, previous_total = [], 0
    for turn, question in enumerate(QUESTIONS):
        messages.append({"role": "user", "content": question})
        reply = await bounded(client.chat.completions.create(model="any", messages=messages, max_tokens=10,
                                                             temperature=0))
        # Turn 1 prefills everything; later turns find the whole earlier history resident.
        assert reply.usage.prompt_tokens_details.cached_tokens == previous_total
        assert http.runtime.registry.num_active == 1
        previous_total = reply.usage.total_tokens
        messages.append({"role": "assistant", "content": reply.choices[0].message.content})


async def test_a_stop_string_ends_the_reply_before_it_and_closes_the_session(http, client):
    whole = await bounded(client.chat.completions.create(model="any", messages=ask(QUESTIONS[0]), max_tokens=12,
                                                         temperature=0))
    words = whole.choices[0].message.content.split()
    stopped = await bounded(client.chat.completions.create(model="any", messages=ask(QUESTIONS[0]), max_tokens=12,
                                                           temperature=0, stop=[words[2]]))
    assert whole.choices[0].message.content.startswith(stopped.choices[0].message.content)
    assert words[2] not in stopped.choices[0].message.content and stopped.choices[0].finish_reason == "stop"


async def test_completions_from_text_and_from_token_ids_agree(client, tokenizer):
    prompt = "The capital of France is"
    text = await bounded(client.completions.create(model="any", prompt=prompt, max_tokens=8, temperature=0))
    ids = await bounded(client.completions.create(model="any", prompt=tokenizer.encode(prompt), max_tokens=8,
                                                  temperature=0))
    assert text.choices[0].text and text.choices[0].text == ids.choices[0].text
    assert text.choices[0].finish_reason == "length" and text.usage.completion_tokens == 8
    stream = await bounded(client.completions.create(model="any", prompt=prompt, max_tokens=8, temperature=0,
                                                     stream=True))
    assert "".join([chunk.choices[0].text async for chunk in stream]) == text.choices[0].text


async def test_a_min_tokens_per_message_streams_fewer_fuller_chunks_of_the_same_text(client):
    async def streamed(extra: dict) -> tuple[list[str], int]:
        stream = await bounded(client.chat.completions.create(
            model="any", messages=ask(QUESTIONS[0]), max_tokens=16, temperature=0, stream=True,
            stream_options={"include_usage": True}, extra_body=extra))
        chunks = [chunk async for chunk in stream]
        return [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content], \
            chunks[-1].usage.completion_tokens
    plain, tokens = await streamed({})
    batched, batched_tokens = await streamed({"kakeya_min_tokens_per_message": 4})
    assert tokens == batched_tokens >= 3 and "".join(batched) == "".join(plain)
    assert len(batched) <= 1 + -(-(tokens - 1) // 4) < len(plain)  # the first token alone, then up to 4 a chunk
    prompt = "The capital of France is"
    texts = []
    for extra in ({}, {"kakeya_min_tokens_per_message": 4}):
        stream = await bounded(client.completions.create(model="any", prompt=prompt, max_tokens=8, temperature=0,
                                                         stream=True, extra_body=extra))
        texts.append([chunk.choices[0].text async for chunk in stream if chunk.choices[0].text])
    assert "".join(texts[1]) == "".join(texts[0]) and len(texts[1]) < len(texts[0])
    with pytest.raises(openai.BadRequestError, match="kakeya_min_tokens_per_message"):
        await bounded(client.chat.completions.create(model="any", messages=ask("hi"), max_tokens=2, stream=True,
                                                     extra_body={"kakeya_min_tokens_per_message": 0}))


async def test_models_lists_the_served_model(http, client):
    models = await bounded(client.models.list())
    assert [m.id for m in models.data] == [http.runtime.loaded.model_id]


async def test_responses_continue_their_session_token_for_token_like_a_grpc_chat(http, client, tokenizer):
    async with Client(http.server.address) as grpc_client:
        chat = await bounded(ChatSession.create(grpc_client, tokenizer))
        async with chat:
            expected = []
            for question in QUESTIONS:
                await bounded(chat.add_user(question))
                expected.append("".join([piece async for piece in chat.reply(max_tokens=12)]))
            grpc_ids = chat.token_ids
    previous, replies, resident = None, [], 0
    for question in QUESTIONS:
        response = await bounded(client.responses.create(model="any", input=question, max_output_tokens=12,
                                                         temperature=0, previous_response_id=previous))
        assert response.usage.input_tokens_details.cached_tokens == resident  # only the new turn is prefilled
        replies.append(response.output_text)
        previous = response.id
        resident = len(http.state.responses.get(previous, "").history)
    assert replies == expected
    assert list(http.state.responses.get(previous, "").history) == grpc_ids


async def test_a_streamed_response_continues_a_stored_one(client):
    first = await bounded(client.responses.create(model="any", input=QUESTIONS[0], max_output_tokens=8,
                                                  temperature=0))
    stream = await bounded(client.responses.create(model="any", input=QUESTIONS[1], max_output_tokens=8,
                                                   temperature=0, previous_response_id=first.id, stream=True))
    events = [event async for event in stream]
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert events[0].type == "response.created" and events[-1].type in ("response.completed", "response.incomplete")
    assert events[-1].response.output_text == deltas and deltas
    assert [e.sequence_number for e in events] == list(range(len(events)))


async def test_an_unknown_previous_response_is_not_found(client):
    import openai

    with pytest.raises(openai.NotFoundError) as caught:
        await bounded(client.responses.create(model="any", input="Hi", previous_response_id="resp_unknown"))
    assert caught.value.body["type"] == "not_found_error"


async def test_tools_need_a_template_that_supports_them(client):
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        await bounded(client.chat.completions.create(model="any", messages=ask("Weather in Paris?"),
                                                     tools=[WEATHER_TOOL], max_tokens=4))
    assert "does not support tools" in caught.value.body["message"]


def test_tool_calls_parse_back_from_a_canned_template_render(tokenizer):
    template = ChatTemplate(tokenizer, HERMES_TEMPLATE)
    assert template.supports_tools
    prompt = tokenizer.decode(template.prompt_ids(ask("Weather in Paris?"), [WEATHER_TOOL]))
    assert "get_weather" in prompt and prompt.endswith("<|im_start|>assistant\n")
    request = ChatCompletionRequest.model_validate({"messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}]})
    rendered = tokenizer.apply_chat_template(message_dicts(request.messages), tokenize=False,
                                             chat_template=HERMES_TEMPLATE)
    reply = rendered.rsplit("<|im_start|>assistant\n", 1)[1].split("<|im_end|>")[0]
    parsed = parse_reply(reply)
    assert parsed.content is None and len(parsed.tool_calls) == 1
    assert parsed.tool_calls[0]["function"]["name"] == "get_weather"
    assert json.loads(parsed.tool_calls[0]["function"]["arguments"]) == {"city": "Paris"}


async def test_requests_are_counted_per_route_and_status(http, client):
    before = http.runtime.counter("kakeya_http_requests_total", route="/v1/models", method="GET", status="200")
    await bounded(client.models.list())
    after = http.runtime.counter("kakeya_http_requests_total", route="/v1/models", method="GET", status="200")
    assert after == before + 1


async def test_a_served_tool_capable_template_takes_tools(loaded_model, tokenizer, tmp_path):
    template = tmp_path / "hermes.jinja"
    template.write_text(HERMES_TEMPLATE)
    handle = await start_http(loaded_model, tokenizer, http={"chat_template": str(template)})
    client = handle.client()
    try:
        reply = await bounded(client.chat.completions.create(model="any", messages=ask("Weather in Paris?"),
                                                             tools=[WEATHER_TOOL], max_tokens=2, temperature=0))
        with_tools = reply.usage.prompt_tokens
        reply = await bounded(client.chat.completions.create(model="any", messages=ask("Weather in Paris?"),
                                                             max_tokens=2, temperature=0))
        assert with_tools > reply.usage.prompt_tokens  # the tool's signature went into the prompt
        await settled(handle)
    finally:
        await client.close()
        await handle.stop()


async def test_concurrent_conversations_each_extend_their_own_session(http, client):
    async def converse(topic: str) -> list[int]:
        messages, cached, total = [], [], 0
        for turn in range(3):
            messages.append({"role": "user", "content": f"Say one word about {topic}, turn {turn}."})
            reply = await bounded(client.chat.completions.create(model="any", messages=messages, max_tokens=4,
                                                                 temperature=0))
            cached.append(total - reply.usage.prompt_tokens_details.cached_tokens)  # 0: all resident
            total = reply.usage.total_tokens
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
        return cached

    before = http.runtime.registry.num_active
    results = await asyncio.gather(*(converse(topic) for topic in ("cats", "ships", "rain", "bread")))
    # Every later turn found its own conversation's whole history resident, batched with the others'.
    assert all(cached == [0, 0, 0] for cached in results), results
    assert http.runtime.registry.num_active == before + 4


def test_a_model_without_a_chat_template_refuses_chat_with_the_reason(tokenizer):
    from kakeya.runtime.common.errors import InvalidRequest

    base = copy.copy(tokenizer)  # the same tokenizer, as a base model ships it: no template
    base.chat_template = None
    template = ChatTemplate(base)
    assert not template.is_available and template.eos_token_ids == {tokenizer.eos_token_id}
    with pytest.raises(InvalidRequest, match="no chat template"):
        template.prompt_ids(ask("Hi"))
    assert tokenizer.chat_template  # the shared tokenizer kept its own
