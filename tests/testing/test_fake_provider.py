"""The fake provider, through the real openai and anthropic SDKs and through raw httpx."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import httpx
import httpx2
import openai
import pytest

import tether.testing
from tether.testing import ErrorResponse, FakeProvider, FaultRule, ResetMidStream, StallMidStream
from tether.testing._fake_faults import format_faults
from tether.testing.fake_provider import build_parser

pytestmark = pytest.mark.anyio

CLAUDE = "claude-haiku-4-5"  # the anthropic SDK warns about deprecated model names
USER = [{"role": "user", "content": "What is the weather like in Paris today?"}]
WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"},
                                                   "unit": {"type": "string", "enum": ["c", "f"]}},
                  "required": ["city", "unit"]}
OPENAI_TOOLS: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_SCHEMA}},
                     {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}]


@pytest.fixture(scope="module")
def shared() -> Iterator[FakeProvider]:
    with FakeProvider(seed=7) as provider:
        yield provider


@pytest.fixture
def fp(shared: FakeProvider) -> FakeProvider:
    shared.reset()
    return shared


def oai(fp: FakeProvider, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fp.url, api_key="sk-fake", **options)


def claude(fp: FakeProvider, **options: Any) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fp.anthropic_url, api_key="sk-fake", **options)


# --- OpenAI chat completions ---------------------------------------------------------------

async def test_each_model_answers_differently_and_deterministically(fp: FakeProvider) -> None:
    """What evaluation compares: two models' answers to one prompt differ, each model's never varies."""
    async with oai(fp) as client:
        texts = {model: [(await client.chat.completions.create(model=model, messages=USER)  # type: ignore[arg-type]
                          ).choices[0].message.content for _ in range(2)] for model in ("gpt-4o", "gpt-4o-mini")}
    assert texts["gpt-4o"][0] == texts["gpt-4o"][1] and texts["gpt-4o-mini"][0] == texts["gpt-4o-mini"][1]
    assert texts["gpt-4o"][0] != texts["gpt-4o-mini"][0]
    for model, (text, _) in texts.items():
        assert text == tether.testing.reply_text(USER[0]["content"], model=model, seed=7)


async def test_chat_reply_is_deterministic_with_realistic_usage(fp: FakeProvider) -> None:
    async with oai(fp) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        again = await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    text = first.choices[0].message.content
    assert text is not None and text.startswith("This is fake reply ")
    assert "to: What is the weather like in Paris today?" in text
    assert again.choices[0].message.content == text
    assert first.choices[0].finish_reason == "stop"
    usage = first.usage
    assert usage is not None
    assert usage.prompt_tokens == math.ceil(len(USER[0]["content"]) / 4) + 4 + 3
    assert usage.completion_tokens == len(text.split())
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


async def test_chat_stream_ends_with_a_usage_chunk(fp: FakeProvider) -> None:
    async with oai(fp) as client:
        plain = await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        stream = await client.chat.completions.create(
            model="gpt-4o", messages=USER, stream=True, stream_options={"include_usage": True})  # type: ignore[arg-type]
        chunks = [chunk async for chunk in stream]
        bare = await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True)  # type: ignore[arg-type]
        bare_chunks = [chunk async for chunk in bare]
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == plain.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == len(deltas)
    assert chunks[-1].usage.prompt_tokens == plain.usage.prompt_tokens  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert all(c.usage is None for c in bare_chunks) and bare_chunks[-1].choices


async def test_max_tokens_caps_the_reply(fp: FakeProvider) -> None:
    async with oai(fp) as client:
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=USER, max_completion_tokens=3)  # type: ignore[arg-type]
    assert reply.choices[0].message.content == "This is fake"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 3


async def test_tool_call_then_text_after_the_tool_result(fp: FakeProvider) -> None:
    async with oai(fp) as client:
        call = await client.chat.completions.create(model="gpt-4o", messages=USER, tools=OPENAI_TOOLS)  # type: ignore[arg-type]
        message = call.choices[0].message
        assert call.choices[0].finish_reason == "tool_calls" and message.content is None
        [tool_call] = message.tool_calls or []
        assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
        assert json.loads(tool_call.function.arguments) == {"city": "fake city", "unit": "c"}  # type: ignore[union-attr]
        follow_up: Any = [*USER, message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": tool_call.id, "content": "sunny, 21 C"}]
        answer = await client.chat.completions.create(model="gpt-4o", messages=follow_up, tools=OPENAI_TOOLS)
        assert answer.choices[0].finish_reason == "stop" and answer.choices[0].message.content

        async with client.chat.completions.stream(model="gpt-4o", messages=USER, tools=OPENAI_TOOLS) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_completion()
    streamed = (final.choices[0].message.tool_calls or [])[0]
    assert json.loads(streamed.function.arguments) == {"city": "fake city", "unit": "c"}  # type: ignore[union-attr]


def test_one_tool_call_per_user_turn_in_each_api() -> None:
    """OpenClaw adds a user message after each tool result: the fake answers it in words (else it
    would call its first tool forever), and calls the tool again once a new turn starts."""
    from tether.testing._fake_wire import Turn, anthropic_message, chat_completion, responses

    turn = Turn(seed=1, number=1, model="gpt-4o", created=0)

    def says(body: bytes | None) -> str:
        assert body is not None
        return body.decode()

    call = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    chat = [*USER, call, {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
            {"role": "user", "content": "Continue where you left off."}]
    assert '"tool_calls"' not in says(chat_completion({"messages": chat, "tools": OPENAI_TOOLS}, turn)[0])
    next_turn = [*chat, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And Oslo?"}]
    assert '"tool_calls"' in says(chat_completion({"messages": next_turn, "tools": OPENAI_TOOLS}, turn)[0])

    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
    items = [{"role": "user", "content": "Weather?"}, {"type": "function_call", "call_id": "c1",
             "name": "get_weather", "arguments": "{}"}, {"type": "function_call_output", "call_id": "c1",
             "output": "sunny"}, {"role": "user", "content": "Continue."}]
    assert '"function_call"' not in says(responses({"input": items, "tools": tools}, turn)[0])
    again = [*items, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And Oslo?"}]
    assert '"function_call"' in says(responses({"input": again, "tools": tools}, turn)[0])

    claude_tools = [{"name": "get_weather", "input_schema": {"type": "object"}}]
    messages = [{"role": "user", "content": "Weather?"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "get_weather",
                                                   "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}]},
                {"role": "user", "content": "Continue."}]
    body = {"messages": messages, "tools": claude_tools, "max_tokens": 100}
    assert '"tool_use"' not in says(anthropic_message(body, turn)[0])
    later = [*messages, {"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "And Oslo?"}]
    assert '"tool_use"' in says(anthropic_message({**body, "messages": later}, turn)[0])


def test_the_tool_the_users_words_name_is_the_one_called_in_each_api() -> None:
    """An end-to-end test can steer which tool the fake calls (OpenClaw's memory write tool comes
    after its search tool): the tool the user's last message names, as a whole word."""
    from tether.testing._fake_wire import Turn, anthropic_message, chat_completion, responses

    turn = Turn(seed=1, number=1, model="gpt-4o", created=0)
    names = ["memory_search", "memory_write", "memory_write_all"]

    def called(body: bytes | None) -> list[str]:
        assert body is not None
        doc = json.loads(body)
        if "choices" in doc:
            return [c["function"]["name"] for c in doc["choices"][0]["message"].get("tool_calls") or []]
        if "output" in doc:
            return [i["name"] for i in doc["output"] if i["type"] == "function_call"]
        return [b["name"] for b in doc["content"] if b["type"] == "tool_use"]

    chat_tools = [{"type": "function", "function": {"name": n, "parameters": {"type": "object"}}} for n in names]
    ask = [{"role": "user", "content": "Remember this: use memory_write."}]
    assert called(chat_completion({"messages": ask, "tools": chat_tools}, turn)[0]) == ["memory_write"]
    plain = [{"role": "user", "content": "Remember this (memory_writer is not a tool)."}]
    assert called(chat_completion({"messages": plain, "tools": chat_tools}, turn)[0]) == ["memory_search"]
    both = [{"role": "user", "content": "memory_write or memory_write_all?"}]
    assert called(chat_completion({"messages": both, "tools": chat_tools}, turn)[0]) == ["memory_write_all"]
    tools = [{"type": "function", "name": n, "parameters": {"type": "object"}} for n in names]
    assert called(responses({"input": ask, "tools": tools}, turn)[0]) == ["memory_write"]
    claude = [{"name": n, "input_schema": {"type": "object"}} for n in names]
    assert called(anthropic_message({"messages": ask, "tools": claude, "max_tokens": 100}, turn)[0]) == \
        ["memory_write"]


