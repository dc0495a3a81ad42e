"""Resuming a run: the calls it recorded are replayed from the log, the rest run live.

Real SDK clients over HTTP against the fake provider, events on the session's nats-server;
the provider's request log says which calls were paid for.
"""

from __future__ import annotations

from typing import Any

import anthropic
import openai
import pytest

import tether
from tether.bus import Bus
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import data, kinds, run_events, story

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


def ask(step: int, prompt: str = "step") -> list[dict[str, str]]:
    return [{"role": "user", "content": f"{prompt} {step}"}]


async def steps(sdk: openai.AsyncOpenAI, n: int, *, changed_at: int | None = None) -> list[str]:
    out = []
    for i in range(n):
        prompt = "other" if changed_at is not None and i >= changed_at else "step"
        reply = await sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(i, prompt), temperature=0)  # type: ignore[arg-type]
        out.append(reply.choices[0].message.content or "")
    return out


async def test_resume_replays_recorded_calls(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with sdk:
        async with tether.run(agent="bot", bus=bus, run_id="resume-1") as first:
            before = await steps(sdk, 3)
        assert len(fake.log) == 3
        async with tether.run(agent="bot", bus=bus, run_id="resume-1", resume=True) as again:
            after = await steps(sdk, 5)
    assert after[:3] == before, "the recorded answers, as they were"
    assert len(fake.log) == 5, "only the two calls the run had not made reached the provider"
    assert again.journal is not None and again.journal.replayed == 3
    events = await run_events(bus, first.run_id)
    replayed = data(events, "call.replayed")
    completed = data(events, "llm.call.completed")
    assert [r.original_call_id for r in replayed] == [c.call_id for c in completed[:3]]
    assert [r.position for r in replayed] == [0, 1, 2]
    assert all(r.via == "journal" and r.usage.output_tokens > 0 for r in replayed)
    assert len(completed) == 5
    started = data(events, "run.started")
    assert [s.resumed for s in started] == [False, True]
    requested = {r.call_id: r for r in data(events, "llm.call.requested")}
    assert all(requested[r.call_id].request is None for r in replayed), "the original's requested event has it"
    assert all(requested[r.call_id].request_hash == r.request_hash for r in replayed)
    assert all(requested[c.call_id].request for c in completed)


async def test_changed_prompt_runs_live_from_there(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with sdk:
        async with tether.run(bus=bus, run_id="resume-2"):
            await steps(sdk, 4)
        async with tether.run(bus=bus, run_id="resume-2", resume=True) as again:
            await steps(sdk, 4, changed_at=1)
    assert len(fake.log) == 4 + 3, "step 0 replayed; steps 1 to 3 asked something else: live"
    assert again.journal is not None and again.journal.diverged == ("llm", 1)
    events = await run_events(bus, "resume-2")
    assert len(data(events, "call.replayed")) == 1


async def test_a_call_after_the_first_mismatch_is_live_even_if_it_matches(fake: FakeProvider, bus: Bus,
                                                                          policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with sdk:
        async with tether.run(bus=bus, run_id="resume-3"):
            await steps(sdk, 3)
        async with tether.run(bus=bus, run_id="resume-3", resume=True):
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(0), temperature=0)  # type: ignore[arg-type]
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(9), temperature=0)  # type: ignore[arg-type]
            await sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(2), temperature=0)  # type: ignore[arg-type]
    assert len(fake.log) == 3 + 2


async def test_stream_replays_event_for_event(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)

    async def streamed() -> list[str]:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(1), stream=True)  # type: ignore[arg-type]
        return [c.model_dump_json() async for c in stream]

    async with sdk:
        async with tether.run(bus=bus, run_id="resume-4"):
            live = await streamed()
        async with tether.run(bus=bus, run_id="resume-4", resume=True):
            replayed = await streamed()
    assert len(fake.log) == 1
    assert replayed == live and len(live) > 2, "chunk for chunk"
    events = await run_events(bus, "resume-4")
    assert data(events, "llm.call.completed")[0].chunks, "a stream's events are recorded"
    assert data(events, "call.replayed")[0].stream is True


def test_sync_client_and_anthropic(fake_in_thread: FakeProvider, background: object) -> None:
    sdk = tether.instrument(anthropic.Anthropic(base_url=fake_in_thread.anthropic_url, api_key="sk-ant-test-01"))

    def ask_twice() -> list[str]:
        out = []
        for i in range(2):
            message = sdk.messages.create(model="claude-haiku-4-5", max_tokens=32, messages=ask(i))  # type: ignore[arg-type]
            out.append(message.content[0].text)  # type: ignore[union-attr]
        with sdk.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=ask(5)) as stream:  # type: ignore[arg-type]
            out.append("".join(stream.text_stream))
        return out

    with tether.run(run_id="resume-5"):
        before = ask_twice()
    with tether.run(run_id="resume-5", resume=True):
        after = ask_twice()
    assert after == before
    assert len(fake_in_thread.log) == 3


