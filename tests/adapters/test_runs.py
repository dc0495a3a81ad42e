"""``tether.run``: one run for the calls inside it, sub-runs, W3C trace context, status, conversation."""

from __future__ import annotations

import asyncio
import contextvars
import json
import threading
from typing import Any, cast

import openai
import pytest

import tether
from tether.adapters import conversation, current_run
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import Background, data, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

INCOMING = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
TOOLS = [{"type": "function", "function": {"name": "lookup", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]


def trace(traceparent: str | None) -> str:
    assert traceparent is not None
    return traceparent.split("-")[1]


def span(traceparent: str | None) -> str:
    assert traceparent is not None
    return traceparent.split("-")[2]


async def test_sub_agent_runs_share_the_trace(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies,
                               agent="default-agent")
    ask = [{"role": "user", "content": "plan"}]
    async with client, tether.run(agent="planner", bus=bus, traceparent=INCOMING, name="trip",
                                  metadata={"user": "ann"}) as outer:
        assert current_run() is outer.context
        await client.chat.completions.create(model="gpt-4o-mini", messages=ask)  # type: ignore[arg-type]
        async with tether.run(agent="researcher") as inner:  # the bus comes from the outer run
            await asyncio.gather(*(client.chat.completions.create(model="gpt-4o-mini", messages=ask)  # type: ignore[arg-type]
                                   for _ in range(2)))
        outer.output = {"answer": "done"}
    assert current_run() is None
    outer_events = await run_events(bus, outer.run_id)
    inner_events = await run_events(bus, inner.run_id)
    started = data(outer_events, "run.started")[0]
    assert (started.name, started.metadata, started.parent_run_id) == ("trip", {"user": "ann"}, None)
    assert data(inner_events, "run.started")[0].parent_run_id == outer.run_id
    assert {e.agentid for e in outer_events} == {"planner"} and {e.agentid for e in inner_events} == {"researcher"}
    assert sorted(kinds(inner_events)) == ["llm.call.completed", "llm.call.completed", "llm.call.requested",
                                           "llm.call.requested", "run.finished", "run.started"]
    everything = outer_events + inner_events
    assert {trace(e.traceparent) for e in everything} == {trace(INCOMING)}, "one trace, continued from the caller"
    call_spans = {span(e.traceparent) for e in everything if e.type.endswith("llm.call.requested")}
    assert len(call_spans) == 3 and span(INCOMING) not in call_spans, "a new span per call"
    sent = [r.traceparent for r in fake.log]
    assert {trace(t) for t in sent} == {trace(INCOMING)} and {span(t) for t in sent} == call_spans
    finished = data(outer_events, "run.finished")[0]
    assert finished.status == "ok" and finished.output == {"answer": "done"} and finished.duration_ms > 0


async def test_run_status_error(bus: Bus) -> None:
    with pytest.raises(KeyError):
        async with tether.run(agent="a", bus=bus, run_id="run-that-fails") as run:
            raise KeyError("no such thing")
    finished = data(await run_events(bus, run.run_id), "finished")[0]
    assert finished.status == "error" and finished.error.type == "KeyError"


async def test_a_run_ended_from_another_task_is_no_longer_the_callers_run(bus: Bus) -> None:
    """LangGraph's ``astream`` reports a failed graph's end from a task of its own (``asyncio.shield``):
    the run an adapter opened for it must not stay the caller's run (the next graph was its child)."""
    async with tether.run(agent="caller", bus=bus) as outer:
        graph = tether.run(agent="graph")
        await graph.__aenter__()
        await asyncio.shield(graph.__aexit__(KeyError, KeyError("x"), None))
        assert current_run() is outer.context
        async with tether.run(agent="next") as after:
            pass
    assert current_run() is None
    started = data(await run_events(bus, after.run_id), "run.started")[0]
    assert started.parent_run_id == outer.run_id
    assert data(await run_events(bus, graph.run_id), "run.finished")[0].status == "error"


def test_sync_run_follows_context_into_threads(background: Background) -> None:
    seen: list[str | None] = []
    with tether.run(agent="sync") as run:
        ctx = contextvars.copy_context()
        worker = threading.Thread(target=ctx.run, args=(lambda: seen.append(getattr(current_run(), "run_id", None)),))
        worker.start()
        worker.join()
    assert seen == [run.run_id]
    assert kinds(background.events(run.run_id)) == ["run.started", "run.finished"]


async def test_conversation_is_rebuilt_from_the_log(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)

    @tether.tool(bus=bus)
    def lookup(city: str) -> dict[str, str]:
        return {"city": city, "weather": "rain"}

    messages: list[dict[str, object]] = [{"role": "system", "content": "You are brief."},
                                         {"role": "user", "content": "Weather in Oslo?"}]
    async with client, tether.run(bus=bus) as run:
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=messages, tools=TOOLS,  # type: ignore[arg-type]
                                                      stream=True)
        calls: dict[int, dict[str, str]] = {}
        async for chunk in stream:
            for delta in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                slot = calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += delta.id or ""
                slot["name"] += (delta.function.name or "") if delta.function else ""
                slot["arguments"] += (delta.function.arguments or "") if delta.function else ""
        call = calls[0]
        result = lookup(**json.loads(call["arguments"]))
        messages += [{"role": "assistant", "content": None, "tool_calls": [
                         {"id": call["id"], "type": "function",
                          "function": {"name": call["name"], "arguments": call["arguments"]}}]},
                     {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)}]
        final = await client.chat.completions.create(model="gpt-4o-mini", messages=messages)  # type: ignore[arg-type]
    talk = conversation(await run_events(bus, run.run_id))
    assert [(m["source"], m.get("role")) for m in talk] == [
        ("request", "system"), ("request", "user"), ("response", "assistant"), ("tool", "tool"),
        ("request", "tool"), ("response", "assistant")]
    assert talk[2]["tool_calls"][0]["function"]["arguments"] == call["arguments"]
    assert talk[3]["arguments"] == json.loads(call["arguments"]) and talk[3]["content"] == result
    assert talk[-1]["content"] == final.choices[0].message.content