REACT_SYSTEM = """You have access to the following tools:
> Tool Name: get_forecast
Tool Description: get_forecast(city: str) -> str
The forecast.
Tool Args: {"properties": {"city": {"title": "City", "type": "string"}}, "required": ["city"], "type": "object"}

> Tool Name: get_weather
Tool Description: get_weather(city: str, days: int = 1) -> str
Tool Args: {"properties": {"city": {"type": "string"}, "days": {"type": "integer"}}, "required": ["city"]}

Thought: ...
Action: tool name (one of get_forecast, get_weather) if using a tool.
Action Input: the input to the tool, in a JSON format representing the kwargs
"""
CODEACT_SYSTEM = """Python code wrapped in <execute>...</execute> tags. For example:
<execute>
def calculate_area(radius):
    return 3.14 * radius**2
</execute>
you can use the following functions:
def get_weather(city: str, days: int, *, unit: str = 'c') -> str:
  \"\"\"The weather.\"\"\"
  ...
"""


async def test_a_react_agent_is_told_an_action_in_words_then_its_answer_after_the_observation(
        fp: FakeProvider) -> None:
    """An agent whose system prompt asks for ReAct text and sends no ``tools`` (LlamaIndex's ReActAgent):
    once per user turn Thought / Action / Action Input (the tool the user names, else the first, with
    arguments from its ``Tool Args``), after the ``Observation:`` an ``Answer:``."""
    ask: Any = [{"role": "system", "content": REACT_SYSTEM},
                {"role": "user", "content": "What is the weather in Paris? Use get_weather."}]
    async with oai(fp) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=ask)
        said = first.choices[0].message.content or ""
        assert said == ("Thought: I need to use a tool to help me answer the question.\nAction: get_weather\n"
                        'Action Input: {"city": "fake city"}'), said
        observed = [*ask, {"role": "assistant", "content": said},
                    {"role": "user", "content": "Observation: It is sunny."}]
        async with client.chat.completions.stream(model="gpt-4o", messages=observed) as stream:
            final = await stream.get_final_completion()
    answer = final.choices[0].message.content or ""
    assert answer.startswith("Thought: I can answer without using any more tools.\nAnswer: This is fake reply"), answer
    unnamed = [{"role": "system", "content": REACT_SYSTEM}, {"role": "user", "content": "Weather?"}]
    from tether.testing._fake_wire import Turn, chat_completion

    body = chat_completion({"messages": unnamed}, Turn(seed=1, number=1, model="gpt-4o", created=0))[0]
    assert body is not None and "Action: get_forecast" in json.loads(body)["choices"][0]["message"]["content"]


