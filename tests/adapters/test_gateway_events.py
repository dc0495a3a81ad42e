"""``POST /v1/events``: CloudEvents from agents in any language, in the three HTTP content modes.

The requests are written with the ``cloudevents`` SDK's HTTP binding where it has a mode
(structured, binary) and by hand for batches, as an agent in another language would send
them. Valid events are on the log with the agent and run filled in; a request with any
invalid event is refused whole, with every problem listed, and publishes nothing.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import httpx
import pytest
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.v1.event import CloudEvent

from tether.adapters.gateway import BATCH, STRUCTURED, GatewayServer, run_for_trace
from tether.bus import Bus
from tether.schemas import uuid7

from .conftest import GATEWAY_KEY, TRUSTED_KEY, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def tool_requested(call_id: str, **attributes: Any) -> CloudEvent:
    return CloudEvent({"id": uuid7(), "source": "urn:agent:ts-bot", "type": "tether.tool.call.requested",
                       **attributes}, {"call_id": call_id, "tool": "search", "arguments": {"q": "nats"}})


def tool_completed(call_id: str, **attributes: Any) -> CloudEvent:
    return CloudEvent({"id": uuid7(), "source": "urn:agent:ts-bot", "type": "tether.tool.call.completed",
                       **attributes}, {"call_id": call_id, "tool": "search", "attempt": 1, "result": ["a", "b"],
                                       "duration_ms": 12.5})


def memory_written(**attributes: Any) -> dict[str, Any]:
    return {"specversion": "1.0", "id": uuid7(), "source": "urn:agent:ts-bot", "type": "tether.memory.written",
            **attributes, "data": {"namespace": "notes", "key": "k1", "version": 1, "text": "remember this"}}


async def post(server: GatewayServer, content: bytes, headers: dict[str, str],
               key: str = GATEWAY_KEY) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        return await http.post(server.url + "/v1/events", content=content,
                               headers={"authorization": f"Bearer {key}", **headers})


async def test_structured_mode(bus: Bus, gateway: GatewayServer) -> None:
    message = ce_http.to_structured_event(tool_requested("c-1"))
    assert message.headers["content-type"] == STRUCTURED
    answer = await post(gateway, message.body, {**message.headers, "x-tether-run-id": "ce-structured"})
    assert answer.status_code == 202 and answer.json()["accepted"] == 1
    events = await run_events(bus, "ce-structured")
    assert [e.type for e in events] == ["tether.tool.call.requested"]
    event = events[0]
    assert (event.agentid, event.runid, event.id) == ("bot", "ce-structured", answer.json()["ids"][0])
    assert event.data.arguments == {"q": "nats"}, "validated into the catalogue's payload"


async def test_binary_mode_takes_the_trace_as_the_run(bus: Bus, gateway: GatewayServer) -> None:
    trace = secrets.token_hex(16)
    message = ce_http.to_binary_event(tool_completed("c-2", subject="search"))
    assert message.headers["ce-type"] == "tether.tool.call.completed"
    traceparent = f"00-{trace}-00f067aa0ba902b7-01"
    answer = await post(gateway, message.body, {**message.headers, "traceparent": traceparent})
    assert answer.status_code == 202
    events = await run_events(bus, run_for_trace("bot", trace))
    assert [e.type for e in events] == ["tether.tool.call.completed"]
    assert events[0].traceparent == traceparent and events[0].subject == "search"
    assert events[0].data.result == ["a", "b"]


async def test_batch_mode(bus: Bus, gateway: GatewayServer) -> None:
    batch = [json.loads(ce_http.to_structured_event(tool_requested("c-3")).body),
             json.loads(ce_http.to_structured_event(tool_completed("c-3")).body),
             memory_written(runid="ce-batch-own")]
    answer = await post(gateway, json.dumps(batch).encode(),
                        {"content-type": BATCH, "x-tether-run-id": "ce-batch"})
    assert answer.status_code == 202 and answer.json()["accepted"] == 3
    assert [e.type for e in await run_events(bus, "ce-batch")] == ["tether.tool.call.requested",
                                                                   "tether.tool.call.completed"]
    own = await run_events(bus, "ce-batch-own")
    assert [e.type for e in own] == ["tether.memory.written"], "an event's own runid is kept"


async def test_an_invalid_event_refuses_the_whole_batch(bus: Bus, gateway: GatewayServer) -> None:
    good = json.loads(ce_http.to_structured_event(tool_requested("c-4")).body)
    unknown_type = {**good, "id": uuid7(), "type": "tether.tool.call.imagined"}
    bad_payload = {**good, "id": uuid7(), "data": {"call_id": "c-4"}}
    no_id = {k: v for k, v in good.items() if k != "id"}
    answer = await post(gateway, json.dumps([good, unknown_type, bad_payload, no_id, "nope"]).encode(),
                        {"content-type": BATCH, "x-tether-run-id": "ce-invalid"})
    assert answer.status_code == 400
    error = answer.json()["error"]
    assert "nothing was published" in error["message"] and error["code"] == "invalid_event"
    assert [e["index"] for e in error["events"]] == [1, 2, 3, 4]
    assert "unknown event type" in error["events"][0]["errors"][0]["msg"]
    assert error["events"][1]["errors"][0]["loc"] == ["tool"], "the payload's validation errors, by field"
    assert error["events"][2]["errors"][0]["loc"] == ["id"]
    assert await run_events(bus, "ce-invalid") == [], "all or nothing"


async def test_invalid_single_events(gateway: GatewayServer) -> None:
    bad_time = memory_written(time="yesterday")
    answer = await post(gateway, json.dumps(bad_time).encode(), {"content-type": STRUCTURED})
    assert answer.status_code == 400 and answer.json()["error"]["events"][0]["index"] == 0
    binary = ce_http.to_binary_event(tool_requested("c-5"))
    del binary.headers["ce-source"]
    answer = await post(gateway, binary.body, binary.headers)
    assert answer.status_code == 400
    assert any(e["loc"] == ["source"] for e in answer.json()["error"]["events"][0]["errors"])
    answer = await post(gateway, b"{not json", {"content-type": STRUCTURED})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_json"
    answer = await post(gateway, b'{"a": 1}', {"content-type": "application/json"})
    assert answer.status_code == 415, "neither a CloudEvents content type nor ce-* headers"
    answer = await post(gateway, b"[]", {"content-type": BATCH})
    assert answer.status_code == 400


async def test_an_agent_may_not_publish_as_another(bus: Bus, gateway: GatewayServer) -> None:
    message = ce_http.to_structured_event(tool_requested("c-6", agentid="other-bot", runid="ce-impostor"))
    answer = await post(gateway, message.body, message.headers)
    assert answer.status_code == 403 and answer.json()["error"]["code"] == "agent_not_allowed"
    sub = ce_http.to_structured_event(tool_requested("c-6", agentid="bot/helper", runid="ce-impostor"))
    assert (await post(gateway, sub.body, sub.headers)).status_code == 202, "its own sub-agent is fine"
    trusted = ce_http.to_structured_event(tool_requested("c-7", agentid="other-bot", runid="ce-impostor"))
    assert (await post(gateway, trusted.body, trusted.headers, key=TRUSTED_KEY)).status_code == 202
    assert [e.agentid for e in await run_events(bus, "ce-impostor")] == ["bot/helper", "other-bot"]


async def test_events_need_a_gateway_key(gateway: GatewayServer) -> None:
    message = ce_http.to_structured_event(tool_requested("c-8"))
    answer = await post(gateway, message.body, message.headers, key="tg-wrong-key-123")
    assert answer.status_code == 401


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
async def test_non_finite_numbers_are_refused_in_every_mode(bus: Bus, gateway: GatewayServer, number: str) -> None:
    """Python's json reads NaN and Infinity, which JSON has not: an agent's event carrying one
    is a 400 that says where, in every content mode, and nothing is published."""
    run = f"ce-nan-{uuid7()}"
    good = json.loads(ce_http.to_structured_event(tool_completed("c-9")).body)
    nan = json.dumps({**good, "id": uuid7(), "data": {**good["data"], "result": {"score": 0}}}).replace(
        '"score": 0', f'"score": {number}')
    structured = await post(gateway, nan.encode(), {"content-type": STRUCTURED, "x-tether-run-id": run})
    batch = await post(gateway, f"[{json.dumps(good)}, {nan}]".encode(),
                       {"content-type": BATCH, "x-tether-run-id": run})
    binary = ce_http.to_binary_event(tool_completed("c-9"))
    body = binary.body.replace(b'"duration_ms": 12.5', f'"duration_ms": 12.5, "result": [{number}]'.encode())
    body = body.replace(b'"result": ["a", "b"], ', b"")
    assert number.encode() in body
    binary_answer = await post(gateway, body, {**binary.headers, "x-tether-run-id": run})
    for answer, index, loc in ((structured, 0, ["data", "result", "score"]), (batch, 1, ["data", "result", "score"]),
                               (binary_answer, 0, ["data", "result", "0"])):
        assert answer.status_code == 400, answer.text
        error = answer.json()["error"]
        assert error["code"] == "invalid_event" and "nothing was published" in error["message"]
        assert error["events"][0]["index"] == index
        assert error["events"][0]["errors"] == [{"loc": loc, "msg": "JSON has no NaN or Infinity: send a "
                                                 "finite number, null or a string"}]
    assert await run_events(bus, run) == []