async def test_resume_needs_a_run_id(bus: Bus) -> None:
    with pytest.raises(ValueError, match=r"run_id=\.\.\., resume=True"):
        tether.run(bus=bus, resume=True)


async def test_resume_of_an_unknown_run_runs_live(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with sdk, tether.run(bus=bus, run_id="resume-never-ran", resume=True):
        await steps(sdk, 2)
    assert len(fake.log) == 2
    assert "call.replayed" not in kinds(await run_events(bus, "resume-never-ran"))


async def test_durable_calls_replay_before_submitting(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    from tether.bus import WORK_STREAM
    from tether.middleware import Executor, ProviderConfig

    await bus.js.purge_stream(WORK_STREAM)
    config = {"openai": ProviderConfig("openai", "openai", fake.url)}
    async with Executor(bus, policies=policies, providers=config, concurrency=4, seed=1):
        sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies,
                                mode="durable")
        async with sdk:

            async def calls() -> list[str]:
                out = await steps(sdk, 2)
                stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=ask(7), stream=True)  # type: ignore[arg-type]
                return [*out, "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])]

            async with tether.run(bus=bus, run_id="resume-durable"):
                before = await calls()
            await story(bus, "resume-durable", "llm.call.completed", count=3)
            async with tether.run(bus=bus, run_id="resume-durable", resume=True):
                after = await calls()
    assert after == before
    assert len(fake.log) == 3, "the worker was never asked again"


async def test_a_run_an_adapter_opens_inside_resumes_with_it(fake: FakeProvider, bus: Bus,
                                                             policies: PolicySet) -> None:
    """What the LangGraph and Agents SDK adapters open per graph or agent (``Run(derive=...)``):
    an id derived from the enclosing run's, so it is the same run again, resumed with it."""
    from tether.adapters import Run

    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    ids = []
    async with sdk:
        for resume in (False, True):
            async with tether.run(bus=bus, run_id="resume-outer", resume=resume):
                async with Run(agent="graph", derive="langgraph") as graph:
                    ids.append(graph.run_id)
                    await steps(sdk, 2)
                async with Run(agent="graph", derive="langgraph") as second:
                    ids.append(second.run_id)
                    await steps(sdk, 1)
    assert ids[:2] == ids[2:] and ids[0] != ids[1], "the same runs, in the same order"
    assert len(fake.log) == 3, "every call of the adapter's runs replayed"
    started = data(await run_events(bus, ids[0]), "run.started")
    assert [s.resumed for s in started] == [False, True] and started[0].parent_run_id == "resume-outer"
    async with tether.run(bus=bus, run_id="resume-other"), Run(derive="langgraph") as elsewhere:
        assert elsewhere.run_id not in ids


async def test_async_anthropic_stream_replays_event_for_event(fake: FakeProvider, bus: Bus,
                                                              policies: PolicySet) -> None:
    claude = tether.instrument(anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="sk-ant-test-01"),
                               bus=bus, policies=policies)

    async def streamed() -> list[str]:
        async with claude.messages.stream(model="claude-haiku-4-5", max_tokens=32, messages=ask(3)) as stream:  # type: ignore[arg-type]
            return [event.model_dump_json() async for event in stream]

    async with claude:
        async with tether.run(bus=bus, run_id="resume-claude"):
            live = await streamed()
        async with tether.run(bus=bus, run_id="resume-claude", resume=True):
            replayed = await streamed()
    assert replayed == live and len(fake.log) == 1


async def test_a_resume_in_the_same_process_waits_for_what_it_recorded(fake: FakeProvider, bus: Bus,
                                                                       policies: PolicySet,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The first attempt's completions reach NATS late (the hub still holds them when the run
    resumes): the resumed run reads its journal once they are in the log, and replays them."""
    import asyncio

    publish = bus.emit

    async def late(event: Any, *args: Any, **kwargs: Any) -> Any:
        if event.type == "tether.llm.call.completed":
            await asyncio.sleep(0.3)
        return await publish(event, *args, **kwargs)

    monkeypatch.setattr(bus, "emit", late)

    def first_attempt() -> None:  # a sync client in a thread: its events wait in the hub's queue
        sync = tether.instrument(openai.OpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
        with sync, tether.run(bus=bus, run_id="resume-queued"):
            for i in range(2):
                sync.chat.completions.create(model="gpt-4o-mini", messages=ask(i), temperature=0)  # type: ignore[arg-type]

    await asyncio.to_thread(first_attempt)
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    async with sdk, tether.run(bus=bus, run_id="resume-queued", resume=True) as again:
        await steps(sdk, 2)
    assert again.journal is not None and again.journal.replayed == 2
    assert len(fake.log) == 2
