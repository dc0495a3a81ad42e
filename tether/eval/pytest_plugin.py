"""pytest fixtures and assertions over a run's trace, so agent tests read like tests::

    pytest_plugins = ["tether.testing.pytest_plugin", "tether.eval.pytest_plugin"]

    async def test_agent(agent_run):
        run = await agent_run(my_agent, "Where is my parcel?", agent="support-bot")
        assert run.called_tool("lookup") and run.no_dead_letters() and run.cost < 0.01
        await assert_scores(run, contains("parcel"))
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tether.adapters import Hub, run
from tether.bus import Bus, connect

from ._log import read_run
from ._scorers import Case, Scorer
from ._trace import RunTrace

__all__ = ["agent_run", "assert_scores", "tether_bus"]

AgentRunner = Callable[..., Awaitable[RunTrace]]


@pytest.fixture
async def tether_bus(nats_server: Any, tmp_path: Path) -> AsyncIterator[Bus]:
    """A bus on the session's nats-server (``tether.testing.pytest_plugin``'s ``nats_server``)."""
    async with await connect(nats_server.url, home=tmp_path / "tether-home") as bus:
        yield bus
        await Hub.of(bus).aclose()


@pytest.fixture
def agent_run(tether_bus: Bus) -> AgentRunner:
    """``await agent_run(fn, input, agent="bot", **kwargs)``: ``fn(input, **kwargs)`` (sync or
    async) inside a tether run, and the run's trace once its events are in the log. An agent
    that raises is not re-raised: the trace says ``status == "error"`` and ``error``."""

    async def go(fn: Callable[..., Any], value: Any, *, agent: str = "test-agent", **kwargs: Any) -> RunTrace:
        try:
            async with run(agent=agent, bus=tether_bus, input=value) as running:
                result = fn(value, **kwargs)
                running.output = await result if inspect.isawaitable(result) else result
        except Exception:  # recorded on the run: the test asserts on the trace
            pass
        await Hub.of(tether_bus).flush()
        return await read_run(tether_bus, running.run_id)

    return go


async def assert_scores(trace: RunTrace, *scorers: Scorer, expected: Any = None) -> None:
    """Fail the test, naming each scorer that did not pass and why, unless all of them pass."""
    case = Case(trace.input, trace.output, expected, trace, trace.run_id)
    failed = []
    for scorer in scorers:
        score = await scorer.score(case)
        if score.passed is not True:
            failed.append(f"{scorer.name}: {score.reason or 'did not pass'} (value {score.value})")
    if failed:
        raise AssertionError(f"run {trace.run_id} ({trace.status}): " + "; ".join(failed))