async def test_a_codeact_agent_is_told_code_calling_its_function_then_its_answer(fp: FakeProvider) -> None:
    ask: Any = [{"role": "system", "content": CODEACT_SYSTEM}, {"role": "user", "content": "Weather in Oslo?"}]
    async with oai(fp) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=ask)
        said = first.choices[0].message.content
        assert said == "<execute>\nprint(get_weather(city='fake city', days=1))\n</execute>", said
        done = [*ask, {"role": "assistant", "content": said},
                {"role": "user", "content": "Result of executing the code given:\n\nsunny"}]
        answer = await client.chat.completions.create(model="gpt-4o", messages=done)
        assert (answer.choices[0].message.content or "").startswith("This is fake reply")
        plain = await client.chat.completions.create(model="gpt-4o", messages=[
            {"role": "system", "content": "Answer briefly. Action Input: none here, and no tools listed."}, *USER])
        assert (plain.choices[0].message.content or "").startswith("This is fake reply"), "no tools named: plain words"


async def test_a_repeated_long_prompt_reports_cached_tokens(fp: FakeProvider) -> None:
    long = [{"role": "system", "content": "You are helpful. " * 400}, *USER]
    async with oai(fp) as client:
        first = await client.chat.completions.create(model="gpt-4o", messages=long)  # type: ignore[arg-type]
        second = await client.chat.completions.create(model="gpt-4o", messages=long)  # type: ignore[arg-type]
    assert first.usage and first.usage.prompt_tokens_details
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage and second.usage.prompt_tokens_details
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert cached and cached % 128 == 0 and 1024 <= cached <= second.usage.prompt_tokens


# --- OpenAI Responses, embeddings, models -------------------------------------------------

async def test_responses_plain_and_streamed(fp: FakeProvider) -> None:
    async with oai(fp) as client:
        response = await client.responses.create(model="gpt-4o", input="Say hello")
        stream = await client.responses.create(model="gpt-4o", input="Say hello", stream=True)
        events = [event async for event in stream]
        async with client.responses.stream(model="gpt-4o", input="Say hello") as helper:
            final = await helper.get_final_response()
    assert response.output_text.startswith("This is fake reply")
    assert response.usage and response.usage.input_tokens > 0
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == response.output_text
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage == response.usage
    assert completed.response.usage.output_tokens == len(deltas)  # type: ignore[union-attr]
    assert final.output_text == response.output_text


async def test_responses_tool_call(fp: FakeProvider) -> None:
    tools: Any = [{"type": "function", "name": "get_weather", "parameters": WEATHER_SCHEMA}]
    async with oai(fp) as client:
        response = await client.responses.create(model="gpt-4o", input="Weather in Paris?", tools=tools)
        [call] = response.output
        assert call.type == "function_call" and call.name == "get_weather"
        assert json.loads(call.arguments) == {"city": "fake city", "unit": "c"}
        follow_up: Any = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump(),
                          {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}]
        answer = await client.responses.create(model="gpt-4o", input=follow_up, tools=tools)
    assert answer.output_text.startswith("This is fake reply")


