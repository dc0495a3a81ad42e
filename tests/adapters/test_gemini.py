"""Gemini's wire format in tether's HTTP path: ``models/<model>:generateContent`` and
``:streamGenerateContent?alt=sse`` through tether's httpx transport, against the fake provider's
Gemini endpoints (the real google-genai SDK is tested in ADK's venv: tests/frameworks/test_google_adk.py)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import httpx
import pytest

import tether
from tether.adapters import AsyncTetherTransport, conversation
from tether.adapters._wire import operation_of, parse_request
from tether.bus import Bus
from tether.middleware import FallbackPolicy, PolicySet, RunawayGuard, StreamAccumulator, classify_http, usage_of
from tether.pricing import estimate_tokens, price
from tether.testing.fake_provider import FakeProvider

from .conftest import data, fast_policies, kinds, run_events

ASK = {"contents": [{"role": "user", "parts": [{"text": "What is the weather in Paris?"}]}],
       "generationConfig": {"temperature": 0.2}}
TOOLS = [{"functionDeclarations": [{"name": "get_weather", "parameters": {
    "type": "OBJECT", "properties": {"city": {"type": "STRING"}}, "required": ["city"]}}]}]
GENERATE = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


def client(fake: FakeProvider, bus: Bus, policies: PolicySet, **options: object) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=fake.url.removesuffix("/v1"),
                             transport=AsyncTetherTransport(bus=bus, policies=policies, **options))  # type: ignore[arg-type]


@pytest.fixture
async def gemini(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[httpx.AsyncClient]:
    async with client(fake, bus, policies) as http:
        yield http


@pytest.mark.anyio
@pytest.mark.nats
async def test_generate_content_after_a_rate_limit_waits_its_retry_info(
        fake: FakeProvider, bus: Bus, gemini: httpx.AsyncClient) -> None:
    fake.set_faults("429(0.2s)#1/gemini")  # Gemini's 429 says how long to wait in its body only
    async with tether.run(agent="gemini-bot", bus=bus) as run:
        answer = await gemini.post(GENERATE, json={**ASK, "tools": TOOLS})
    assert answer.status_code == 200
    call = answer.json()["candidates"][0]["content"]["parts"][0]["functionCall"]
    assert call == {"name": "get_weather", "args": {"city": "fake city"}}
    assert [r.outcome for r in fake.log] == ["429", "200"]
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed"]
    requested, failed, completed = data(events, "requested")[0], data(events, "attempt_failed")[0], \
        data(events, "completed")[0]
    assert (requested.provider, requested.operation, requested.model, requested.stream) == (
        "gemini", "generate_content", "gemini-2.5-flash", False)
    assert requested.parameters == {"generationConfig": {"temperature": 0.2}}, "the conversation and tools apart"
    assert failed.error.code == "RESOURCE_EXHAUSTED" and failed.retry_in_s == pytest.approx(0.2, abs=0.01)
    usage = answer.json()["usageMetadata"]
    assert (completed.usage.input_tokens, completed.usage.output_tokens) == (
        usage["promptTokenCount"], usage["candidatesTokenCount"])
    assert completed.finish_reason == "STOP"
    assert price(requested.provider, requested.model, completed.usage).priced, "genai-prices knows Gemini"


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_stream_after_server_errors_is_recorded_whole(
        fake: FakeProvider, bus: Bus, gemini: httpx.AsyncClient) -> None:
    fake.set_faults("503#1/gemini,500#2/gemini")
    async with tether.run(bus=bus) as run, gemini.stream("POST", STREAM, json=ASK) as answer:
        chunks = [json.loads(line[6:]) async for line in answer.aiter_lines() if line.startswith("data: ")]
    assert answer.status_code == 200 and len(chunks) > 3
    text = "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks)
    assert [r.outcome for r in fake.log] == ["503", "500", "200"]
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.attempt_failed",
                                   "llm.call.completed"]
    assert data(events, "requested")[0].stream is True
    assert [f.error.code for f in data(events, "attempt_failed")] == ["UNAVAILABLE", "INTERNAL"]
    completed = data(events, "completed")[0]
    last = chunks[-1]["usageMetadata"]
    assert completed.usage.output_tokens == last["candidatesTokenCount"] == len(chunks), "the last chunk's count"
    assert completed.usage.input_tokens == last["promptTokenCount"]
    assert completed.response["candidates"][0]["content"]["parts"] == [{"text": text}], "one answer, rebuilt"
    assert completed.finish_reason == "STOP" and completed.ttft_ms is not None and len(completed.chunks) == len(chunks)


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_refusal_is_a_gemini_error_and_nothing_is_sent(fake: FakeProvider, bus: Bus) -> None:
    guarded = PolicySet(routes=fast_policies().routes, runaway=RunawayGuard(max_calls_per_run=1))
    async with client(fake, bus, guarded) as gemini, tether.run(bus=bus) as run:
        first = await gemini.post(GENERATE, json=ASK)
        refused = await gemini.post(GENERATE, json=ASK)
    assert first.status_code == 200 and refused.status_code == 429
    error = refused.json()["error"]
    assert (error["code"], error["status"]) == (429, "RESOURCE_EXHAUSTED") and "runaway" in error["message"]
    assert refused.headers["x-should-retry"] == "false"
    assert len(fake.log) == 1, "the refused call never reached the provider"
    failed = data(await run_events(bus, run.run_id), "llm.call.failed")
    assert [f.error.type for f in failed] == ["RunawayGuard"]


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_gemini_call_never_falls_back_to_a_model_its_url_does_not_name(fake: FakeProvider, bus: Bus) -> None:
    fast = fast_policies().routes["*"]
    other = dataclasses.replace(fast, fallback=FallbackPolicy(targets=("gemini:gemini-2.0-flash",)))
    policies = PolicySet(routes={**fast_policies().routes, "gemini:gemini-2.5-flash": other},
                         runaway=fast_policies().runaway)
    fake.set_faults("500/gemini")
    async with client(fake, bus, policies) as gemini, tether.run(bus=bus) as run:
        answer = await gemini.post(GENERATE, json=ASK)
    assert answer.status_code == 500 and [r.model for r in fake.log] == ["gemini-2.5-flash"] * 3
    events = await run_events(bus, run.run_id)
    assert [f.decision for f in data(events, "attempt_failed")] == ["retry", "retry", "give_up"], "retries only"


@pytest.mark.anyio
@pytest.mark.nats
async def test_durable_mode_refuses_a_gemini_call_saying_what_to_do(fake: FakeProvider, bus: Bus,
                                                                    policies: PolicySet) -> None:
    async with client(fake, bus, policies, mode="durable") as gemini:
        answer = await gemini.post(GENERATE, json=ASK)
    assert answer.status_code == 501 and "mode='inline'" in answer.json()["error"]["message"]
    assert len(fake.log) == 0


@pytest.mark.anyio
@pytest.mark.nats
async def test_a_gemini_runs_conversation_reads_back(fake: FakeProvider, bus: Bus, gemini: httpx.AsyncClient) -> None:
    system = {"parts": [{"text": "Be brief."}]}
    async with tether.run(bus=bus) as run:
        first = (await gemini.post(GENERATE, json={**ASK, "tools": TOOLS, "systemInstruction": system})).json()
        asked = first["candidates"][0]["content"]
        result = {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"t": 20}}}]}
        history = [*ASK["contents"], asked, result]
        second = (await gemini.post(GENERATE, json={"contents": history, "tools": TOOLS,
                                                     "systemInstruction": system})).json()
    said = conversation(await run_events(bus, run.run_id))
    assert [(m["role"], m["source"]) for m in said] == [
        ("system", "request"), ("user", "request"), ("model", "response"), ("user", "request"), ("model", "response")]
    assert said[2]["parts"] == asked["parts"] and said[3]["parts"] == result["parts"]
    assert said[4]["parts"] == second["candidates"][0]["content"]["parts"], "each message once, in order"


# -- the wire format, without I/O ---------------------------------------------------------------


def test_which_paths_are_gemini_calls() -> None:
    assert operation_of("POST", GENERATE) == ("gemini", "generate_content")
    vertex = "/v1beta1/projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro:streamGenerateContent"
    assert operation_of("POST", vertex) == ("gemini", "generate_content")
    assert parse_request("gemini", "generate_content", b"{}", vertex).model == "gemini-2.5-pro"
    assert parse_request("gemini", "generate_content", b"{}", vertex).stream is True
    for other in ("/v1beta/models/gemini-2.5-flash:countTokens", "/v1beta/models/gemini-2.5-flash:embedContent",
                  "/v1beta/cachedContents", "/v1beta/models/:generateContent"):
        assert operation_of("POST", other) is None, other
    assert operation_of("GET", GENERATE) is None


def test_usage_with_thinking_and_a_cache() -> None:
    body = {"candidates": [{"finishReason": "MAX_TOKENS"}], "usageMetadata": {
        "promptTokenCount": 1000, "cachedContentTokenCount": 600, "candidatesTokenCount": 40,
        "thoughtsTokenCount": 60, "toolUsePromptTokenCount": 5, "totalTokenCount": 1105}}
    usage, finish = usage_of("gemini", "generate_content", body)
    assert (usage.input_tokens, usage.cached_input_tokens, usage.output_tokens, usage.reasoning_tokens) == (
        1005, 600, 100, 60), "cached and thinking are parts of input and output, as tether counts them"
    assert finish == "MAX_TOKENS"
    chunks = [{"candidates": [{}]}, body]  # streamGenerateContent without alt=sse: one JSON array
    assert usage_of("gemini", "generate_content", chunks) == (usage, "MAX_TOKENS")


def test_a_streamed_answer_joins_its_text_and_keeps_calls() -> None:
    acc = StreamAccumulator("gemini", "generate_content", capture=True)
    for n, part in enumerate([{"text": "It is "}, {"text": "sunny"}, {"functionCall": {"name": "f", "args": {}}}]):
        done = n == 2
        chunk = {"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0,
                                 **({"finishReason": "STOP"} if done else {})}],
                 "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": n + 1}}
        acc.feed(b"data: " + json.dumps(chunk).encode() + b"\r\n\r\n")
    assert acc.done and acc.finish_reason == "STOP" and acc.usage.output_tokens == 3
    assert acc.response()["candidates"][0]["content"]["parts"] == [  # type: ignore[index]
        {"text": "It is sunny"}, {"functionCall": {"name": "f", "args": {}}}]


def test_a_gemini_error_body_gives_its_status_name_and_retry_delay() -> None:
    body = json.dumps({"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED",
                                 "details": [{"@type": "type.googleapis.com/google.rpc.QuotaFailure"},
                                             {"@type": "type.googleapis.com/google.rpc.RetryInfo",
                                              "retryDelay": "34.5s"}]}}).encode()
    failure = classify_http(429, {}, body, now=0.0)
    assert (failure.code, failure.message, failure.retry_after_s) == ("RESOURCE_EXHAUSTED", "Quota exceeded", 34.5)
    assert classify_http(429, {"retry-after": "2"}, body, now=0.0).retry_after_s == 2.0, "a header wins"
    assert classify_http(503, {}, b'[{"error": {"code": 503, "message": "x", "status": "UNAVAILABLE"}}]',
                         now=0.0).code == "UNAVAILABLE"


def test_a_budget_estimate_reads_gemini_contents_and_its_output_cap() -> None:
    tokens, cap = estimate_tokens({"contents": [{"role": "user", "parts": [{"text": "x" * 400}]}],
                                   "generationConfig": {"maxOutputTokens": 77}})
    assert tokens >= 100 and cap == 77
