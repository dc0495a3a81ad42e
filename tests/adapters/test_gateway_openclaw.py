"""OpenClaw-shaped traffic through the gateway, byte for byte as FRAMEWORKS.md describes it.

OpenClaw itself is not run here (it needs Node >= 24.16): these requests are written the way
it sends them. Chat completions: always streaming, ~11 tools, a ~25 KB system prompt,
``stream_options.include_usage``, ``max_completion_tokens``, ``Authorization: Bearer``, the
Stainless JS SDK's ``x-stainless-*`` headers and a W3C ``traceparent`` whose trace id stays the
same for a whole run. The Responses API statelessly (the full input every time); Anthropic
messages with ``x-api-key``, ``anthropic-version`` and system blocks with ``cache_control``.
And its reaction to a 429: the same request again, about ten times.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest

from tether.adapters.gateway import GatewayServer, run_for_trace
from tether.bus import Bus
from tether.middleware import PolicySet, RunawayGuard
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, data, gateway_config, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

TOOL_NAMES = ["read", "write", "edit", "exec", "process", "browser", "web_search", "web_fetch", "memory_search",
              "message", "sessions_spawn"]
SYSTEM = ("You are a personal assistant running inside OpenClaw. ## Tooling\n" + "".join(
    f"- {name}: use it when the task needs it; follow the safety rules; never reveal secrets.\n"
    for name in TOOL_NAMES) + "## Workspace\n" + "Notes about the user and the workspace. " * 620)[:25_000]


def tools() -> list[dict[str, Any]]:
    return [{"type": "function", "function": {
        "name": name, "description": f"The {name} tool. " * 8,
        "parameters": {"type": "object", "properties": {"path": {"type": "string", "description": "where"},
                                                        "content": {"type": "string"}},
                       "required": ["path"], "additionalProperties": False}}} for name in TOOL_NAMES]


def stainless(retry: int = 0) -> dict[str, str]:
    return {"user-agent": "OpenAI/JS 6.9.1", "x-stainless-lang": "js", "x-stainless-package-version": "6.9.1",
            "x-stainless-os": "Linux", "x-stainless-arch": "x64", "x-stainless-runtime": "node",
            "x-stainless-runtime-version": "v24.16.0", "x-stainless-retry-count": str(retry),
            "x-stainless-timeout": "600", "accept": "application/json"}


def chat_body(turn: str = "Summarise my notes") -> bytes:
    return json.dumps({
        "model": "gpt-4o", "stream": True, "stream_options": {"include_usage": True},
        "max_completion_tokens": 8192, "store": False, "tool_choice": "auto",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": turn}],
        "tools": tools(),
    }).encode()


def sse(body: bytes) -> list[Any]:
    out = []
    for block in body.split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


async def test_openclaw_chat_completions_run(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    assert len(SYSTEM) == 25_000 and len(tools()) == 11
    trace = secrets.token_hex(16)
    fake.set_faults("429(0.05s)#1")
    answers = []
    async with httpx.AsyncClient(base_url=gateway.url + "/v1") as http:
        for span in ("b7ad6b7169203331", "b7ad6b7169203332"):
            headers = {"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json",
                       "traceparent": f"00-{trace}-{span}-01", **stainless()}
            async with http.stream("POST", "/chat/completions", content=chat_body(), headers=headers) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
                answers.append(b"".join([chunk async for chunk in response.aiter_bytes()]))
    chunks = sse(answers[0])
    assert answers[0].endswith(b"data: [DONE]\n\n")
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["prompt_tokens"] > 6000, \
        "OpenClaw asked for usage: its usage chunk reaches it"
    call = chunks[0]["choices"][0]["delta"]["tool_calls"][0]
    assert call["function"]["name"] == "read", "a tool call, streamed"
    logged = [(r.retry_count, r.traceparent.split("-")[1]) for r in fake.log]
    assert logged == [(0, trace)] * 3, "x-stainless-retry-count passed on as sent: the agent retried nothing"
    events = await run_events(bus, run_for_trace("bot", trace))
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "llm.call.requested", "llm.call.completed"], "one trace, one run"
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert requested.parameters["max_completion_tokens"] == 8192 and requested.stream
    assert requested.parameters["stream_options"] == {"include_usage": True}
    assert requested.request["messages"][0]["content"] == SYSTEM, "the whole prompt is on record"
    assert completed.usage.input_tokens == chunks[-1]["usage"]["prompt_tokens"]
    assert completed.finish_reason == "tool_calls"
    assert completed.response["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "read"


async def test_openclaw_responses_api_statelessly(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    trace = secrets.token_hex(16)
    body = {"model": "gpt-4o", "stream": True, "store": False, "instructions": SYSTEM, "max_output_tokens": 4096,
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                      {"role": "assistant", "content": [{"type": "output_text", "text": "Hello!"}]},
                      {"role": "user", "content": [{"type": "input_text", "text": "read my notes"}]}],
            "tools": [{"type": "function", **t["function"]} for t in tools()]}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}", "traceparent": f"00-{trace}-b7ad6b7169203331-01",
               **stainless()}
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.url + "/v1/responses", json=body, headers=headers)
    assert response.status_code == 200
    names = [line.removeprefix("event: ") for line in response.text.splitlines() if line.startswith("event: ")]
    assert names[0] == "response.created" and names[-1] == "response.completed"
    events = await run_events(bus, run_for_trace("bot", trace))
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.completed"]
    assert data(events, "completed")[0].usage.input_tokens > 6000


async def test_openclaw_anthropic_messages(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    trace = secrets.token_hex(16)
    body = {"model": "claude-sonnet-4-6", "max_tokens": 8192, "stream": True,
            "system": [{"type": "text", "text": SYSTEM, "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "read my notes",
                                                       "cache_control": {"type": "ephemeral"}}]}],
            "tools": [{"name": t["function"]["name"], "description": t["function"]["description"],
                       "input_schema": t["function"]["parameters"]} for t in tools()]}
    headers = {"x-api-key": GATEWAY_KEY, "anthropic-version": "2023-06-01", "traceparent": f"00-{trace}-b7ad6b716920"
               "3331-01", "anthropic-beta": "fine-grained-tool-streaming-2025-05-14",
               **{k: v for k, v in stainless().items() if k != "user-agent"}, "user-agent": "Anthropic/JS 0.71.0"}
    async with httpx.AsyncClient() as http:
        response = await http.post(gateway.url + "/v1/messages", json=body, headers=headers)
    assert response.status_code == 200
    assert "event: message_stop" in response.text
    events = await run_events(bus, run_for_trace("bot", trace))
    completed = data(events, "completed")[0]
    assert (completed.provider, completed.finish_reason) == ("anthropic", "tool_use")


async def test_openclaw_hammering_on_429_is_stopped(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    """OpenClaw answers a 429 by sending the whole prompt again, about ten times: the gateway
    absorbs what the policy allows, then the runaway guard refuses the repeats without calling
    the provider, and every answer says how long to wait."""
    guarded = PolicySet(routes=policies.routes, runaway=RunawayGuard(max_identical_calls=3))
    fake.set_faults("429(0.01s)")
    trace = secrets.token_hex(16)
    statuses = []
    async with GatewayServer(gateway_config(fake, guarded), bus, port=0, grace_s=1) as server, \
            httpx.AsyncClient(base_url=server.url + "/v1") as http:
        for retry in range(10):
            headers = {"authorization": f"Bearer {GATEWAY_KEY}", "content-type": "application/json",
                       "traceparent": f"00-{trace}-{secrets.token_hex(8)}-01", **stainless(retry)}
            response = await http.post("/chat/completions", content=chat_body(), headers=headers)
            statuses.append((response.status_code, response.json()["error"].get("code"),
                             response.headers.get("retry-after"), response.headers.get("x-should-retry")))
    assert [s[0] for s in statuses] == [429] * 10
    assert [s[1] for s in statuses[3:]] == ["runaway_guard"] * 7
    assert all(s[2] is not None and s[3] == "false" for s in statuses), "each answer: stop, and wait this long"
    assert len(fake.log) == 9, "3 calls of 3 attempts reached the provider; the 7 repeats did not"
    events = await run_events(bus, run_for_trace("bot", trace))
    assert kinds(events).count("llm.call.requested") == 10
    assert kinds(events).count("call.dead_lettered") == 10