async def test_embeddings_are_deterministic_unit_vectors(fp: FakeProvider) -> None:
    async with oai(fp) as client:
        default = await client.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta"])
        floats = await client.embeddings.create(model="text-embedding-3-small", input="alpha",
                                                encoding_format="float")
        short = await client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=64)
    alpha, beta = default.data[0].embedding, default.data[1].embedding
    assert len(alpha) == 256 and len(short.data[0].embedding) == 64
    assert sum(x * x for x in alpha) == pytest.approx(1.0)
    assert sum(x * x for x in short.data[0].embedding) == pytest.approx(1.0)
    assert floats.data[0].embedding == pytest.approx(alpha, abs=1e-6)  # base64 (the SDK's default) == floats
    assert alpha != beta
    assert default.usage.prompt_tokens == 2 + 1  # "alpha", "beta": chars / 4, rounded up


async def test_models_are_listed_in_each_apis_format(fp: FakeProvider) -> None:
    async with oai(fp) as client, claude(fp) as anthropic_client:
        openai_ids = [model.id async for model in client.models.list()]
        anthropic_ids = [model.id async for model in anthropic_client.models.list()]
        one = await client.models.retrieve("my-model")
    assert "gpt-4o" in openai_ids and openai_ids == anthropic_ids
    assert one.id == "my-model"


async def test_configured_models_reject_unknown_ones() -> None:
    async with FakeProvider(models=["gpt-4o", CLAUDE]) as fp, oai(fp) as client, claude(fp) as anthropic_client:
        assert [m.id async for m in client.models.list()] == ["gpt-4o", CLAUDE]
        await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError) as openai_error:
            await client.chat.completions.create(model="gpt-5-nope", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(anthropic.NotFoundError) as anthropic_error:
            await anthropic_client.messages.create(model="claude-nope", max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert openai_error.value.code == "model_not_found"
    assert anthropic_error.value.body["error"] == {  # type: ignore[index]
        "type": "not_found_error", "message": "model: claude-nope"}
    assert fp.outcomes == {"200": 2, "404": 2}


# --- Anthropic messages ---------------------------------------------------------------------

async def test_anthropic_message_plain_and_streamed(fp: FakeProvider) -> None:
    async with claude(fp) as client:
        message = await client.messages.create(model=CLAUDE, max_tokens=100, messages=USER)  # type: ignore[arg-type]
        raw = await client.messages.create(model=CLAUDE, max_tokens=100, messages=USER, stream=True)  # type: ignore[arg-type]
        events = [event async for event in raw]
        async with client.messages.stream(model=CLAUDE, max_tokens=100, messages=USER) as stream:  # type: ignore[arg-type]
            final = await stream.get_final_message()
    assert message.content[0].type == "text" and message.content[0].text.startswith("This is fake reply")
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens == math.ceil(len(USER[0]["content"]) / 4) + 4 + 3
    kinds = [event.type for event in events]
    assert kinds[:2] == ["message_start", "content_block_start"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    start, delta = events[0], events[-2]
    assert start.type == "message_start" and start.message.usage.input_tokens == message.usage.input_tokens
    assert delta.type == "message_delta" and delta.usage.output_tokens == message.usage.output_tokens
    assert final.content[0].type == "text" and final.content[0].text == message.content[0].text
    assert final.usage.output_tokens == message.usage.output_tokens


async def test_anthropic_tool_use_then_text(fp: FakeProvider) -> None:
    tools: Any = [{"name": "get_weather", "description": "weather", "input_schema": WEATHER_SCHEMA}]
    async with claude(fp) as client:
        message = await client.messages.create(model=CLAUDE, max_tokens=100, messages=USER, tools=tools)  # type: ignore[arg-type]
        [block] = message.content
        assert message.stop_reason == "tool_use" and block.type == "tool_use"
        assert block.name == "get_weather" and block.input == {"city": "fake city", "unit": "c"}
        async with client.messages.stream(model=CLAUDE, max_tokens=100, messages=USER, tools=tools) as stream:  # type: ignore[arg-type]
            streamed = await stream.get_final_message()
        assert streamed.content[0].type == "tool_use" and streamed.content[0].input == block.input
        follow_up: Any = [*USER, {"role": "assistant", "content": [block.model_dump()]},
                          {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id,
                                                        "content": "sunny"}]}]
        answer = await client.messages.create(model=CLAUDE, max_tokens=100, messages=follow_up, tools=tools)
    assert answer.stop_reason == "end_turn" and answer.content[0].type == "text"


async def test_anthropic_requires_max_tokens_and_json(fp: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fp.anthropic_url) as http:
        missing = await http.post("/v1/messages", json={"model": CLAUDE, "messages": USER})
        broken = await http.post("/v1/messages", content=b"{not json")
    assert missing.status_code == 400
    assert missing.json()["error"] == {"type": "invalid_request_error", "message": "max_tokens: Field required"}
    assert broken.status_code == 400 and broken.json()["type"] == "error"


async def test_gemini_generate_content_tool_call_then_text_streamed_and_errors(fp: FakeProvider) -> None:
    """Gemini's generateContent and streamGenerateContent (``alt=sse``), its function calls, usageMetadata,
    and Google's error bodies: a 429's wait in a RetryInfo detail, no Retry-After header."""
    fp.set_faults("429(2s)#1/gemini")
    model = fp.url.removesuffix("/v1") + "/v1beta/models/gemini-2.5-flash"
    tools = [{"functionDeclarations": [{"name": "get_weather", "parameters_json_schema": WEATHER_SCHEMA}]}]
    ask = [{"role": "user", "parts": [{"text": USER[0]["content"]}]}]
    async with httpx.AsyncClient() as http:
        limited = await http.post(model + ":generateContent", json={"contents": ask, "tools": tools})
        called = (await http.post(model + ":generateContent", json={"contents": ask, "tools": tools})).json()
        call = called["candidates"][0]["content"]["parts"][0]["functionCall"]
        answered = [*ask, {"role": "model", "parts": [{"functionCall": call}]},
                    {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 20}}}]}]
        async with http.stream("POST", model + ":streamGenerateContent?alt=sse", json={"contents": answered,
                                                                              "tools": tools}) as streamed:
            chunks = [json.loads(line[6:]) async for line in streamed.aiter_lines() if line.startswith("data: ")]
        capped = (await http.post(model + ":generateContent", json={"contents": ask, "generationConfig": {
            "maxOutputTokens": 2}})).json()
        unknown = await http.post(model + ":countTokens", json={"contents": ask})
        empty = await http.post(model + ":generateContent", json={"contents": []})
    assert limited.status_code == 429 and "retry-after" not in limited.headers
    assert limited.json()["error"] == {"code": 429, "message": "Resource has been exhausted (e.g. check quota).",
                                       "status": "RESOURCE_EXHAUSTED", "details": [
                                           {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "2s"}]}
    assert call["name"] == "get_weather" and set(call["args"]) == {"city", "unit"}
    assert called["usageMetadata"]["totalTokenCount"] == sum(
        called["usageMetadata"][k] for k in ("promptTokenCount", "candidatesTokenCount"))
    assert streamed.headers["content-type"].startswith("text/event-stream") and len(chunks) > 3
    assert "finishReason" not in chunks[0]["candidates"][0] and chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert [c["usageMetadata"]["candidatesTokenCount"] for c in chunks] == list(range(1, len(chunks) + 1))
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks).startswith("This is fake")
    assert capped["candidates"][0]["finishReason"] == "MAX_TOKENS"
    assert unknown.status_code == 404 and unknown.json()["error"]["status"] == "NOT_FOUND"
    assert empty.status_code == 400 and empty.json()["error"]["status"] == "INVALID_ARGUMENT"
    assert [(r.api, r.model, r.stream, r.outcome) for r in fp.log][:3] == [
        ("gemini", "gemini-2.5-flash", False, "429"), ("gemini", "gemini-2.5-flash", False, "200"),
        ("gemini", "gemini-2.5-flash", True, "200")]


