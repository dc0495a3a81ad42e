"""Whole runs and inferred tool spans at the gateway, with the real SDKs against the fake provider.

An agent that only points its base URL at the gateway gets a run per trace (or per
``x-tether-run-id``) that starts at its first call and ends when it says so (its own
``run.finished``, or ``x-tether-run-end``) or when it goes idle, and resumes if it comes back;
every tool call its model asks for becomes a tool span once the next request carries the result.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest

from tether.adapters.gateway import GatewayServer, run_for_trace
from tether.bus import Bus
from tether.middleware import PolicySet, ProviderConfig
from tether.schemas import Event
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, gateway_config, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

CHAT = [{"role": "user", "content": "What is the weather in Paris?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
RESPONSES_TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather for a city",
                    "parameters": TOOLS[0]["function"]["parameters"]}]  # type: ignore[index]
CLAUDE_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
                 "input_schema": TOOLS[0]["function"]["parameters"]}]  # type: ignore[index]


@contextlib.asynccontextmanager
async def serving(fake: FakeProvider, bus: Bus, policies: PolicySet, **options: Any) -> AsyncIterator[GatewayServer]:
    async with GatewayServer(gateway_config(fake, policies, **options), bus, port=0, grace_s=1) as server:
        yield server


@pytest.fixture
async def gateway(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[GatewayServer]:
    async with serving(fake, bus, policies, run_idle_s=30.0) as server:
        yield server


def trace_headers() -> tuple[str, dict[str, str]]:
    trace = secrets.token_hex(16)
    return run_for_trace("bot", trace), {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}


async def until(bus: Bus, run_id: str, done: Callable[[list[Event]], bool], timeout: float = 20.0) -> list[Event]:
    with anyio.fail_after(timeout):
        while True:
            events = await run_events(bus, run_id)
            if done(events):
                return events
            await asyncio.sleep(0.05)


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == f"tether.{kind}"]


def tool_spans_done(count: int) -> Callable[[list[Event]], bool]:
    return lambda events: len(of(events, "tool.call.completed") + of(events, "tool.call.failed")) >= count


async def test_chat_completions_streamed_tool_call_becomes_a_span(bus: Bus, gateway: GatewayServer) -> None:
    run_id, headers = trace_headers()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="gpt-4o", messages=CHAT, tools=TOOLS,  # type: ignore[arg-type]
                                                   stream=True, extra_headers=headers)
        chunks = [c async for c in stream]
        call = next(c.choices[0].delta.tool_calls[0] for c in chunks if c.choices and c.choices[0].delta.tool_calls)
        arguments = "".join(c.choices[0].delta.tool_calls[0].function.arguments or "" for c in chunks
                            if c.choices and c.choices[0].delta.tool_calls)
        result = json.dumps({"city": "Paris", "temperature_c": 18})
        follow = [*CHAT, {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
            {"role": "tool", "tool_call_id": call.id, "content": result}]
        answer = await sdk.chat.completions.create(model="gpt-4o", messages=follow,  # type: ignore[arg-type]
                                                   tools=TOOLS, extra_headers={**headers, "x-tether-run-end": "ok"})
    assert answer.choices[0].message.content
    events = await until(bus, run_id, lambda ev: bool(of(ev, "run.finished")) and tool_spans_done(1)(ev))
    [requested] = of(events, "tool.call.requested")
    [completed] = of(events, "tool.call.completed")
    assert requested.data.inferred and completed.data.inferred
    assert requested.data.tool == "get_weather" and requested.data.tool_call_id == call.id
    assert requested.data.arguments == json.loads(arguments)
    assert completed.data.result == result and completed.data.call_id == requested.data.call_id
    asked, answered = of(events, "llm.call.completed")[0], of(events, "llm.call.requested")[1]
    assert requested.time == asked.time, "the span starts when the answer asking for it ended"
    assert completed.time == answered.time, "and ends when the request carrying its result came"
    assert completed.data.duration_ms == pytest.approx((answered.time - asked.time).total_seconds() * 1000)
    [finished] = of(events, "run.finished")
    assert (finished.data.status, finished.data.ended_by) == ("ok", "header")
    assert kinds(events)[0] == "run.started" and kinds(events)[-1] == "run.finished"
    assert finished.time >= of(events, "llm.call.completed")[1].time, "the run ends once its last call is answered"


async def test_responses_function_call_output_that_reads_as_an_error(bus: Bus, gateway: GatewayServer) -> None:
    run_id, headers = trace_headers()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        first = await sdk.responses.create(model="gpt-4o", input="Weather in Paris?", tools=RESPONSES_TOOLS,  # type: ignore[arg-type]
                                           extra_headers=headers)
        [call] = [item for item in first.output if item.type == "function_call"]
        error = json.dumps({"status": "error", "tool": "get_weather", "error": "upstream weather API timed out"})
        await sdk.responses.create(model="gpt-4o", tools=RESPONSES_TOOLS, extra_headers=headers,  # type: ignore[arg-type]
                                   input=[{"role": "user", "content": "Weather in Paris?"},
                                          {"type": "function_call", "call_id": call.call_id, "name": call.name,
                                           "arguments": call.arguments},
                                          {"type": "function_call_output", "call_id": call.call_id, "output": error}])
    events = await until(bus, run_id, tool_spans_done(1))
    [failed] = of(events, "tool.call.failed")
    assert failed.data.inferred and failed.data.error.type == "ToolError"
    assert "timed out" in failed.data.error.message and failed.data.result == error
    assert of(events, "tool.call.requested")[0].data.tool_call_id == call.call_id
    assert not of(events, "tool.call.completed")


async def test_anthropic_tool_result_is_error_then_the_agent_ends_the_run(bus: Bus, gateway: GatewayServer) -> None:
    run_id, headers = trace_headers()
    async with anthropic.AsyncAnthropic(base_url=gateway.url, api_key=GATEWAY_KEY, max_retries=0) as sdk:
        async with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=256, messages=CHAT,  # type: ignore[arg-type]
                                       tools=CLAUDE_TOOLS, extra_headers=headers) as stream:  # type: ignore[arg-type]
            message = await stream.get_final_message()
        [use] = [b for b in message.content if b.type == "tool_use"]
        said = [b.model_dump() for b in message.content]
        await sdk.messages.create(model="claude-haiku-4-5", max_tokens=64, tools=CLAUDE_TOOLS,  # type: ignore[arg-type]
                                  extra_headers=headers, messages=[
                                      *CHAT, {"role": "assistant", "content": said},
                                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                                    "content": "city not found", "is_error": True}]}])
    async with httpx.AsyncClient() as http:  # the agent says its run is over (as the OpenClaw plugin does)
        sent = await http.post(gateway.url + "/v1/events", headers={
            "authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/cloudevents+json", **headers},
            json={"specversion": "1.0", "id": secrets.token_hex(8), "source": "urn:agent:test",
                  "type": "tether.run.finished", "data": {"status": "ok"}})
    assert sent.status_code == 202
    events = await until(bus, run_id, tool_spans_done(1))
    [failed] = of(events, "tool.call.failed")
    assert failed.data.inferred and failed.data.result == "city not found"
    assert of(events, "tool.call.requested")[0].data.arguments == use.input
    [finished] = of(events, "run.finished")
    assert finished.data.ended_by == "agent", "the agent's own end, not another from the gateway"


async def test_a_result_that_never_comes_ends_with_the_idle_run_which_then_resumes(
        fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    run_id, headers = trace_headers()
    async with serving(fake, bus, policies, run_idle_s=0.4) as server, \
            openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        started = time.time()
        first = await sdk.chat.completions.create(model="gpt-4o", messages=CHAT, tools=TOOLS,  # type: ignore[arg-type]
                                                  extra_headers=headers)
        assert first.choices[0].message.tool_calls
        events = await until(bus, run_id, lambda ev: bool(of(ev, "run.finished")))
        assert time.time() - started >= 0.4
        [missing] = of(events, "tool.call.failed")
        assert missing.data.error.type == "ToolResultMissing" and missing.data.inferred
        [finished] = of(events, "run.finished")
        assert (finished.data.status, finished.data.ended_by) == ("ok", "idle")
        assert missing.time == finished.time, "the span ends when the run ends"
        await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "back"}],
                                          extra_headers=headers)
        events = await until(bus, run_id, lambda ev: len(of(ev, "run.finished")) == 2)
    starts = of(events, "run.started")
    assert len(starts) == 2 and starts[1].data.metadata["resumed"] is True
    assert starts[1].data.metadata["resumed_after"] == "idle"
    assert kinds(events).index("run.started", 1) > kinds(events).index("run.finished"), "resumed after its end"
    assert len(of(events, "llm.call.completed")) == 2, "both calls in the one run"


async def test_a_named_run_starts_at_its_first_call_and_ends_by_header(bus: Bus, gateway: GatewayServer) -> None:
    run_id = "named-" + secrets.token_hex(4)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        await sdk.chat.completions.create(model="gpt-4o", messages=CHAT, extra_headers={"x-tether-run-id": run_id})
        await sdk.chat.completions.create(model="gpt-4o", messages=CHAT, extra_headers={
            "x-tether-run-id": run_id, "x-tether-run-end": "error"})
    events = await until(bus, run_id, lambda ev: bool(of(ev, "run.finished")))
    assert kinds(events) == ["run.started", *["llm.call.requested", "llm.call.completed"] * 2, "run.finished"]
    assert (of(events, "run.finished")[0].data.status, of(events, "run.finished")[0].data.ended_by) == \
        ("error", "header")


async def test_a_bad_run_end_header_is_refused_before_anything_is_sent(fake: FakeProvider,
                                                                       gateway: GatewayServer) -> None:
    before = len(fake.log)
    async with httpx.AsyncClient(base_url=gateway.url + "/v1") as http:
        body = {"model": "gpt-4o", "messages": CHAT}
        bogus = await http.post("/chat/completions", json=body, headers={
            "authorization": f"Bearer {GATEWAY_KEY}", "x-tether-run-id": "r-1", "x-tether-run-end": "done"})
        runless = await http.post("/chat/completions", json=body, headers={
            "authorization": f"Bearer {GATEWAY_KEY}", "x-tether-run-end": "ok"})
    assert bogus.status_code == 400 and bogus.json()["error"]["code"] == "invalid_run_end"
    assert "ok, error, cancelled" in bogus.json()["error"]["message"]
    assert runless.status_code == 400 and "x-tether-run-id" in runless.json()["error"]["message"]
    assert len(fake.log) == before, "nothing went upstream"


async def test_a_tool_call_the_agent_reports_itself_is_not_inferred_too(bus: Bus, gateway: GatewayServer) -> None:
    run_id, headers = trace_headers()
    auth = {"authorization": f"Bearer {GATEWAY_KEY}", **headers}
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk, \
            httpx.AsyncClient() as http:
        first = await sdk.chat.completions.create(model="gpt-4o", messages=CHAT, tools=TOOLS,  # type: ignore[arg-type]
                                                  extra_headers=headers)
        [call] = first.choices[0].message.tool_calls or []
        span = secrets.token_hex(8)
        for kind, extra in (("requested", {"arguments": {"city": "Paris"}, "tool_call_id": call.id}),
                            ("completed", {"result": "18 C", "duration_ms": 12.5})):
            sent = await http.post(gateway.url + "/v1/events", headers={
                **auth, "content-type": "application/cloudevents+json"}, json={
                "specversion": "1.0", "id": secrets.token_hex(8), "source": "urn:agent:plugin",
                "type": f"tether.tool.call.{kind}", "data": {"call_id": span, "tool": "get_weather", **extra}})
            assert sent.status_code == 202, sent.text
        follow = [*CHAT, first.choices[0].message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "18 C"}]
        await sdk.chat.completions.create(model="gpt-4o", messages=follow, tools=TOOLS,  # type: ignore[arg-type]
                                          extra_headers={**headers, "x-tether-run-end": "ok"})
    events = await until(bus, run_id, lambda ev: bool(of(ev, "run.finished")))
    tools = of(events, "tool.call.requested")
    assert [(t.data.call_id, t.data.inferred) for t in tools] == [(span, False)], "the agent's span only"
    assert [e.data.call_id for e in of(events, "tool.call.completed")] == [span]


# -- parallel tool calls: an upstream that asks for two at once ---------------------------------------

PARALLEL = [("call_a", "get_weather", '{"city":"Paris"}'), ("call_b", "get_time", '{"zone":"CET"}')]


def parallel_stream() -> bytes:
    head = {"id": "chatcmpl-par", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o"}
    chunks = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": None, "tool_calls": [
        {"index": i, "id": cid, "type": "function", "function": {"name": name, "arguments": ""}}
        for i, (cid, name, _) in enumerate(PARALLEL)]}, "finish_reason": None}]}]
    chunks += [{**head, "choices": [{"index": 0, "delta": {"tool_calls": [
        {"index": i, "function": {"arguments": args}}]}, "finish_reason": None}]} for i, (_, _, args) in
        enumerate(PARALLEL)]
    chunks.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    chunks.append({**head, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}})
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


@contextlib.asynccontextmanager
async def canned_upstream() -> AsyncIterator[str]:
    """A provider that answers every request with a streamed chat completion asking for two tools."""
    body = parallel_stream()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


async def test_parallel_tool_calls_each_become_a_span(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    run_id, headers = trace_headers()
    async with canned_upstream() as url:
        provider = {"parallel": ProviderConfig("parallel", "openai", url, api_key="sk-parallel-0123456789")}
        async with GatewayServer(gateway_config(fake, policies, providers=provider,
                                                models={"par-agent": "parallel:gpt-4o"}), bus, port=0,
                                 grace_s=1) as server, \
                openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
            stream = await sdk.chat.completions.create(model="par-agent", messages=CHAT, stream=True,  # type: ignore[arg-type]
                                                       tools=TOOLS, extra_headers=headers)
            assert len([c async for c in stream]) == 4  # the usage chunk the gateway asked for is left out
            follow = [*CHAT, {"role": "assistant", "content": None, "tool_calls": [
                {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                for cid, name, args in PARALLEL]},
                {"role": "tool", "tool_call_id": "call_b", "content": "Error: unknown zone CET"},
                {"role": "tool", "tool_call_id": "call_a", "content": "18 C"}]
            await sdk.chat.completions.create(model="par-agent", messages=follow, stream=True,  # type: ignore[arg-type]
                                              tools=TOOLS, extra_headers=headers)
            events = await until(bus, run_id, tool_spans_done(2))
    requested = {e.data.tool_call_id: e.data for e in of(events, "tool.call.requested")}
    assert {k: (v.tool, v.arguments) for k, v in requested.items()} == {
        "call_a": ("get_weather", {"city": "Paris"}), "call_b": ("get_time", {"zone": "CET"})}
    [ok] = of(events, "tool.call.completed")
    [failed] = of(events, "tool.call.failed")
    assert ok.data.call_id == requested["call_a"].call_id and ok.data.result == "18 C"
    assert failed.data.call_id == requested["call_b"].call_id and failed.data.error.type == "ToolError"
    assert len({e.data.call_id for e in of(events, "tool.call.requested")}) == 2


# -- the agent's own usage beside what the gateway recorded (the OpenClaw plugin's llm_output) ---------


async def test_usage_the_agent_reports_is_checked_against_the_runs_calls(bus: Bus, gateway: GatewayServer) -> None:
    run_id, headers = trace_headers()
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        answers = [await sdk.chat.completions.create(model="gpt-4o", messages=CHAT, extra_headers=headers)
                   for _ in range(2)]
    counted = {"input_tokens": sum(a.usage.prompt_tokens for a in answers if a.usage),
               "output_tokens": sum(a.usage.completion_tokens for a in answers if a.usage)}

    async def report(usage: dict[str, int]) -> None:
        async with httpx.AsyncClient() as http:
            sent = await http.post(gateway.url + "/v1/events", headers={
                "authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/cloudevents+json", **headers},
                json={"specversion": "1.0", "id": secrets.token_hex(8), "source": "urn:agent:test",
                      "type": "tether.llm.usage.reported",
                      "data": {"reporter": "openclaw", "usage": usage, "mismatch": ["made up by the agent"]}})
        assert sent.status_code == 202, sent.text

    await report(counted)
    await report({**counted, "output_tokens": counted["output_tokens"] + 7})  # an agent that counts differently
    events = await until(bus, run_id, lambda ev: len(of(ev, "llm.usage.reported")) == 2)
    agrees, differs = (e.data for e in of(events, "llm.usage.reported"))
    assert agrees.recorded_calls == 2 and agrees.recorded.input_tokens == counted["input_tokens"]
    assert agrees.mismatch == (), "the counts agree"
    assert differs.mismatch == (f"output_tokens: openclaw counted {counted['output_tokens'] + 7}, "
                                f"tether recorded {counted['output_tokens']}",)
