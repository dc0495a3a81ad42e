"""The gateway's Gemini endpoints, in Gemini's exact wire shape over plain httpx, against the fake provider.

``POST /v1beta/models/{model}:generateContent`` and ``:streamGenerateContent?alt=sse`` with the
gateway key as Google's SDKs send it (``x-goog-api-key``) or as a bearer token, forwarded to a
``kind = "gemini"`` provider under the policy, in runs, with inferred tool spans from
``functionCall`` / ``functionResponse`` parts. The real google-genai SDK (not in this venv) is
pointed at ``tether gateway`` in ADK's venv: tests/frameworks/test_google_adk_gateway.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from tether.adapters.gateway import GatewayServer, run_for_trace
from tether.bus import Bus
from tether.middleware import PolicySet, ProviderConfig
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, data, gateway_config, kinds
from .test_gateway_runs import of, until

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

GOOGLE_KEY = "AIzaSy-upstream-google-key-0123456789"
ASK = {"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}
TOOLS = [{"functionDeclarations": [{"name": "get_weather", "description": "Weather for a city", "parameters": {
    "type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


@pytest.fixture
async def gateway(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[GatewayServer]:
    google = ProviderConfig("google", "gemini", fake.url.removesuffix("/v1") + "/v1beta", api_key=GOOGLE_KEY)
    config = gateway_config(fake, policies, providers={"google": google}, run_idle_s=30.0,
                            models={"gpt-*": "openai", "gemini-*": "google", "flash": "google:gemini-2.5-flash"})
    async with GatewayServer(config, bus, port=0, grace_s=1) as server:
        yield server


def client(server: GatewayServer, **headers: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=server.url, headers={"x-goog-api-key": GATEWAY_KEY, **headers}, timeout=30)


def spy_upstream(server: GatewayServer) -> list[tuple[str, dict[str, str]]]:
    """Each request the gateway sends upstream: its path and headers."""
    seen: list[tuple[str, dict[str, str]]] = []
    pool = server.gateway.upstreams.pool
    original = pool.request

    async def spy(method: str, origin: Any, path: str, headers: list[tuple[str, str]], body: bytes,
                  timeout_s: float) -> Any:
        seen.append((origin.prefix + path, dict(headers)))
        return await original(method, origin, path, headers, body, timeout_s)

    pool.request = spy  # type: ignore[method-assign]
    return seen


def sse(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


async def test_generate_content_after_a_rate_limit_and_a_stream(fake: FakeProvider, bus: Bus,
                                                                gateway: GatewayServer) -> None:
    fake.set_faults("429(0.1s)#1/gemini,503#3/gemini")
    seen = spy_upstream(gateway)
    trace = secrets.token_hex(16)
    headers = {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    async with client(gateway) as http:
        answer = await http.post(GENERATE, json={"contents": [ASK], "tools": TOOLS}, headers=headers)
        async with httpx.AsyncClient(base_url=gateway.url, headers={"authorization": f"Bearer {GATEWAY_KEY}"},
                                     timeout=30) as bearer:
            streamed = await bearer.post(STREAM.replace("gemini-2.5-flash", "flash") + "&key=tg-a-key-sent-in-the-url",
                                         json={"contents": [ASK]}, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["candidates"][0]["content"]["parts"][0]["functionCall"] == {
        "name": "get_weather", "args": {"city": "fake city"}}
    assert streamed.status_code == 200 and streamed.headers["content-type"].startswith("text/event-stream")
    chunks = sse(streamed.text)
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert len(chunks) > 1 and text.startswith("This is fake reply")
    assert [r.outcome for r in fake.log] == ["429", "200", "503", "200"], "each failure retried once, by tether"
    assert [path for path, _ in seen] == [GENERATE] * 2 + [STREAM] * 2, "the alias's model in the path; no key"
    for _, sent in seen:
        assert sent["x-goog-api-key"] == GOOGLE_KEY and "authorization" not in sent
        assert GATEWAY_KEY not in str(sent) and "tg-a-key" not in str(sent)
    events = await until(bus, run_for_trace("bot", trace), lambda ev: len(of(ev, "llm.call.completed")) == 2)
    assert kinds(events) == ["run.started", "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                             "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    requested, completed = data(events, "requested"), data(events, "completed")
    assert [(r.provider, r.model, r.operation, r.stream) for r in requested] == [
        ("google", "gemini-2.5-flash", "generate_content", False), ("google", "gemini-2.5-flash", "generate_content",
                                                                    True)]
    assert data(events, "attempt_failed")[0].error.code == "RESOURCE_EXHAUSTED"
    assert completed[1].response["candidates"][0]["content"]["parts"][0]["text"] == text
    assert completed[1].usage.output_tokens == chunks[-1]["usageMetadata"]["candidatesTokenCount"]
    assert {e.agentid for e in events} == {"bot"}


async def test_function_calls_without_ids_become_spans_by_name_and_order(bus: Bus, gateway: GatewayServer) -> None:
    trace = secrets.token_hex(16)
    run_id, headers = run_for_trace("bot", trace), {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"}
    async with client(gateway, **headers) as http:
        first = (await http.post(GENERATE, json={"contents": [ASK], "tools": TOOLS})).json()
        asked = first["candidates"][0]["content"]
        answered = {"role": "user", "parts": [{"functionResponse": {"name": "get_weather",
                                                                    "response": {"result": "18 C"}}}]}
        history = [ASK, asked, answered]
        said = sse((await http.post(STREAM, json={"contents": history, "tools": TOOLS})).text)
        words = {"role": "model", "parts": [{"text": "".join(c["candidates"][0]["content"]["parts"][0]["text"]
                                                              for c in said)}]}
        history += [words, {"role": "user", "parts": [{"text": "And in Rome?"}]}]
        again = (await http.post(GENERATE, json={"contents": history, "tools": TOOLS})).json()
        failed = {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {
            "error": "the weather service is down"}}}]}
        history += [again["candidates"][0]["content"], failed]
        last = await http.post(GENERATE, json={"contents": history, "tools": TOOLS},
                               headers={"x-tether-run-end": "ok"})
    assert "functionCall" in asked["parts"][0] and "functionCall" in again["candidates"][0]["content"]["parts"][0]
    assert last.status_code == 200 and "text" in last.json()["candidates"][0]["content"]["parts"][0]
    events = await until(bus, run_id, lambda ev: bool(of(ev, "run.finished")) and len(
        of(ev, "tool.call.completed") + of(ev, "tool.call.failed")) == 2)
    requested = of(events, "tool.call.requested")
    assert [(r.data.tool, r.data.arguments, r.data.tool_call_id, r.data.inferred) for r in requested] == [
        ("get_weather", {"city": "fake city"}, None, True)] * 2, "Gemini gave no id: none is recorded"
    [completed], [failure] = of(events, "tool.call.completed"), of(events, "tool.call.failed")
    assert completed.data.call_id == requested[0].data.call_id and completed.data.result == {"result": "18 C"}
    assert failure.data.call_id == requested[1].data.call_id and failure.data.error.type == "ToolError"
    assert "service is down" in failure.data.error.message
    calls = of(events, "llm.call.completed")
    assert requested[0].time == calls[0].time and requested[1].time == calls[2].time, "each from its own answer"
    assert completed.time == of(events, "llm.call.requested")[1].time
    assert failure.time == of(events, "llm.call.requested")[3].time
    assert of(events, "run.finished")[0].data.ended_by == "header"


async def test_refusals_and_give_ups_are_google_error_bodies(fake: FakeProvider, bus: Bus,
                                                             gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        ask = {"contents": [ASK]}
        refused = {
            "no key": await http.post(GENERATE, json=ask),
            "bad key": await http.post(GENERATE, json=ask, headers={"x-goog-api-key": "tg-not-a-key-of-this"}),
            "bad key in the url": await http.post(GENERATE + "?key=tg-not-a-key-of-this", json=ask),
        }
        key = {"x-goog-api-key": GATEWAY_KEY}
        refused |= {
            "not json": await http.post(GENERATE, content=b"[1]", headers=key),
            "unknown model": await http.post(GENERATE.replace("gemini-2.5-flash", "llama-3"), json=ask, headers=key),
            "other format": await http.post(GENERATE.replace("gemini-2.5-flash", "gpt-4o"), json=ask, headers=key),
            "unknown method": await http.post(GENERATE.replace("generateContent", "embedContent"), json=ask,
                                              headers=key),
        }
        fake.set_faults("500#1-3/gemini")
        seen = spy_upstream(gateway)
        gave_up = await http.post(GENERATE, json=ask, headers={**key, "x-tether-run-id": "gemini-down"})
        counted = await http.post(GENERATE.replace("generateContent", "countTokens"), json=ask,
                                  headers={**key, "x-tether-run-id": "gemini-down"})
    statuses = {name: (r.status_code, r.json()["error"]["status"]) for name, r in refused.items()}
    assert statuses == {"no key": (401, "UNAUTHENTICATED"), "bad key": (401, "UNAUTHENTICATED"),
                        "bad key in the url": (401, "UNAUTHENTICATED"), "not json": (400, "INVALID_ARGUMENT"),
                        "unknown model": (404, "NOT_FOUND"), "other format": (404, "NOT_FOUND"),
                        "unknown method": (404, "NOT_FOUND")}
    assert all(r.headers["x-should-retry"] == "false" for r in refused.values())
    assert "x-goog-api-key" in refused["no key"].json()["error"]["message"]
    assert "OpenAI format" in refused["other format"].json()["error"]["message"]
    assert ":generateContent" in refused["unknown method"].json()["error"]["message"]
    assert [r.outcome for r in fake.log] == ["500", "500", "500"], "nothing refused reached the provider"
    assert gave_up.status_code == 500 and gave_up.json()["error"]["status"] == "INTERNAL"
    assert gave_up.headers["x-should-retry"] == "false" and gave_up.headers["retry-after"] == "7"
    assert seen[-1][0] == GENERATE.replace("generateContent", "countTokens"), "countTokens is passed through"
    assert counted.status_code == 404, "(which the fake provider does not serve)"
    events = await until(bus, "gemini-down", lambda ev: bool(of(ev, "llm.call.failed")))
    assert [k for k in kinds(events) if k != "call.dead_lettered"] == [
        "run.started", "llm.call.requested", *["llm.call.attempt_failed"] * 3, "llm.call.failed"], \
        "countTokens is no LLM call"


async def test_a_resumed_run_replays_its_gemini_call(fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    ask = {"contents": [ASK], "tools": TOOLS}
    async with httpx.AsyncClient(base_url=gateway.url, headers={"x-tether-run-id": "gemini-resumed"}) as http:
        first = await http.post(GENERATE + f"?key={GATEWAY_KEY}", json=ask)  # Google's other way to send a key
        again = await http.post(GENERATE, json=ask, headers={"x-tether-resume": "1", "x-goog-api-key": GATEWAY_KEY})
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json() and len(fake.log) == 1, "replayed from the journal, not sent again"
    events = await until(bus, "gemini-resumed", lambda ev: bool(of(ev, "call.replayed")))
    [replayed] = of(events, "call.replayed")
    assert replayed.data.original_call_id == data(events, "llm.call.completed")[0].call_id


async def test_a_stream_broken_after_its_first_byte_ends_with_a_google_error_chunk(
        fake: FakeProvider, bus: Bus, gateway: GatewayServer) -> None:
    fake.set_faults("reset_mid_stream(2)/gemini")
    async with client(gateway, **{"x-tether-run-id": "gemini-broken"}) as http:
        answer = await http.post(STREAM, json={"contents": [ASK]})
    chunks = sse(answer.text)
    assert answer.status_code == 200 and "candidates" in chunks[0], "the stream had begun"
    last = answer.text.strip().splitlines()[-1]
    assert last.startswith('data: {"error":'), "what google-genai raises its APIError on"
    assert chunks[-1]["error"]["status"] == "INTERNAL" and "stream broke" in chunks[-1]["error"]["message"]
    assert len(fake.log) == 1, "after the first byte nothing is retried"
    events = await until(bus, "gemini-broken", lambda ev: bool(of(ev, "llm.call.failed")))
    assert of(events, "llm.call.failed")[0].data.error is not None
