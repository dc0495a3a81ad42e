"""Budgets and give-up reasons on every path: inline and durable calls, instrumented clients in
both modes, and the gateway, against a real nats-server and the fake provider over HTTP."""

from __future__ import annotations

import asyncio
import secrets
from typing import Any

import anyio
import openai
import pytest

import tether
from tether.adapters.gateway import GatewayServer
from tether.bus import WORK_STREAM, Bus
from tether.middleware import (
    BudgetLimits,
    CallFailed,
    DurableCalls,
    Executor,
    InlineCalls,
    PolicySet,
    ProviderConfig,
)
from tether.middleware._shared import SpendBook
from tether.pricing import estimate, estimate_tokens
from tether.schemas import uuid7
from tether.testing.fake_provider import FakeProvider

from .conftest import fast_policies, gateway_config

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

MODEL = "gpt-4o-mini"


def question(i: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"question {i:03d}"}]


def one_call_usd() -> float:
    tokens_in, tokens_out = estimate_tokens({"messages": question(0), "max_tokens": 20})
    usd = estimate("openai", MODEL, input_tokens=tokens_in, max_output_tokens=tokens_out).usd
    assert usd is not None and usd > 0
    return usd


def agent_budget(calls: float) -> PolicySet:
    return PolicySet(routes=fast_policies().routes, budgets={("agent", "*"): BudgetLimits(usd=calls * one_call_usd())},
                     runaway=fast_policies().runaway)


async def settled_spend(bus: Bus, agent: str) -> dict[str, Any]:
    book = await SpendBook.open(bus)
    with anyio.fail_after(15):
        while True:
            doc = await book.get("agent", agent)
            if not doc.get("holds"):
                return doc
            await asyncio.sleep(0.05)


async def test_gateway_calls_at_once_stop_at_the_budget(fake: FakeProvider, bus: Bus) -> None:
    agent, key = f"a-{uuid7()}", f"tg-budget-{secrets.token_hex(8)}"
    fake.set_latency("200ms")
    config = gateway_config(fake, agent_budget(3.5), keys={key: agent})
    async with GatewayServer(config, bus, port=0, grace_s=1) as server, \
            openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0) as sdk:
        async def one(i: int) -> Any:
            try:
                return await sdk.chat.completions.create(model=MODEL, messages=question(i), max_tokens=20)  # type: ignore[arg-type]
            except openai.RateLimitError as exc:
                return exc

        outcomes = await asyncio.gather(*(one(i) for i in range(12)))
    refused = [o for o in outcomes if isinstance(o, openai.RateLimitError)]
    assert len(outcomes) - len(refused) == 3, outcomes
    assert {e.code for e in refused} == {"budget_exceeded"}
    assert all("tether gave up (budget)" in e.message for e in refused)
    assert len(fake.log) == 3, "a refused call is never sent"
    assert (await settled_spend(bus, agent))["usd"] <= 3.5 * one_call_usd()