async def test_invalid_json_is_a_400_in_openai_format(fp: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fp.url) as http:
        broken = await http.post("/chat/completions", content=b'{"model": "gpt-4o", ')
        unknown = await http.post("/nowhere", json={})
    assert broken.status_code == 400
    assert broken.json()["error"]["type"] == "invalid_request_error"
    assert unknown.status_code == 404 and "error" in unknown.json()
    assert fp.outcomes == {"400": 1}  # unknown paths are not provider requests


# --- faults seen by the SDKs ------------------------------------------------------------------

async def test_error_statuses_with_each_apis_body_and_headers(fp: FakeProvider) -> None:
    fp.set_faults("429(2s)#1,500#2,503#3,400#4")
    async with oai(fp, max_retries=0) as client:
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.InternalServerError) as failed:
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.InternalServerError) as unavailable:
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
    assert limited.value.code == "rate_limit_exceeded"
    headers = limited.value.response.headers
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "2000"
    assert headers["x-ratelimit-remaining-requests"] == "0" and headers["x-ratelimit-reset-requests"] == "2s"
    assert failed.value.status_code == 500 and unavailable.value.status_code == 503
    assert failed.value.type == "server_error"

    fp.set_faults("429#1,529#2")
    async with claude(fp, max_retries=0) as client:
        with pytest.raises(anthropic.RateLimitError) as claude_limited:
            await client.messages.create(model=CLAUDE, max_tokens=10, messages=USER)  # type: ignore[arg-type]
        with pytest.raises(anthropic.OverloadedError):
            await client.messages.create(model=CLAUDE, max_tokens=10, messages=USER)  # type: ignore[arg-type]
    assert claude_limited.value.body["error"] == {  # type: ignore[index]
        "type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit."}
    claude_headers = claude_limited.value.response.headers
    assert claude_headers["retry-after"] == "1" and claude_headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert claude_headers["anthropic-ratelimit-requests-reset"].endswith("Z")
    assert fp.outcomes == {"429": 2, "500": 1, "503": 1, "400": 1, "529": 1}


