"""A call through tether leaves no reference cycle of tether's behind: what it made is freed by reference
counting the moment the caller is done with it, not by the garbage collector later.

Objects in a cycle outlive every young collection that meets them while alive, are walked again each
time, and push the collector into older, slower generations: in an agent's process (the framework's heap
around it) that was 0.1-0.2 ms of collections an agent step (``docs/benchmarks.md``, Frameworks). Here the
openai SDK, async and sync, plain and streamed, in a run (its completions acked by the log), against the
fake provider over HTTP, on tether's background bus.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import openai
import pytest

import tether
from tether.adapters import Hub
from tether.adapters._httpio import _CLOSED
from tether.bus import Bus
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, Background

pytestmark = [pytest.mark.anyio, pytest.mark.nats]

ASK = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def garbage() -> Iterator[list[Any]]:
    """What becomes cyclic garbage inside the block (the collector off meanwhile), kept for a look."""
    found: list[Any] = []
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        yield found
        gc.collect()
        found.extend(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def tethers(objects: list[Any]) -> list[str]:
    """The types of tether's own objects among ``objects``, but for its closed stream shells: httpx's response
    and its stream are a cycle of their own (freed by the collector), with tether's shell in it, empty once closed."""
    return sorted({type(o).__qualname__ for o in objects
                   if type(o).__module__.startswith("tether.") and getattr(o, "inner", None) is not _CLOSED})


def flushed() -> None:
    tether.adapters.flush(timeout=10)


async def test_async_calls_in_a_run_leave_no_tether_object_in_a_cycle(fake: FakeProvider,
                                                                      background: Background) -> None:
    client = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="sk-test", max_retries=0))

    async def calls() -> None:
        async with tether.run(name="cycles"):
            await client.chat.completions.create(**ASK)  # type: ignore[call-overload]
            stream = await client.chat.completions.create(**ASK, stream=True)  # type: ignore[call-overload]
            assert [chunk async for chunk in stream]

    await calls()  # imports and first-use caches out of the way
    await asyncio.to_thread(flushed)
    with garbage() as found:
        for _ in range(3):
            await calls()
        await asyncio.to_thread(flushed)
    assert tethers(found) == []
    await client.close()


def test_sync_calls_in_a_run_leave_no_tether_object_in_a_cycle(fake_in_thread: FakeProvider,
                                                               background: Background) -> None:
    client = tether.instrument(openai.OpenAI(base_url=fake_in_thread.url, api_key="sk-test", max_retries=0))

    def calls() -> None:
        with tether.run(name="cycles"):
            client.chat.completions.create(**ASK)  # type: ignore[call-overload]
            assert list(client.chat.completions.create(**ASK, stream=True))  # type: ignore[call-overload]

    calls()
    flushed()
    with garbage() as found:
        for _ in range(3):
            calls()
        flushed()
    assert tethers(found) == []
    client.close()


async def test_a_stream_read_through_httpx_leaves_no_tether_object_in_a_cycle(fake: FakeProvider,
                                                                             background: Background) -> None:
    """httpx's own response and its stream are a cycle (freed by the collector): tether's stream, once
    closed, holds nothing of the call, so the call's chunks and records are not dragged into it (the
    openai SDK of LlamaIndex's environment reads its streams this way)."""
    async with tether.async_http_client(base_url=fake.url) as client:

        async def calls() -> None:
            async with tether.run(name="cycles"), client.stream(
                    "POST", "/chat/completions", json={**ASK, "stream": True},
                    headers={"authorization": "Bearer sk-test"}) as response:
                assert [chunk async for chunk in response.aiter_bytes()]

        await calls()
        await asyncio.to_thread(flushed)
        with garbage() as found:
            for _ in range(3):
                await calls()
            await asyncio.to_thread(flushed)
        assert [o for o in found if type(o).__name__ == "AsyncStream"], "tether's shell is in httpx's cycle"
        assert tethers(found) == []


async def test_calls_through_the_gateway_leave_no_tether_object_in_a_cycle(gateway: Any, bus: Bus) -> None:
    """The gateway's side (its server, the call loop, the upstream's stream), in this process, with an SDK
    as the agent; a run named by the agent's header, as agents in other languages name theirs."""
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:

        async def calls() -> None:
            await sdk.chat.completions.create(**ASK, extra_headers={"x-tether-run-id": "cycles"})  # type: ignore[call-overload]
            stream = await sdk.chat.completions.create(**ASK, stream=True)  # type: ignore[call-overload]
            assert [chunk async for chunk in stream]

        await calls()
        await Hub.of(bus).flush()
        with garbage() as found:
            for _ in range(3):
                await calls()
            await Hub.of(bus).flush()
        assert tethers(found) == []


def test_the_check_sees_a_cycle() -> None:
    """The helpers above find a cycle of tether's objects when there is one (the test is not blind)."""
    from tether.adapters._relay import TeeCore

    make: Callable[[], Any] = lambda: TeeCore.__new__(TeeCore)  # noqa: E731
    with garbage() as found:
        core = make()
        core.call = core  # a cycle
        del core
    assert tethers(found) == ["TeeCore"]
