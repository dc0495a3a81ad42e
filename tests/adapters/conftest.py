"""Fixtures for the adapters: a real bus on the session's nats-server, the fake provider, fast policies."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import tether.adapters
from tether.adapters import Hub
from tether.bus import Bus, connect, event_filter
from tether.middleware import BreakerPolicy, Policy, PolicySet, RetryPolicy, RunawayGuard
from tether.schemas import Event
from tether.testing import NatsServer, collect
from tether.testing.fake_provider import FakeProvider


def fast_policies(**routes: Policy) -> PolicySet:
    """Quick retries, no breaker, no runaway guard: what most adapter tests run with."""
    fast = Policy(retry=RetryPolicy(max_attempts=3, base_delay_s=0.01, max_delay_s=0.05), timeout_s=5.0,
                  breaker=BreakerPolicy(enabled=False))
    return PolicySet(routes={"*": fast, **routes}, runaway=RunawayGuard(max_calls_per_run=None,
                                                                          max_identical_calls=None))


@pytest.fixture
async def bus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    async with await connect(nats_server.url, home=tmp_path / "home") as connected:
        yield connected
        await Hub.of(connected).aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    async with FakeProvider(seed=3) as provider:
        yield provider


@pytest.fixture
def fake_in_thread() -> Iterator[FakeProvider]:
    """The fake provider on its own thread, for sync clients in sync tests."""
    with FakeProvider(seed=5) as provider:
        yield provider


@pytest.fixture
def policies() -> PolicySet:
    return fast_policies()


async def run_events(bus: Bus, run_id: str) -> list[Event]:
    """Every event of one run, in log order, once the adapters' queue is published."""
    await Hub.of(bus).flush()
    return [r.event for r in await collect(bus, event_filter(run=run_id)) if r.event is not None]


async def story(bus: Bus, run_id: str, last: str, *, count: int = 1, timeout: float = 60.0) -> list[Event]:
    """The run's events once ``count`` of type ``tether.<last>`` are among them: a worker
    records the end of a durable stream right after the caller read it."""
    with anyio.fail_after(timeout):
        while True:
            events = await run_events(bus, run_id)
            if sum(e.type == f"tether.{last}" for e in events) >= count:
                return events
            await asyncio.sleep(0.05)


def kinds(events: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in events]


def data(events: list[Event], suffix: str) -> list[Any]:
    return [e.data for e in events if e.type.endswith(suffix)]


@dataclass
class Background:
    """tether's background bus, pointed at the session's nats-server for one test."""

    url: str

    def events(self, run_id: str) -> list[Event]:
        hub = tether.adapters.background_hub()
        hub.flush_sync(10)

        async def read() -> list[Event]:
            return [r.event for r in await collect(hub.bus, event_filter(run=run_id)) if r.event is not None]

        return hub.call_sync(read, timeout=10)


@pytest.fixture
def background(nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Background]:
    tether.adapters.shutdown()
    monkeypatch.setenv("TETHER_NATS_URL", nats_server.url)
    monkeypatch.setenv("TETHER_HOME", str(tmp_path / "bg-home"))
    try:
        yield Background(nats_server.url)
    finally:
        tether.adapters.shutdown()


# -- the gateway ---------------------------------------------------------------------------------

GATEWAY_KEY = "tg-test-bot-key-0001"
OTHER_KEY = "tg-test-other-key-02"
TRUSTED_KEY = "tg-test-trusted-key3"
UPSTREAM_KEYS = {"openai": "sk-upstream-openai-0123456789abcdef", "anthropic": "sk-ant-upstream-0123456789",
                 "backup": "sk-upstream-backup-0123456789abcdef"}


def gateway_config(fake: FakeProvider, policies: PolicySet, *, providers: dict[str, Any] | None = None,
                   **options: Any) -> Any:
    """The test gateway: providers ``openai`` and ``backup`` (OpenAI format) and ``anthropic``, all
    on the fake provider; gpt-*, o*, text-embedding-* and claude-* models; no default provider."""
    from tether.adapters.gateway import GatewayConfig
    from tether.middleware import ProviderConfig

    providers = {**{name: ProviderConfig(name, "anthropic" if name == "anthropic" else "openai", fake.url,
                                         api_key=key) for name, key in UPSTREAM_KEYS.items()}, **(providers or {})}
    section: dict[str, Any] = {
        "keys": {GATEWAY_KEY: "bot", OTHER_KEY: "other-bot", TRUSTED_KEY: "*"},
        "models": {"fast": "openai:gpt-4o-mini", "gpt-*": "openai", "text-embedding-*": "openai",
                   "claude-*": "anthropic"},
        "retry_after_s": 7,
        **options,
    }
    return GatewayConfig.from_mapping(section, providers=providers, policies=policies, environ={})


@pytest.fixture
async def gateway(fake: FakeProvider, bus: Bus, policies: PolicySet) -> AsyncIterator[Any]:
    """A gateway on a free loopback port in front of the fake provider (``gateway.url``)."""
    from tether.adapters.gateway import GatewayServer

    async with GatewayServer(gateway_config(fake, policies), bus, port=0, grace_s=1) as server:
        yield server
