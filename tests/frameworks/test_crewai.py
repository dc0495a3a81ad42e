"""CrewAI (crewai, at its current release, in .venv-crewai) under tether.

A crew of one agent with one tool and one task makes two model calls (chat completions) to the
fake provider; the script adds the two lines docs/frameworks/crewai.md gives (``tether.init()``,
``llm(...)``) and runs its scenarios in one process, so CrewAI is imported once for all of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer

from .._envs import OptionalEnv, optional_env
from ._harness import POLICIES, Outcome, events, run_script

pytestmark = [pytest.mark.slow, pytest.mark.nats]

BUDGET_BOT = """
[budgets.agent."budget-bot"]
calls = 1
"""


@pytest.fixture(scope="module")
def venv() -> OptionalEnv:
    return optional_env("crewai", project=True)


@pytest.fixture(scope="module")
def crews(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """Every scenario of crewai_agent.py, run once against one fake provider and one NATS."""
    work = tmp_path_factory.mktemp("crewai")
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(venv, "crewai_agent.py", nats=nats, fake=fake, work=work, policies=POLICIES + BUDGET_BOT)
        out.events = events(nats, work / "home")
        yield out


def crew_run(out: Outcome, name: str) -> tuple[Event, Event, list[Event]]:
    """The crew's run, its one task's child run, and the child run's events."""
    [crew] = [e for e in out.started() if e.data.name == name]
    [task] = [e for e in out.started() if e.data.parent_run_id == crew.runid]
    return crew, task, out.runs()[task.runid]


def types(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run]


def test_init_finds_crewai_once(crews: Outcome) -> None:
    assert crews.said["installed"] == crews.said["again"] == ["crewai"]


def test_one_run_with_a_task_run_llm_and_tool_spans_and_retries_tether_owns(crews: Outcome) -> None:
    said: dict[str, Any] = crews.said["faults"]  # each model call fails once upstream (500, then 503)
    assert said["ok"], said
    assert said["crewai_saw"] == {"completed": 2}, "CrewAI saw two answers and no failure"
    assert said["upstream"] == ["500", "200", "503", "200"], "one retry per failure, by tether alone"
    crew, task, run = crew_run(crews, "faults")
    assert crew.agentid == "faults" and crew.data.parent_run_id is None and crew.data.metadata["kind"] == "crew"
    assert task.agentid == "weather-bot" and task.data.name == "What is the weather in Paris?"
    assert types(run) == [
        "run.started",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "run.finished"]
    assert {e.agentid for e in run} == {"weather-bot"}
    requested = next(e for e in run if e.type == "tether.tool.call.requested")
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert requested.data.tool == "get_weather" and requested.data.arguments == {"city": "fake city"}
    assert completed.data.result == "It is sunny in fake city." and completed.data.duration_ms is not None
    assert run[-1].data.status == "ok"
    assert types(crews.runs()[crew.runid]) == ["run.started", "run.finished"], "the calls are the task's"
    assert crews.runs()[crew.runid][-1].data.status == "ok"


def test_a_persistent_429_is_three_upstream_requests_not_27(crews: Outcome) -> None:
    said = crews.said["persistent"]
    assert not said["ok"]
    assert said["error"] == "tether.adapters.crewai.TetherLLMError", said
    assert "crewai.hooks.dispatch.HookAborted" in said["kinds"], "CrewAI's own error for a deliberate stop"
    assert said["upstream"] == ["429", "429", "429"], ("tether's three attempts; neither CrewAI's rate-limit "
                                                      "retry nor the agent's max_retry_limit ran again")
    crew, _, run = crew_run(crews, "persistent")
    assert types(run).count("llm.call.requested") == 1 and types(run).count("llm.call.failed") == 1
    assert run[-1].data.status == "error" and crews.runs()[crew.runid][-1].data.status == "error"
    assert run[-1].data.error.type == "TetherLLMError"


def test_a_budget_refusal_is_crewais_own_error_and_sends_nothing(crews: Outcome) -> None:
    said = crews.said["budget"]
    assert not said["ok"]
    assert said["error"] == "tether.adapters.crewai.TetherLLMError" and said["error_code"] == "budget_exceeded"
    assert "budget" in said["message"] and "crewai.hooks.dispatch.HookAborted" in said["kinds"]
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    _, _, run = crew_run(crews, "budget")
    failed = next(e for e in run if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0
    assert run[-1].data.status == "error"


def test_a_failing_tool_is_a_failed_tool_call(crews: Outcome) -> None:
    said = crews.said["tool_error"]
    assert said["ok"], "CrewAI gives the tool's error to the model, which answers"
    _, _, run = crew_run(crews, "tool_error")
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert failed.data.tool == "get_forecast" and "no forecast for fake city" in failed.data.error.message
    assert "tool.call.completed" not in types(run)


def test_the_private_api_tether_relies_on_is_there(crews: Outcome) -> None:
    assert crews.said["hooks"] == {"missing": [], "transports": ["TetherTransport", "AsyncTetherTransport"]}


def test_bad_options_are_refused_with_what_to_do(crews: Outcome) -> None:
    retries, provider = crews.said["refused"]
    assert "tether owns the retries" in retries and "leave max_retries out (was 3)" in retries
    assert "not 'anthropic/claude'" in provider and "OpenAI-compatible models (base_url=)" in provider