async def test_the_reason_is_the_same_on_every_path(fake: FakeProvider, bus: Bus) -> None:
    """A budget refusal and a call that exhausted its attempts, each made inline, durably, through
    an instrumented client in both modes and through the gateway: one reason for each."""
    await bus.js.purge_stream(WORK_STREAM)
    policies = agent_budget(0.5)  # no call fits
    open_policies = fast_policies()
    providers = {"openai": ProviderConfig("openai", "openai", fake.url)}
    body = {"messages": question(1), "max_tokens": 20}
    gateway_key = f"tg-reasons-{secrets.token_hex(8)}"
    reasons: dict[str, list[str]] = {}

    def told(path: str, reason: str) -> None:
        reasons.setdefault(path, []).append(reason)

    def said(message: str) -> str:
        return message.split("tether gave up (", 1)[1].split(")", 1)[0] if "tether gave up (" in message else "?"

    for pset in (policies, open_policies):
        if pset is open_policies:
            fake.set_faults("503")
        async with InlineCalls(bus, policies=pset, providers=providers) as inline:
            with pytest.raises(CallFailed) as failed:
                await inline.llm("openai", MODEL, body, agentid=f"a-{uuid7()}")
            told("inline", failed.value.reason)
        await bus.js.purge_stream(WORK_STREAM)
        async with Executor(bus, policies=pset, providers=providers, concurrency=4, seed=1), \
                DurableCalls(bus) as durable:
            with pytest.raises(CallFailed) as failed:
                await durable.llm("openai", MODEL, body, agentid=f"a-{uuid7()}")
            told("durable", failed.value.reason)
            attached = failed.value.call_id
            with pytest.raises(CallFailed) as again:
                await durable.attach(attached, timeout=5)
            told("durable attach", again.value.reason)
            client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0),
                                       bus=bus, policies=pset, mode="durable")
            async with client, tether.run(agent=f"a-{uuid7()}", bus=bus):
                with pytest.raises(openai.APIStatusError) as status:
                    await client.chat.completions.create(model=MODEL, messages=question(1), max_tokens=20)  # type: ignore[arg-type]
            told("instrumented, durable", said(status.value.message))
            if pset is policies:
                assert (status.value.status_code, status.value.code) == (429, "budget_exceeded")
        if pset is policies:  # inline adapters answer a refusal in tether's words (an upstream error as it came)
            client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0),
                                       bus=bus, policies=pset)
            async with client, tether.run(agent=f"a-{uuid7()}", bus=bus):
                with pytest.raises(openai.APIStatusError) as status:
                    await client.chat.completions.create(model=MODEL, messages=question(1), max_tokens=20)  # type: ignore[arg-type]
            told("instrumented, inline", said(status.value.message))
            assert (status.value.status_code, status.value.code) == (429, "budget_exceeded")
            async with GatewayServer(gateway_config(fake, pset, keys={gateway_key: f"a-{uuid7()}"}), bus, port=0,
                                     grace_s=1) as server, \
                    openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=gateway_key, max_retries=0) as sdk:
                with pytest.raises(openai.APIStatusError) as status:
                    await sdk.chat.completions.create(model=MODEL, messages=question(1), max_tokens=20)  # type: ignore[arg-type]
            told("gateway", said(status.value.message))
            assert (status.value.status_code, status.value.code) == (429, "budget_exceeded")
    assert reasons == {"inline": ["budget", "exhausted"], "durable": ["budget", "exhausted"],
                       "durable attach": ["budget", "exhausted"],
                       "instrumented, durable": ["budget", "exhausted"],
                       "instrumented, inline": ["budget"], "gateway": ["budget"]}


async def test_a_stream_closed_early_gives_its_reservation_back(fake: FakeProvider, bus: Bus) -> None:
    agent = f"a-{uuid7()}"
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0), bus=bus,
                               policies=agent_budget(1.5))
    async with client, tether.run(agent=agent, bus=bus):
        stream = await client.chat.completions.create(model=MODEL, messages=question(1), max_tokens=20,  # type: ignore[arg-type]
                                                      stream=True)
        async for _ in stream:
            break
        await stream.close()
        assert (await settled_spend(bus, agent)).get("usd", 0.0) == 0.0, "nothing charged: the hold was dropped"
        answer = await client.chat.completions.create(model=MODEL, messages=question(2), max_tokens=20)  # type: ignore[arg-type]
    assert answer.choices[0].message.content


async def test_a_call_cancelled_while_tether_tries_gives_its_reservation_back(fake: FakeProvider,
                                                                              bus: Bus) -> None:
    agent = f"a-{uuid7()}"
    fake.set_latency("5s")
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0), bus=bus,
                               policies=agent_budget(1.5))
    async with client, tether.run(agent=agent, bus=bus):
        task = asyncio.create_task(client.chat.completions.create(model=MODEL, messages=question(1),  # type: ignore[arg-type]
                                                                  max_tokens=20))
        with anyio.fail_after(20):
            while not fake.log:  # noqa: ASYNC110 (the fake provider runs in a thread of its own)
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not (await settled_spend(bus, agent)).get("holds")
        fake.set_latency(None)
        answer = await client.chat.completions.create(model=MODEL, messages=question(2), max_tokens=20)  # type: ignore[arg-type]
    assert answer.choices[0].message.content


async def test_a_durable_stream_its_caller_stopped_gives_its_reservation_back(fake: FakeProvider,
                                                                              bus: Bus) -> None:
    await bus.js.purge_stream(WORK_STREAM)
    agent = f"a-{uuid7()}"
    policies = agent_budget(1.5)
    fake.set_faults("stall_mid_stream(2,60s)#1")  # the provider would go on for a minute
    providers = {"openai": ProviderConfig("openai", "openai", fake.url)}
    async with Executor(bus, policies=policies, providers=providers, concurrency=4, seed=1):
        client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k", max_retries=0), bus=bus,
                                   policies=policies, mode="durable")
        async with client, tether.run(agent=agent, bus=bus):
            stream = await client.chat.completions.create(model=MODEL, messages=question(1), max_tokens=20,  # type: ignore[arg-type]
                                                          stream=True)
            async with stream:
                async for _ in stream:
                    break
            assert (await settled_spend(bus, agent)).get("usd", 0.0) == 0.0, "nothing charged: the hold was dropped"
            answer = await client.chat.completions.create(model=MODEL, messages=question(2), max_tokens=20)  # type: ignore[arg-type]
    assert answer.choices[0].message.content