async def test_sdk_retries_are_logged_with_their_retry_count(fp: FakeProvider) -> None:
    fp.set_faults([FaultRule(ErrorResponse(429, retry_after=0.01), times=2)])
    async with oai(fp) as client:  # the SDK's default: 2 retries, honouring retry-after-ms
        reply = await client.chat.completions.create(
            model="gpt-4o", messages=USER, extra_headers={"Idempotency-Key": "call-1",  # type: ignore[arg-type]
                                                          "traceparent": "00-abc-def-01"})
    assert reply.choices[0].message.content
    log = fp.log
    assert [(r.outcome, r.retry_count) for r in log] == [("429", 0), ("429", 1), ("200", 2)]
    assert {r.idempotency_key for r in log} == {"call-1"} and {r.traceparent for r in log} == {"00-abc-def-01"}
    assert log[0].path == "/v1/chat/completions" and log[0].api == "chat" and log[0].model == "gpt-4o"
    assert log[0].fault == "error" and log[2].fault is None and [r.number for r in log] == [1, 2, 3]


async def test_connection_faults_through_the_sdks(fp: FakeProvider) -> None:
    fp.set_faults("reset#1,hang#2,malformed_json#3-4/chat,reset_mid_stream(4)/messages")
    async with oai(fp, max_retries=0, timeout=0.3) as client:
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        # both SDKs let a bare JSONDecodeError out of a malformed 200, streamed or not
        with pytest.raises(json.JSONDecodeError):
            await client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(json.JSONDecodeError):
            async for _ in await client.chat.completions.create(model="gpt-4o", messages=USER, stream=True):  # type: ignore[arg-type]
                pass
    async with claude(fp, max_retries=0) as anthropic_client:
        stream = await anthropic_client.messages.create(model=CLAUDE, max_tokens=50, messages=USER, stream=True)  # type: ignore[arg-type]
        seen = []
        # anthropic < 2.17 let the transport's ReadError out of a stream; 2.17 wraps it (the lowest-versions run
        # exercises the first, the lock the second)
        with pytest.raises((httpx2.ReadError, anthropic.APIConnectionError)):
            async for event in stream:
                seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta"]  # the SDK drops pings
    assert fp.outcomes == {"reset": 1, "hang": 1, "malformed_json": 2, "reset_mid_stream": 1}


# --- faults seen at the HTTP level -----------------------------------------------------------

CHAT = {"model": "gpt-4o", "messages": USER}


async def test_reset_mid_stream_sends_some_events_then_a_read_error(fp: FakeProvider) -> None:
    fp.set_faults([FaultRule(ResetMidStream(after_chunks=3))])
    events = []
    async with httpx.AsyncClient(base_url=fp.url) as http:
        with pytest.raises(httpx.ReadError):
            async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
                assert response.status_code == 200
                async for line in response.aiter_lines():
                    if line:
                        events.append(line)
        with pytest.raises(httpx.ReadError):  # not streaming: half the body, then the reset
            await http.post("/chat/completions", json=CHAT)
    assert len(events) == 3 and all(e.startswith("data: {") for e in events)
    assert fp.outcomes == {"reset_mid_stream": 2}


async def test_stall_mid_stream_pauses_then_sends_the_rest(fp: FakeProvider) -> None:
    fp.set_faults([FaultRule(StallMidStream(after_chunks=2, seconds=0.3), nth=1)])
    async with httpx.AsyncClient(base_url=fp.url) as http:
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            stalled = [line async for line in response.aiter_lines() if line]
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            plain = [line async for line in response.aiter_lines() if line]
        with pytest.raises(httpx.ReadTimeout):  # the client gives up during the pause
            fp.set_faults("stall_mid_stream(1,30s)")
            async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True},
                                   timeout=httpx.Timeout(5, read=0.2)) as response:
                async for _ in response.aiter_lines():
                    pass
    assert len(stalled) == len(plain) > 2 and stalled[-1] == "data: [DONE]"
    assert [r.fault for r in fp.log] == ["stall_mid_stream", None, "stall_mid_stream"]


