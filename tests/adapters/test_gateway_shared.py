"""Two ``tether gateway`` processes on one nats-server, behind a load balancer that is not sticky.

The calls of one run alternate between the two (as a round-robin balancer sends them): the run
is one run with one ``run.started``, its tool call asked for through one gateway and answered
through the other is one inferred span, it ends (idle, then by header) once per end however
many gateways look at it, and a resumed run replays its recorded calls in order whichever
gateway serves each (the runs, pending tool calls and resume cursors live in KV, not in a
gateway process).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import openai
import pytest

from tether.adapters.gateway import digest, run_for_trace
from tether.bus import Bus, event_filter
from tether.schemas import Event
from tether.testing import NatsServer, collect
from tether.testing.fake_provider import FakeProvider

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ROOT = Path(__file__).resolve().parents[2]
KEY = "tg-test-shared-key-0001"
IDLE_S = 1.5
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeProvider]:
    with FakeProvider(seed=5) as provider:
        yield provider


@pytest.fixture(scope="module")
def gateways(fake_upstream: FakeProvider, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[tuple[str, str]]:
    """Two ``tether gateway`` processes (the CLI, its defaults: uvloop) with one configuration."""
    home = tmp_path_factory.mktemp("shared")
    config = home / "tether.toml"
    config.write_text(f'[providers.openai]\nkind = "openai"\nbase_url = "{fake_upstream.url}"\n'
                      f'api_key_env = "UPSTREAM_KEY"\n\n[gateway]\ndefault_provider = "openai"\n'
                      f'run_idle_s = {IDLE_S}\n\n'
                      f'[gateway.keys]\n"sha256:{digest(KEY)}" = "shared-bot"\n')
    children = []
    try:
        for name in ("a", "b"):
            env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
            env.update(TETHER_NATS_URL=nats_server.url, TETHER_HOME=str(home / name),
                       UPSTREAM_KEY="sk-upstream-shared-0123456789")
            children.append(subprocess.Popen([sys.executable, "-m", "tether", "gateway", "--config", str(config),
                                              "--port", "0"], env=env, stdout=subprocess.PIPE,
                                             stderr=subprocess.DEVNULL, text=True, cwd=ROOT))
        urls = []
        for child in children:
            assert child.stdout is not None
            first = child.stdout.readline()
            assert first.startswith("gateway listening on http://127.0.0.1:"), first
            urls.append(first.split()[3].rstrip(":"))
        yield urls[0], urls[1]
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.communicate(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.communicate()


@pytest.fixture
async def clients(gateways: tuple[str, str]) -> AsyncIterator[tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]]:
    a, b = gateways
    async with openai.AsyncOpenAI(base_url=a + "/v1", api_key=KEY, max_retries=0) as one, \
            openai.AsyncOpenAI(base_url=b + "/v1", api_key=KEY, max_retries=0) as two:
        yield one, two


async def events_of(bus: Bus, run_id: str) -> list[Event]:
    return [r.event for r in await collect(bus, event_filter(run=run_id)) if r.event is not None]


async def until(bus: Bus, run_id: str, done: Callable[[list[Event]], bool], timeout: float = 30.0) -> list[Event]:
    with anyio.fail_after(timeout):
        while True:
            events = await events_of(bus, run_id)
            if done(events):
                return events
            await asyncio.sleep(0.05)


def of(events: list[Event], kind: str) -> list[Event]:
    return [e for e in events if e.type == f"tether.{kind}"]


def tool_message(answer: Any) -> dict[str, Any]:
    return answer.choices[0].message.model_dump(exclude_none=True)  # type: ignore[no-any-return]


async def test_a_run_split_across_two_gateways_is_one_run_with_one_span_and_ends_once(
        bus: Bus, clients: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]) -> None:
    a, b = clients
    trace = secrets.token_hex(16)
    run_id = run_for_trace("shared-bot", trace)

    def headers(**more: str) -> dict[str, str]:
        return {"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01", **more}

    chat: list[Any] = [{"role": "user", "content": "Weather in Paris?"}]
    first = await a.chat.completions.create(model="gpt-4o", messages=chat, tools=TOOLS,  # type: ignore[arg-type]
                                            stream=True, extra_headers=headers())
    chunks = [c async for c in first]
    [call] = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []][:1]
    arguments = "".join(d.function.arguments or "" for c in chunks if c.choices
                        for d in c.choices[0].delta.tool_calls or [] if d.function)
    chat += [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {"name": "get_weather", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C, clear"}]
    second = await b.chat.completions.create(model="gpt-4o", messages=chat, tools=TOOLS,  # type: ignore[arg-type]
                                             extra_headers=headers())  # its result, through the other gateway
    chat += [tool_message(second), {"role": "user", "content": "And in Rome?"}]
    third = await a.chat.completions.create(model="gpt-4o", messages=chat, tools=TOOLS,  # type: ignore[arg-type]
                                            extra_headers=headers())
    [rome] = third.choices[0].message.tool_calls or []
    # no result for Rome: the run goes idle with the call pending; both gateways look, one ends it
    events = await until(bus, run_id, lambda ev: bool(of(ev, "run.finished")))
    chat += [tool_message(third), {"role": "tool", "tool_call_id": rome.id, "content": "21 C"}]
    await b.chat.completions.create(model="gpt-4o", messages=chat, tools=TOOLS,  # type: ignore[arg-type]
                                    extra_headers=headers())  # back after the idle end: the same run resumes
    await a.chat.completions.create(model="gpt-4o", messages=[*chat, {"role": "user", "content": "Thanks"}],
                                    extra_headers=headers(**{"x-tether-run-end": "ok"}))
    events = await until(bus, run_id, lambda ev: len(of(ev, "run.finished")) >= 2)
    await asyncio.sleep(IDLE_S * 1.5)  # both gateways swept the run again (every IDLE_S / 4): no other end
    events = await events_of(bus, run_id)

    starts = of(events, "run.started")
    assert len(starts) == 2 and "resumed" not in starts[0].data.metadata
    assert starts[1].data.metadata["resumed_after"] == "idle", "resumed once, though either gateway could"
    assert [(e.data.ended_by, e.data.status) for e in of(events, "run.finished")] == [("idle", "ok"), ("header", "ok")]
    assert len(of(events, "llm.call.completed")) == 5, "all five calls in the one run"
    requested = of(events, "tool.call.requested")
    assert [(e.data.tool_call_id, e.data.inferred) for e in requested] == [(call.id, True), (rome.id, True)]
    assert requested[0].data.arguments == json.loads(arguments)
    [completed] = of(events, "tool.call.completed")
    assert completed.data.call_id == requested[0].data.call_id and completed.data.result == "18 C, clear"
    asked, answered = of(events, "llm.call.completed")[0], of(events, "llm.call.requested")[1]
    assert requested[0].time == asked.time, "the span starts with the answer that asked for the tool"
    # it ends with the request that carried its result; when that request reached the other gateway
    # before the asking answer's record did, with the next request that carries it (docs/gateway.md)
    carried = [e.time for e in of(events, "llm.call.requested")[1:3]]
    assert completed.time in carried, ("timed by the two gateways' calls", completed.time, carried, answered.time)
    [missing] = of(events, "tool.call.failed")
    assert missing.data.call_id == requested[1].data.call_id and missing.data.error.type == "ToolResultMissing"
    assert missing.time == of(events, "run.finished")[0].time
    assert len({e.id for e in events}) == len(events)


async def test_a_resumed_run_replays_in_order_whichever_gateway_serves_each_call(
        bus: Bus, fake_upstream: FakeProvider, clients: tuple[openai.AsyncOpenAI, openai.AsyncOpenAI]) -> None:
    a, b = clients
    run_id = "shared-resume-" + secrets.token_hex(4)
    steps = 6

    async def run(resume: str | None, count: int) -> list[str]:
        headers = {"x-tether-run-id": run_id, **({"x-tether-resume": resume} if resume else {})}
        history: list[Any] = [{"role": "system", "content": "You are terse."}]
        answers = []
        for step in range(count):
            history.append({"role": "user", "content": f"step {step}"})
            sdk = (a, b)[step % 2]  # round robin
            if step % 3 == 2:
                stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=history, stream=True,
                                                           extra_headers=headers)
                answer = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            else:
                reply = await sdk.chat.completions.create(model="gpt-4o-mini", messages=history, temperature=0,
                                                          extra_headers=headers)
                answer = reply.choices[0].message.content or ""
            history.append({"role": "assistant", "content": answer})
            answers.append(answer)
        return answers

    first = await run(None, steps)
    await until(bus, run_id, lambda ev: len(of(ev, "llm.call.completed")) == steps)
    paid = len(fake_upstream.log)
    again = await run("1", steps + 1)  # the recorded steps, then one more
    assert again[:steps] == first, "the recorded answers, in order"
    assert len(fake_upstream.log) == paid + 1, "only the new step reached the provider"
    events = await until(bus, run_id, lambda ev: len(of(ev, "call.replayed")) >= steps
                         and len(of(ev, "llm.call.completed")) == steps + 1)
    # Two gateways publish on two connections and a replay's event is not acked before its answer, so the
    # log orders them by arrival, not by position (docs/resume.md).
    replayed = sorted(of(events, "call.replayed"), key=lambda e: e.data.position)
    assert [e.data.position for e in replayed] == list(range(steps)), "each call at its place, across the gateways"
    originals = [e.data.call_id for e in of(events, "llm.call.completed")[:steps]]
    assert [e.data.original_call_id for e in replayed] == originals
    assert len([e for e in of(events, "run.started") if e.data.resumed]) == 1, "one attempt, begun once"
