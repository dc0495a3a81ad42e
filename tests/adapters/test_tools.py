"""``@tether.tool``: sync and async tools as events; retries only for idempotent ones."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

import tether
from tether.bus import Bus
from tether.middleware import PolicySet

from .conftest import Background, data, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@dataclass
class Forecast:
    city: str
    celsius: float


async def test_async_tool_records_arguments_result_and_duration(bus: Bus, policies: PolicySet) -> None:
    @tether.tool(bus=bus, policies=policies)
    async def forecast(city: str, days: int = 1) -> Forecast:
        """The weather."""
        await asyncio.sleep(0.01)
        return Forecast(city, 21.5)

    assert forecast.__name__ == "forecast" and forecast.__doc__ == "The weather."
    async with tether.run(agent="bot", bus=bus) as run:
        result = await forecast("Paris", days=2)
    assert result == Forecast("Paris", 21.5)
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["tool.call.requested", "tool.call.completed"]
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert (requested.tool, requested.arguments, requested.idempotent) == ("forecast", {"city": "Paris", "days": 2},
                                                                          False)
    assert completed.result == {"city": "Paris", "celsius": 21.5}
    assert completed.duration_ms >= 10 and completed.attempt == 1
    assert events[1].agentid == "bot" and events[1].traceparent


async def test_a_tool_with_nan_in_its_arguments_or_result_still_runs(bus: Bus, policies: PolicySet) -> None:
    """tether refuses NaN in data handed to it, but what it records of a call must never fail
    the call: a NaN argument or result is recorded as the string "NaN"."""
    @tether.tool(bus=bus, policies=policies)
    async def score(weights: list[float]) -> dict[str, float]:
        return {"mean": sum(weights) / len(weights), "best": float("-inf")}

    async with tether.run(agent="bot", bus=bus) as run:
        result = await score([float("nan"), 1.0])
    assert result["best"] == float("-inf")
    events = await run_events(bus, run.run_id)
    requested, completed = data(events, "requested")[0], data(events, "completed")[0]
    assert requested.arguments == {"weights": ["NaN", 1.0]}
    assert completed.result == {"mean": "NaN", "best": "-Infinity"}


async def test_idempotent_tool_is_retried_on_transient_errors(bus: Bus, policies: PolicySet) -> None:
    calls: list[str | None] = []

    @tether.tool(name="fetch", idempotent=True, bus=bus, policies=policies)
    async def fetch(url: str, idempotency_key: str | None = None) -> str:
        calls.append(idempotency_key)
        if len(calls) < 3:
            raise ConnectionError("network blip")
        return "page"

    async with tether.run(bus=bus) as run:
        assert await fetch("https://example.com") == "page"
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.attempt_failed",
                                   "tool.call.completed"]
    requested = data(events, "requested")[0]
    assert len(set(calls)) == 1 and calls[0].startswith(f"{run.run_id}:0:"), "one key: the run, the position, the call"
    assert requested.idempotency_key == calls[0] and "idempotency_key" not in requested.arguments
    assert requested.position == 0
    assert [f.decision for f in data(events, "attempt_failed")] == ["retry", "retry"]
    assert data(events, "completed")[0].attempt == 3


async def test_tool_that_is_not_idempotent_runs_once(bus: Bus, policies: PolicySet) -> None:
    ran = 0

    @tether.tool(bus=bus, policies=policies)
    def send_email(to: str) -> None:
        nonlocal ran
        ran += 1
        raise ConnectionError("SMTP went away")

    async with tether.run(bus=bus) as run:
        with pytest.raises(ConnectionError, match="SMTP"):
            await asyncio.to_thread(send_email, "ann@example.com")
    assert ran == 1
    events = await run_events(bus, run.run_id)
    assert kinds(events)[1:-1] == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.failed",
                                   "call.dead_lettered"]
    assert data(events, "attempt_failed")[0].decision == "give_up"
    assert data(events, "tool.call.failed")[0].error.type == "APIConnectionError"


async def test_retries_and_retry_on(bus: Bus, policies: PolicySet) -> None:
    class Flaky(Exception):
        pass

    attempts = 0

    @tether.tool(idempotent=True, retries=1, retry_on=(Flaky,), bus=bus, policies=policies)
    async def flaky() -> None:
        nonlocal attempts
        attempts += 1
        raise Flaky("again")

    @tether.tool(idempotent=True, bus=bus, policies=policies)
    async def broken() -> None:
        raise ValueError("a bug, not a blip")

    async with tether.run(bus=bus) as run:
        with pytest.raises(Flaky):
            await flaky()
        with pytest.raises(ValueError, match="bug"):
            await broken()
    assert attempts == 2, "retries=1: one more attempt"
    decisions = [f.decision for f in data(await run_events(bus, run.run_id), "attempt_failed")]
    assert decisions == ["retry", "give_up", "give_up"]


def test_retries_need_idempotent() -> None:
    with pytest.raises(ValueError, match="idempotent"):
        tether.tool(retries=2)


async def test_callers_idempotency_key_wins(bus: Bus, policies: PolicySet) -> None:
    @tether.tool(bus=bus, policies=policies)
    async def pay(amount: int, idempotency_key: str | None = None) -> str | None:
        return idempotency_key

    async with tether.run(bus=bus) as run:
        assert await pay(5, idempotency_key="order-42") == "order-42"
    assert data(await run_events(bus, run.run_id), "requested")[0].idempotency_key == "order-42"


async def test_large_arguments_and_results_go_to_the_object_store(bus: Bus, policies: PolicySet) -> None:
    @tether.tool(bus=bus, policies=policies)
    async def summarise(text: str) -> str:
        return text.upper()

    big = "words " * 100_000  # 600 KB
    async with tether.run(bus=bus) as run:
        await summarise(big)
    events = await run_events(bus, run.run_id)
    requested, completed = events[1], events[2]
    assert requested.dataref and completed.dataref, "claim-checked by the publisher"
    assert requested.data.arguments == {"text": big}  # type: ignore[attr-defined]
    assert completed.data.result == big.upper()  # type: ignore[attr-defined]


async def test_cancelled_tool(bus: Bus, policies: PolicySet) -> None:
    started = asyncio.Event()

    @tether.tool(bus=bus, policies=policies)
    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    run_id = ""

    async def go() -> None:
        nonlocal run_id
        async with tether.run(bus=bus) as run:
            run_id = run.run_id
            await slow()

    task = asyncio.create_task(go())
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    events = await run_events(bus, run_id)
    assert kinds(events) == ["run.started", "tool.call.requested", "tool.call.failed", "run.finished"]
    assert data(events, "tool.call.failed")[0].error.code == "client_cancelled"


async def test_sync_tool_on_the_event_loop_thread(bus: Bus, policies: PolicySet) -> None:
    """A sync tool called from async code: recorded without ever waiting on the loop it runs on."""

    @tether.tool(bus=bus, policies=policies)
    def add(a: int, b: int) -> int:
        if a < 0:
            raise ValueError("negative")
        return a + b

    async with tether.run(bus=bus) as run:
        assert add(1, 2) == 3
        with pytest.raises(ValueError):
            add(-1, 2)
    events = await run_events(bus, run.run_id)
    # The dead letter is written in the background here (the tool cannot wait for the loop it
    # blocks), so it may land after run.finished.
    assert [k for k in kinds(events) if not k.startswith("run.")] == [
        "tool.call.requested", "tool.call.completed", "tool.call.requested", "tool.call.attempt_failed",
        "tool.call.failed", "call.dead_lettered"]


def test_sync_tool_with_the_background_bus(background: Background) -> None:
    @tether.tool
    def shout(text: str) -> str:
        return text.upper()

    with tether.run(agent="sync") as run:
        assert shout("hi") == "HI"
    events = background.events(run.run_id)
    assert kinds(events) == ["run.started", "tool.call.requested", "tool.call.completed", "run.finished"]