async def test_linger_keeps_a_complete_stream_open_before_ending_it(fp: FakeProvider) -> None:
    fp.set_faults("linger(400ms)#1")
    assert format_faults(fp.faults) == "linger(400ms)#1"
    async with httpx.AsyncClient(base_url=fp.url) as http:
        async with http.stream("POST", "/chat/completions", json={**CHAT, "stream": True}) as response:
            lines = []
            async for line in response.aiter_lines():
                if line:
                    lines.append(line)
                    if line == "data: [DONE]":
                        last_event = time.monotonic()
            ended = time.monotonic()
        assert lines[-1] == "data: [DONE]" and ended - last_event >= 0.35, "the end came 0.4 s after [DONE]"
        assert (await http.post("/chat/completions", json={**CHAT, "stream": True})).status_code == 200
    assert [(r.fault, r.outcome) for r in fp.log] == [("linger", "200"), (None, "200")]


async def test_reset_closes_without_a_response(fp: FakeProvider) -> None:
    fp.set_faults("reset")
    async with httpx.AsyncClient(base_url=fp.url) as http:
        with pytest.raises(httpx.ReadError):
            await http.post("/chat/completions", json=CHAT)
        with pytest.raises(httpx.ReadError):
            await http.post("/embeddings", json={"model": "e", "input": "x"})
    assert [r.status for r in fp.log] == [None, None]


async def test_hang_outlasts_the_client_timeout(fp: FakeProvider) -> None:
    fp.set_faults("hang")
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=fp.url, timeout=0.3) as http:
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/chat/completions", json=CHAT)
    assert 0.3 <= time.monotonic() - started < 5.0  # the client's 0.3 s timeout (bounds wide for a loaded machine)
    assert fp.outcomes == {"hang": 1}


async def test_malformed_json_does_not_parse(fp: FakeProvider) -> None:
    fp.set_faults("malformed_json")
    async with httpx.AsyncClient(base_url=fp.url) as http:
        plain = await http.post("/chat/completions", json=CHAT)
        streamed = await http.post("/chat/completions", json={**CHAT, "stream": True})
    assert plain.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        plain.json()
    datas = [line[6:] for line in streamed.text.splitlines() if line.startswith("data: ")]
    json.loads(datas[0])
    with pytest.raises(json.JSONDecodeError):
        json.loads(datas[1])


async def test_slow_first_byte_and_latency_delay_the_answer(fp: FakeProvider) -> None:
    fp.set_faults("slow_first_byte(200ms)")
    async with httpx.AsyncClient(base_url=fp.url) as http:
        started = time.monotonic()
        slow = await http.post("/chat/completions", json=CHAT)
        slow_took = time.monotonic() - started
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/chat/completions", json=CHAT, timeout=0.05)
        fp.clear_faults()
        fp.set_latency("fixed:100ms")
        started = time.monotonic()
        await http.post("/chat/completions", json=CHAT)
        latency_took = time.monotonic() - started
    assert slow.status_code == 200 and 0.2 <= slow_took < 3.0  # upper bounds wide for a loaded machine
    assert 0.1 <= latency_took < 3.0
    assert fp.log[0].fault == "slow_first_byte" and fp.log[0].outcome == "200"


async def test_down_for_a_window_then_back(fp: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fp.url) as http:
        fp.down_for(0.3)
        during = await http.post("/chat/completions", json=CHAT)
        await asyncio.sleep(0.35)
        after = await http.post("/chat/completions", json=CHAT)
        fp.down_for(None, mode="reset")
        with pytest.raises(httpx.ReadError):
            await http.post("/chat/completions", json=CHAT)
        fp.clear_faults()
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 200
    assert during.status_code == 503 and during.json()["error"]["type"] == "server_error"
    assert after.status_code == 200
    assert [(r.outcome, r.fault) for r in fp.log] == [("503", "down"), ("200", None), ("reset", "down"),
                                                      ("200", None)]


async def test_a_seeded_fault_mix_is_reproducible() -> None:
    async def outcomes(seed: int) -> list[str]:
        async with FakeProvider(seed=seed, faults="429:0.3,500:0.2,503:0.1") as fp, \
                httpx.AsyncClient(base_url=fp.url) as http:
            for _ in range(40):
                await http.post("/chat/completions", json=CHAT)
            return [r.outcome for r in fp.log]

    first = await outcomes(11)
    assert first == await outcomes(11)
    assert first != await outcomes(12)
    assert {"200", "429", "500", "503"} == set(first)


# --- control: Python and HTTP ----------------------------------------------------------------

