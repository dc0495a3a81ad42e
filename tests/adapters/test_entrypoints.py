"""``@tether.entrypoint``: the function that runs an agent, found by agent name, holding the run's lease."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from typing import Any

import pytest

import tether
from tether.adapters import LEASE_BUCKET, FinishedMeanwhile, LeaseHeld, RunLease, entrypoint_for
from tether.bus import Bus, open_bucket

from .conftest import data, run_events

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_an_entrypoint_runs_its_agent_in_a_run_under_the_run_lease(bus: Bus) -> None:
    inside = asyncio.Event()
    release = asyncio.Event()

    @tether.entrypoint(agent="lease-bot", bus=bus)
    async def handle(task: dict[str, Any]) -> dict[str, Any]:
        inside.set()
        await release.wait()
        return {"done": task["n"]}

    first = asyncio.create_task(handle({"n": 1}, run_id="lease-run-1"))
    await inside.wait()
    with pytest.raises(LeaseHeld, match="lease-run-1 is being run by"):
        await handle.resume("lease-run-1", {"n": 1})
    release.set()
    assert await first == {"done": 1}
    assert await handle.resume("lease-run-1", {"n": 1}) == {"done": 1}, "released when the run ended"
    events = await run_events(bus, "lease-run-1")
    started = data(events, "run.started")
    assert [s.resumed for s in started] == [False, True] and started[0].input == {"n": 1}
    assert [f.output for f in data(events, "run.finished")] == [{"done": 1}, {"done": 1}]
    assert entrypoint_for("lease-bot") is handle


async def test_a_resume_if_open_of_a_run_that_finished_meanwhile_does_not_run_it_again(bus: Bus) -> None:
    calls: list[int] = []

    @tether.entrypoint(agent="once-bot", bus=bus)
    async def handle(task: dict[str, Any]) -> int:
        calls.append(task["n"])
        return len(calls)

    await handle({"n": 1}, run_id="once-run-1")
    with pytest.raises(FinishedMeanwhile, match="once-run-1 finished \\(ok\\) before this resume took its lease"):
        await handle.resume("once-run-1", {"n": 1}, if_open=True)
    assert calls == [1], "the function did not run again"
    lease = await RunLease.take(bus, "once-run-1")  # the refused resume let its lease go
    await lease.release()
    assert len(data(await run_events(bus, "once-run-1"), "run.finished")) == 1


async def test_a_lease_whose_holder_died_on_this_machine_is_taken_over_at_once(bus: Bus) -> None:
    gone = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await gone.wait()
    dead_pid = gone.pid
    lease = await RunLease.take(bus, "lease-run-2")
    await lease.release()
    kv = await open_bucket(bus.js, LEASE_BUCKET)
    await kv.put(lease.key, json.dumps({"host": socket.gethostname(), "pid": dead_pid}).encode())
    taken = await RunLease.take(bus, "lease-run-2")
    await taken.release()

    await kv.put(lease.key, json.dumps({"host": socket.gethostname(), "pid": os.getppid()}).encode())
    with pytest.raises(LeaseHeld):  # alive: wait for it, or for the TTL
        await RunLease.take(bus, "lease-run-2")
    await kv.put(lease.key, json.dumps({"host": "another-machine", "pid": dead_pid}).encode())
    with pytest.raises(LeaseHeld):  # a pid on another machine says nothing here
        await RunLease.take(bus, "lease-run-2")
    await kv.purge(lease.key)


def test_an_entry_point_that_cannot_be_found_says_how_to_name_one(tmp_path: Any,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(LookupError, match=r"no entry point for agent 'nobody'.*@tether.entrypoint"):
        entrypoint_for("nobody")
    with pytest.raises(LookupError, match="write it as \"module:function\""):
        entrypoint_for("x", named="justamodule")
    with pytest.raises(LookupError, match="cannot be loaded"):
        entrypoint_for("x", named="no_such_module_here:main")
    (tmp_path / "plainagent.py").write_text("def run(task):\n    return task\nVALUE = 3\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = entrypoint_for("plain", entrypoints={"plain": "plainagent:run"})
    assert (entry.agent, entry.fn({"a": 1})) == ("plain", {"a": 1})
    with pytest.raises(LookupError, match="is a int, not a function"):
        entrypoint_for("plain", named="plainagent:VALUE")
