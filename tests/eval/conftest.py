"""Fixtures for evaluation: a bus on the session's nats-server, the fake provider, an Evals client."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tether.adapters import Hub
from tether.bus import Bus, connect
from tether.eval import Evals, Variant
from tether.testing import FakeProvider, NatsServer

from . import sample_agent

SEED = 3


@pytest.fixture
async def bus(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Bus]:
    async with await connect(nats_server.url, home=tmp_path / "home") as connected:
        yield connected
        await Hub.of(connected).aclose()


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeProvider]:
    async with FakeProvider(seed=SEED) as provider:
        monkeypatch.setenv("SAMPLE_AGENT_BASE_URL", provider.url)
        yield provider


@pytest.fixture
async def evals(bus: Bus) -> AsyncIterator[Evals]:
    async with Evals(bus) as client:
        yield client


def unique(prefix: str) -> str:
    """Names are unique per test: the session's nats-server keeps every test's events."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def record_run(bus: Bus, agent: str, question: str, *, model: str = "gpt-4o-mini") -> str:
    """A production run of the sample agent, recorded in the log; its run id."""
    try:
        async with tether.run(agent=agent, bus=bus, input=question) as run:
            run.output = await sample_agent.answer(question, Variant(model=model))
    except RuntimeError:
        pass
    await Hub.of(bus).flush()
    return run.run_id


_DIGEST = re.compile(r"^This is fake reply (\d+) ")


def digest(text: Any) -> float:
    """The number in the fake provider's reply: it depends on the model, the seed and the prompt."""
    match = _DIGEST.match(str(text))
    assert match, f"not a fake reply: {text!r}"
    return float(match[1])
