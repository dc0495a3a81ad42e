"""``FrameworkTools``: a tool a framework runs itself, put under tether's tool policy and the run's
journal by an adapter's wrap point (the framework hands over the name, the arguments and a way to
run it). The same guarantees as ``@tether.tool``: recorded, replayed on resume, retried only when
idempotent, a crash inside a non-idempotent call stops the run for attention."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import tether
from tether.adapters import Hub
from tether.adapters._tools import FrameworkTools, RunawayError
from tether.bus import Bus
from tether.middleware import Policy, PolicySet

from .conftest import data, fast_policies, kinds, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


class Crash(BaseException):
    """The process dies here: nothing after it is recorded."""


async def test_calls_are_recorded_replayed_on_resume_and_a_crash_inside_needs_attention(
        bus: Bus, policies: PolicySet) -> None:
    tools = FrameworkTools("urn:test:framework", idempotent={"lookup"}, bus=bus, policies=policies)
    effects: list[str] = []
    crash_in: list[str] = ["send"]

    async def lookup(city: str) -> str:
        effects.append(f"lookup {city}")
        return f"sunny in {city}"

    def send(to: str) -> str:  # a sync tool, as many frameworks run them in a thread
        effects.append(f"send {to}")
        if crash_in and crash_in[0] == "send":
            raise Crash
        return "sent"

    async def steps() -> list[str]:
        got = [await tools.acall("lookup", {"city": "Oslo"}, lambda: lookup("Oslo"))]
        got.append(await asyncio.to_thread(tools.call, "send", {"to": "ann"}, lambda: send("ann")))
        return got

    opened = tether.run(agent="fw-bot", run_id="run-fw-1", bus=bus)
    await opened.__aenter__()
    with pytest.raises(Crash):
        await steps()
    await Hub.of(bus).flush()
    assert effects == ["lookup Oslo", "send ann"]

    crash_in.clear()
    with pytest.raises(tether.NeedsAttention) as caught:
        async with tether.run(agent="fw-bot", run_id="run-fw-1", resume=True, bus=bus):
            await steps()
    assert effects == ["lookup Oslo", "send ann"], "the completed lookup was replayed, the send not repeated"
    assert (caught.value.tool, caught.value.position, caught.value.arguments) == ("send", 1, {"to": "ann"})
    events = await run_events(bus, "run-fw-1")
    requested = data(events, "tool.call.requested")
    assert [(r.tool, r.arguments, r.position) for r in requested][:2] == [
        ("lookup", {"city": "Oslo"}, 0), ("send", {"to": "ann"}, 1)]
    assert requested[0].idempotency_key.startswith("run-fw-1:0:")
    assert {e.source for e in events if e.type.startswith("tether.tool.")} == {"urn:test:framework"}
    replayed = data(events, "replayed")[0]
    assert (replayed.tool, replayed.response) == ("lookup", "sunny in Oslo")
    assert kinds(events)[-1] == "run.needs_attention"


async def test_only_idempotent_tools_are_retried_and_the_error_reaches_the_framework(
        bus: Bus, policies: PolicySet) -> None:
    tools = FrameworkTools("urn:test:framework", idempotent={"flaky_read"}, bus=bus, policies=policies)
    tries: dict[str, int] = {"flaky_read": 0, "flaky_write": 0}

    async def flaky(name: str) -> str:
        tries[name] += 1
        if tries[name] < 2:
            raise ConnectionError("upstream reset")
        return "ok"

    async with tether.run(agent="fw-bot", run_id="run-fw-2", bus=bus):
        assert await tools.acall("flaky_read", {}, lambda: flaky("flaky_read")) == "ok"
        with pytest.raises(ConnectionError, match="upstream reset"):
            await tools.acall("flaky_write", {}, lambda: flaky("flaky_write"))
    assert tries == {"flaky_read": 2, "flaky_write": 1}
    events = await run_events(bus, "run-fw-2")
    failed = data(events, "tool.call.failed")
    assert [(f.tool, f.attempts) for f in failed] == [("flaky_write", 1)]
    given_up = [e for e in events if e.type.endswith(("tool.call.failed", "call.dead_lettered"))]
    assert len(given_up) == 2 and {e.source for e in given_up} == {"urn:test:framework"}, "the adapter's source"


async def test_a_timeout_bounds_each_attempt(bus: Bus, policies: PolicySet) -> None:
    tools = FrameworkTools(timeout_s=0.2, bus=bus, policies=policies)

    async def stuck() -> Any:
        await asyncio.sleep(5)

    async with tether.run(agent="fw-bot", run_id="run-fw-3", bus=bus):
        with pytest.raises(TimeoutError, match=r"'stuck' did not finish within its timeout of 0\.2 s"):
            await tools.acall("stuck", {}, stuck)


def test_a_bad_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="timeout_s must be a number of seconds above 0"):
        FrameworkTools(timeout_s=0)


def test_the_timeout_an_adapter_tells_the_framework_is_the_tools_or_its_routes() -> None:
    policies = fast_policies(**{"tool:slow": Policy(tool_timeout_s=2.5)})
    assert FrameworkTools(policies=policies).timeout("slow") == 2.5
    assert FrameworkTools(policies=policies).timeout("other") is None
    assert FrameworkTools(timeout_s=0.5, policies=policies).timeout("slow") == 0.5, "the adapter's option first"


async def test_a_tool_call_writes_its_arguments_once_for_the_journal_and_the_runaway_guard(
        bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    """In a run, the tool journal's hash and the runaway guard's fingerprint come from one canonical writing
    of the tool and its arguments (the guard's is the hash without ``sha256:``), and preparing a call seeds no
    random generator (its retry jitter comes from one the process shares): identical calls are still counted
    as identical, and refused past the guard's limit."""
    import random

    from tether.middleware import RunawayGuard, request_fingerprint, tool_hash

    policies = PolicySet(routes=fast_policies().routes, runaway=RunawayGuard(max_identical_calls=2))
    tools = FrameworkTools("urn:test:framework", bus=bus, policies=policies)
    spec = tools.spec("lookup")
    seen: list[str | None] = []
    prepare = spec.prepare

    def watched(*args: Any, **kwargs: Any) -> Any:
        prepared = prepare(*args, **kwargs)
        seen.append(prepared.call.fingerprint)
        return prepared

    def no_seeding(self: random.Random, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("a tool call seeded a random generator")

    await Hub.of(bus).engine(policies)  # made once (it seeds its own generator), as by the first dead letter
    monkeypatch.setattr(spec, "prepare", watched)
    monkeypatch.setattr(random.Random, "seed", no_seeding)
    arguments = {"city": "Zürich", "days": [1, 2.5, None]}
    runs = 0

    async def lookup() -> str:
        nonlocal runs
        runs += 1
        return "sunny"

    async with tether.run(agent="fw-bot", bus=bus) as run:
        for _ in range(2):
            assert await tools.acall("lookup", arguments, lookup) == "sunny"
        with pytest.raises(RunawayError, match="repeated the same call 3 times"):
            await tools.acall("lookup", arguments, lookup)
    assert runs == 2
    expected = request_fingerprint({"tool": "lookup", "arguments": arguments})
    assert seen == [expected] * 3 and tool_hash("lookup", arguments) == "sha256:" + expected
    failed = data(await run_events(bus, run.run_id), "tool.call.failed")[0]
    assert failed.error.type == "RunawayGuard"
