"""The pytest plugin, used as users use it: a test of the sample agent that reads like a test."""

from __future__ import annotations

import pytest

import tether.eval as ev
from tether.eval import Variant
from tether.eval.pytest_plugin import AgentRunner, assert_scores
from tether.testing import FakeProvider

from . import sample_agent

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


async def test_the_sample_agent_answers_with_its_tool(agent_run: AgentRunner, fake: FakeProvider) -> None:
    run = await agent_run(sample_agent.answer, "where is parcel 7?", agent="support-bot",
                          variant=Variant(model="gpt-4o-mini"))
    assert run.status == "ok"
    assert run.called_tool("lookup", question="where is parcel 7?")
    assert run.no_dead_letters()
    assert 0 < run.cost < 0.01
    assert run.retries == 0 and run.llm_calls == 1 and run.models == ("gpt-4o-mini",)
    await assert_scores(run, ev.contains("fake reply"), ev.regex(r"parcel"), ev.retries_at_most(0))


async def test_a_failing_scorer_fails_the_test_saying_why(agent_run: AgentRunner, fake: FakeProvider) -> None:
    run = await agent_run(sample_agent.answer, "fail on parcel 8", agent="support-bot", variant=Variant())
    assert run.status == "error" and run.error == "RuntimeError"
    assert run.called_tool("lookup") and run.llm_calls == 0
    with pytest.raises(AssertionError, match=r"contains: missing 'fake reply' .*exact: expected 'x'"):
        await assert_scores(run, ev.contains("fake reply"), ev.no_dead_letters(), ev.exact(), expected="x")
