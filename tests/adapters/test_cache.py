"""The response cache: opt-in per route, exact request-hash hits across runs, deterministic calls only."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
import openai
import pytest

import tether
from tether.adapters import Hub
from tether.bus import Bus
from tether.middleware import CachePolicy, Policy, PolicySet, ResponseCache, cacheable
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, data, fast_policies, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@pytest.fixture
def policies() -> PolicySet:
    fast = fast_policies().policy_for("*")
    cached = Policy(retry=fast.retry, timeout_s=fast.timeout_s, breaker=fast.breaker,
                    cache=CachePolicy(enabled=True, ttl_s=600))
    return fast_policies(**{"openai:gpt-4o-mini": cached})


def test_which_calls_may_be_cached() -> None:
    on, sampling = CachePolicy(enabled=True), CachePolicy(enabled=True, sampling=True)
    assert cacheable({"messages": []}, on), "no sampling parameter"
    assert cacheable({"temperature": 0}, on) and cacheable({"temperature": 0.0, "top_p": 0.5}, on)
    assert not cacheable({"temperature": 0.7}, on) and not cacheable({"top_p": 0.9}, on)
    assert cacheable({"temperature": 0.7}, sampling)
    assert not cacheable({"temperature": 0, "n": 3}, sampling), "several choices are asked to differ"
    assert not cacheable({"temperature": 0}, CachePolicy()), "off unless enabled"


async def ask(sdk: openai.AsyncOpenAI, prompt: str, model: str = "gpt-4o-mini", **options: Any) -> str:
    reply = await sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],  # type: ignore[arg-type]
                                              **options)
    return reply.choices[0].message.content or ""


async def test_hits_across_runs_for_deterministic_calls_only(fake: FakeProvider, bus: Bus,
                                                             policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    prompt = f"cache {uuid.uuid4()}"
    async with sdk:
        async with tether.run(bus=bus, run_id=f"cache-a-{prompt}"):
            first = await ask(sdk, prompt, temperature=0)
            await ask(sdk, prompt, temperature=0.9)
            await ask(sdk, prompt, model="gpt-4o", temperature=0)  # a route without the cache
        async with tether.run(bus=bus, run_id=f"cache-b-{prompt}") as second:
            again = await ask(sdk, prompt, temperature=0)
            await ask(sdk, prompt, temperature=0.9)
            await ask(sdk, prompt, model="gpt-4o", temperature=0)
    assert again == first
    assert len(fake.log) == 5, "only the deterministic call on the cached route was not asked again"
    [hit] = data(await run_events(bus, second.run_id), "call.replayed")
    assert hit.via == "cache" and hit.original_run_id == f"cache-a-{prompt}" and hit.usage.output_tokens > 0


async def test_a_stream_is_cached_event_for_event(fake: FakeProvider, bus: Bus, policies: PolicySet) -> None:
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    prompt = f"stream {uuid.uuid4()}"

    async def streamed() -> list[str]:
        stream = await sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],  # type: ignore[arg-type]
                                                   stream=True)
        return [c.model_dump_json() async for c in stream]

    async with sdk:
        live = await streamed()
        await Hub.of(bus).flush()  # the answer is kept once its end is recorded
        cached = await streamed()
    assert cached == live and len(fake.log) == 1


async def test_an_expired_answer_is_not_served(bus: Bus) -> None:
    from tether.middleware import Entry

    cache = ResponseCache(bus)
    digest = f"sha256:{uuid.uuid4().hex}"
    await cache.put(digest, Entry("llm", "c1", digest, state="completed", response={"a": 1}), ttl_s=60)
    hit = await cache.get(digest)
    assert hit is not None and hit.response == {"a": 1} and hit.call_id == "c1"
    import time

    assert await cache.get(digest, now=time.time() + 61) is None
    assert await cache.get(f"sha256:{uuid.uuid4().hex}") is None


async def test_through_the_gateway(fake: FakeProvider, bus: Bus, gateway: Any) -> None:
    prompt = f"gateway {uuid.uuid4()}"
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}], "temperature": 0}
    headers = {"authorization": f"Bearer {GATEWAY_KEY}"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        first = await http.post("/v1/chat/completions", json=body, headers=headers)
        await Hub.of(bus).flush()
        second = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and len(fake.log) == 1
    assert second.headers["x-tether-replayed-via"] == "cache"


async def test_a_repeat_right_after_the_answer_is_served_while_its_kv_put_is_in_flight(
        fake: FakeProvider, bus: Bus, policies: PolicySet, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer goes to KV in the background once the caller has it; a repeated call made at once
    (LiteLLM's test in CI did so) was asked upstream again. The same process now serves it."""
    put, stored = ResponseCache.put, []

    async def slow_put(self: ResponseCache, *args: Any) -> None:
        await asyncio.sleep(1.0)  # a busy NATS
        await put(self, *args)
        stored.append(args[0])

    monkeypatch.setattr(ResponseCache, "put", slow_put)
    sdk = tether.instrument(openai.AsyncOpenAI(base_url=fake.url, api_key="k"), bus=bus, policies=policies)
    prompt = f"at once {uuid.uuid4()}"
    async with sdk:
        async with tether.run(bus=bus, run_id=f"once-a-{prompt}"):
            first = await ask(sdk, prompt, temperature=0)
        async with tether.run(bus=bus, run_id=f"once-b-{prompt}") as second:
            again = await ask(sdk, prompt, temperature=0)
        assert not stored, "the put was still in flight"
    assert again == first and len(fake.log) == 1
    [hit] = data(await run_events(bus, second.run_id), "call.replayed")
    assert hit.via == "cache"