def test_an_async_run_on_the_running_background_bus_takes_no_thread(background: Background,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the background bus runs, an async run starts without handing anything to a worker thread
    (each hand-off cost an agent step a thread hop and the wake-ups around it); the first starts it there."""
    hops: list[str] = []
    real = asyncio.to_thread

    async def counted(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        hops.append(getattr(fn, "__name__", repr(fn)))
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", counted)

    async def agent() -> list[str]:
        ids = []
        for _ in range(3):
            async with tether.run(agent="async-bot") as run:
                ids.append(run.run_id)
        return ids

    first = asyncio.run(agent())
    assert hops == ["background_hub"], "the first run starts the background bus in a thread"
    second = asyncio.run(agent())
    assert hops == ["background_hub"], "a run on the running background bus takes no thread"
    for run_id in first + second:
        assert kinds(background.events(run_id)) == ["run.started", "run.finished"]


@pytest.mark.parametrize(("fields", "trusted"), [
    ({"name": "bot", "input": {"q": "Zürich", "n": [1, 2.5, None]}, "tags": ("a", "b"), "metadata": {"k": [1]}}, True),
    ({"input": {"q": float("nan")}}, False),  # recorded as the string "NaN", by validation
])
def test_a_runs_events_skip_validation_only_where_it_would_change_nothing(
        fields: dict[str, Any], trusted: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """``run.started`` and ``run.finished`` are built without validating again when every field is the run's
    own plain value: the payloads and their JSON are what validation makes; anything else is validated."""
    from tether.schemas import RunFinished, RunStarted

    skipped: list[str] = []
    for cls in (RunStarted, RunFinished):
        made_by = cls.trusted.__func__  # type: ignore[attr-defined]

        def trusting(cls: Any, /, _made_by: Any = made_by, **given: Any) -> Any:
            skipped.append(cls.__name__)
            return _made_by(cls, **given)

        monkeypatch.setattr(cls, "trusted", classmethod(trusting))
    opened = tether.run(agent="bot", **fields)
    started = opened._open(cast(Any, object())).data
    opened.output = {"answer": "sunny", "n": 2}
    _, ended = opened._close(None)
    assert ended is not None
    finished = ended.data
    expected_start = RunStarted(name=fields.get("name"), parent_run_id=None, input=fields.get("input"),
                                tags=fields.get("tags", ()), metadata=fields.get("metadata", {}), resumed=False)
    assert isinstance(finished, RunFinished)
    expected_end = RunFinished(status="ok", duration_ms=finished.duration_ms, output={"answer": "sunny", "n": 2})
    for made, expected in ((started, expected_start), (finished, expected_end)):
        assert made == expected and made.model_dump_json() == expected.model_dump_json()
    assert skipped == (["RunStarted", "RunFinished"] if trusted else ["RunFinished"])