async def test_http_control_endpoints(fp: FakeProvider) -> None:
    async with httpx.AsyncClient(base_url=fp.origin) as http:
        configured = await http.post("/_fake/faults", json={"spec": "500#1", "latency": "1ms"})
        assert configured.json() == {"seed": 7, "faults": "500#1", "latency": "fixed:1ms"}
        assert (await http.get("/_fake/faults")).json()["faults"] == "500#1"
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 500
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await http.post("/_fake/down", json={"seconds": 30})).status_code == 200
        assert (await http.post("/v1/messages", json={**CHAT, "max_tokens": 5})).status_code == 503
        log = (await http.get("/_fake/log")).json()
        assert log["total"] == 3 and log["outcomes"] == {"500": 1, "200": 1, "503": 1}
        assert log["by_api"] == {"chat": {"500": 1, "200": 1}, "messages": {"503": 1}}
        assert [r["outcome"] for r in log["requests"]] == ["500", "200", "503"]
        assert len((await http.get("/_fake/log?limit=1")).json()["requests"]) == 1
        assert len((await http.get("/_fake/log?limit=10")).json()["requests"]) == 3
        assert (await http.post("/_fake/faults", json={"spec": "nonsense"})).status_code == 400
        reset = await http.post("/_fake/reset", json={"seed": 3})
        assert reset.json() == {"seed": 3, "faults": "", "latency": None}
        assert (await http.get("/_fake/log")).json()["total"] == 0
        assert (await http.post("/v1/chat/completions", json=CHAT)).status_code == 200
    assert fp.outcomes == {"200": 1}


async def test_reset_restores_the_constructor_configuration() -> None:
    async with FakeProvider(seed=1, faults="500#1") as fp, httpx.AsyncClient(base_url=fp.url) as http:
        assert (await http.post("/chat/completions", json=CHAT)).status_code == 500
        fp.clear_faults()
        fp.reset()
        assert fp.log == [] and (await http.post("/chat/completions", json=CHAT)).status_code == 500
        assert fp.summary()["outcomes"] == {"500": 1}


# --- lifecycle and command line --------------------------------------------------------------

async def test_async_lifecycle_is_quick_and_stops_a_hang_in_flight() -> None:
    tasks_before = asyncio.all_tasks()
    started = time.monotonic()
    fp = FakeProvider(faults="hang")
    async with fp, httpx.AsyncClient(base_url=fp.url) as http:
        assert time.monotonic() - started < 5.0  # quick: wide for a loaded machine
        pending = asyncio.create_task(http.post("/chat/completions", json=CHAT, timeout=30))
        await asyncio.sleep(0.05)
        stopping = time.monotonic()
        await fp.aclose()
        assert time.monotonic() - stopping < 5.0  # not the request's 30 s
        with pytest.raises(httpx.TransportError):
            await pending
    assert asyncio.all_tasks() == tasks_before
    with pytest.raises(RuntimeError, match="aclose"):
        async with FakeProvider() as running:
            running.stop()
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(f"{fp.url}/models")


def test_sync_clients_against_a_provider_in_a_thread() -> None:
    with FakeProvider(faults="500#2") as fp, openai.OpenAI(base_url=fp.url, api_key="x", max_retries=0) as client:
        client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="gpt-4o", messages=USER)  # type: ignore[arg-type]
        fp.set_faults("")
        client.embeddings.create(model="text-embedding-3-small", input="x")
    assert fp.outcomes == {"200": 2, "500": 1}


def test_cli_main_serves_until_sigterm() -> None:
    code = "import sys; from tether.testing.fake_provider import main; sys.exit(main(sys.argv[1:]))"
    process = subprocess.Popen(
        [sys.executable, "-c", code, "--port", "0", "--seed", "1", "--faults", "500#1", "--latency", "1ms",
         "--models", "gpt-4o,other"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        assert "faults 500#1" in process.stdout.readline()
        assert "control:" in process.stdout.readline()
        with httpx.Client(base_url=url) as http:
            assert http.post("/chat/completions", json=CHAT).status_code == 500
            assert http.post("/chat/completions", json=CHAT).status_code == 200
            assert http.post("/chat/completions", json={**CHAT, "model": "nope"}).status_code == 404
            assert http.get(url.removesuffix("/v1") + "/_fake/log").json()["total"] == 3
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out == err == ""


def test_cli_rejects_a_bad_spec_and_a_taken_port(capsys: pytest.CaptureFixture[str]) -> None:
    from tether.testing.fake_provider import main

    assert main(["--faults", "429:lots"]) == 2
    assert "bad fault rule '429:lots'" in capsys.readouterr().err
    with FakeProvider() as fp:
        assert main(["--port", str(fp.port)]) == 1
    assert "cannot listen on 127.0.0.1" in capsys.readouterr().err


def test_parser_builds_into_a_subcommand() -> None:
    import argparse

    root = argparse.ArgumentParser(prog="tether")
    sub = root.add_subparsers(dest="command")
    build_parser(sub.add_parser("fake-provider"))
    args = root.parse_args(["fake-provider", "--seed", "3", "--faults", "429:0.1", "--models", "a,b"])
    assert (args.seed, args.faults, args.models, args.port, args.host) == (3, "429:0.1", "a,b", 0, "127.0.0.1")


def test_everything_exported_is_importable() -> None:
    for name in tether.testing.__all__:
        assert getattr(tether.testing, name) is not None
