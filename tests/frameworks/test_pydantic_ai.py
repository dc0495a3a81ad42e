"""pydantic-ai (pydantic-ai-slim[openai], at its current release, in .venv-pydantic-ai) under tether.

An ``Agent`` with one tool makes two model calls (chat completions) to the fake provider; the
script adds the two lines docs/frameworks/pydantic-ai.md gives (``model(...)``,
``capabilities=[capability()]``) and runs its scenarios in one process; a second process, after
NATS restarted, continues the conversation kept in ``MessageHistory``.
"""

from __future__ import annotations

import json

import pytest

from tether.schemas import Event

from .._envs import OptionalEnv, optional_env
from ._harness import POLICIES, Outcome, across_a_restart

pytestmark = [pytest.mark.slow, pytest.mark.nats]

BUDGET_BOT = """
[budgets.agent."budget-bot"]
calls = 1
"""


@pytest.fixture(scope="module")
def venv() -> OptionalEnv:
    return optional_env("pydantic-ai", project=True)


@pytest.fixture(scope="module")
def agents(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """Every scenario of pydantic_ai_agent.py, run once against one fake provider and one NATS; then
    NATS restarts and a second process continues the conversation (``said["continued"]``)."""
    out, continued = across_a_restart(venv, "pydantic_ai_agent.py", work=tmp_path_factory.mktemp("pydantic-ai"),
                                      policies=POLICIES + BUDGET_BOT)
    out.said["continued"] = continued["history"]
    return out


def root_runs(out: Outcome) -> list[Event]:
    return [e for e in out.started() if e.data.parent_run_id is None]


def types(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run]


def run_number(out: Outcome, index: int) -> list[Event]:
    """The events of the ``index``-th scenario's run (scenarios run one after another)."""
    return out.runs()[root_runs(out)[index].runid]


def test_init_leaves_pydantic_ai_to_each_agents_capability(agents: Outcome) -> None:
    assert agents.said["installed"] == [], "pydantic-ai has no process-wide hook: nothing to install"


def test_one_run_with_llm_and_tool_spans_and_retries_tether_owns(agents: Outcome) -> None:
    said = agents.said["faults"]  # each model call fails once upstream (500, then 503)
    assert said["ok"] and said["messages"] == 4, said
    assert said["upstream"] == ["500", "200", "503", "200"], "one retry per failure, by tether alone"
    run = run_number(agents, 0)
    assert run[0].agentid == "weather-bot" and run[0].data.name == "weather-bot"
    assert types(run) == [
        "run.started",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "run.finished"]
    requested = next(e for e in run if e.type == "tether.tool.call.requested")
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert requested.data.tool == "get_weather" and requested.data.arguments == {"city": "fake city"}
    assert completed.data.result == "It is sunny in fake city." and completed.data.duration_ms is not None
    assert run[-1].data.status == "ok"


def test_a_persistent_429_is_three_upstream_requests_and_pydantic_ais_own_error(agents: Outcome) -> None:
    said = agents.said["persistent"]
    assert not said["ok"]
    assert said["error"] == "pydantic_ai.exceptions.ModelRateLimitError" and said["status"] == 429, said
    assert said["upstream"] == ["429", "429", "429"], "tether's three attempts; the SDK retries none"
    run = run_number(agents, 1)
    assert types(run).count("llm.call.failed") == 1 and run[-1].data.status == "error"


def test_a_budget_refusal_is_pydantic_ais_own_error_and_sends_nothing(agents: Outcome) -> None:
    said = agents.said["budget"]
    assert not said["ok"]
    assert said["error"] == "pydantic_ai.exceptions.ModelRateLimitError" and "budget_exceeded" in said["message"]
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    failed = next(e for e in run_number(agents, 2) if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0


def test_a_failing_tool_is_a_failed_tool_call_and_a_failed_run(agents: Outcome) -> None:
    said = agents.said["tool_error"]
    assert not said["ok"] and said["error"] == "builtins.ValueError", said
    run = run_number(agents, 3)
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert failed.data.tool == "get_forecast" and failed.data.error.message == "no forecast for fake city"
    assert run[-1].data.status == "error" and run[-1].data.error.type == "ValueError"


def test_an_agent_run_from_a_tool_is_a_child_run(agents: Outcome) -> None:
    assert agents.said["sub_agent"]["ok"]
    [child] = [e for e in agents.started() if e.data.parent_run_id is not None and e.agentid == "forecaster"]
    parent = root_runs(agents)[4]
    assert parent.agentid == "triage" and child.agentid == "forecaster" and child.data.parent_run_id == parent.runid
    assert types(agents.runs()[child.runid]) == ["run.started", "llm.call.requested", "llm.call.completed",
                                                 "run.finished"]
    assert types(agents.runs()[parent.runid]) == [
        "run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.completed", "run.finished"]


def test_a_model_of_another_provider_is_refused_with_what_to_do(agents: Outcome) -> None:
    assert "builds OpenAI chat models, not 'anthropic:claude-sonnet-4-5'" in agents.said["refused"]
    assert "http_client=tether.async_http_client()" in agents.said["refused"]


def test_memory_is_injected_into_each_request_and_recorded_not_kept(agents: Outcome) -> None:
    remember = "Weather in Paris: the user wants degrees Celsius."
    said = agents.said["memory"]
    assert said["ok"] and said["messages"] == 4, ("the injected memory is not kept in the run's history", said)
    run = run_number(agents, 5)
    assert run[0].agentid == "remembering-bot"
    recalls = [e for e in run if e.type == "tether.tool.call.completed" and e.data.tool == "tether.memory.context"]
    assert len(recalls) == 2, "one retrieval per model request"
    assert recalls[0].data.result["injected"] == ["agent:weather-bot/home-city@1"]
    sent = [e for e in run if e.type == "tether.llm.call.requested"]
    assert len(sent) == 2
    for call in sent:
        first = call.data.request["messages"][0]
        assert first["role"] == "system" and first["content"].startswith("What you remember:\n")
        assert remember in first["content"]


def tool_events(out: Outcome, agent: str) -> list[tuple[str, str]]:
    """``(type, tool)`` of each tool event of ``agent``'s runs."""
    return [(e.type.removeprefix("tether.tool.call."), e.data.tool) for e in out.events
            if e.type.startswith("tether.tool.call.") and e.agentid == agent]


def test_a_tool_past_its_timeout_is_pydantic_ais_own_timeout_and_runs_once(agents: Outcome) -> None:
    said = agents.said["tool_timeout"]
    assert said["ok"] and said["ran"]["slow_lookup"] == 1, ("not idempotent: one attempt", said)
    assert said["tool_returns"] == ["Timed out after 0.3 seconds."], "what pydantic-ai tells its model"
    assert tool_events(agents, "slow-bot") == [
        ("requested", "slow_lookup"), ("attempt_failed", "slow_lookup"), ("failed", "slow_lookup")]
    failed = next(e for e in agents.events if e.type == "tether.tool.call.failed" and e.agentid == "slow-bot")
    assert failed.data.attempts == 1 and "within its timeout of 0.3 s" in failed.data.error.message


def test_an_idempotent_tool_is_retried_by_tether(agents: Outcome) -> None:
    said = agents.said["tool_retried"]
    assert said["ok"] and said["ran"]["flaky_lookup"] == 2, ("its first attempt timed out", said)
    assert said["tool_returns"] == ["It is cloudy in fake city."]
    assert tool_events(agents, "flaky-bot") == [
        ("requested", "flaky_lookup"), ("attempt_failed", "flaky_lookup"), ("completed", "flaky_lookup")]


def test_a_resumed_run_replays_its_completed_tool_call_without_running_it(agents: Outcome) -> None:
    crashed, resumed = agents.said["crashed"], agents.said["resumed"]
    assert not crashed["ok"] and crashed["ran"]["counted_lookup"] == 1, crashed
    assert crashed["upstream"] == ["200", "500", "500", "500"]
    assert resumed["ok"] and resumed["ran"]["counted_lookup"] == 1, ("answered from the log", resumed)
    assert resumed["tool_returns"] == ["It is windy in fake city."], "the recorded result, as pydantic-ai takes it"
    assert resumed["upstream"] == ["200"], "the first model call replayed too; the second made now"
    replayed = [e for e in agents.events if e.type == "tether.call.replayed" and e.data.call_kind == "tool"]
    assert [(e.data.tool, e.data.response) for e in replayed] == [("counted_lookup", "It is windy in fake city.")]


def test_the_message_history_survives_the_process_and_nats_restarting(agents: Outcome) -> None:
    first, second = agents.said["history"], agents.said["continued"]
    assert first["restored"] == 0 and first["kept"] == 4 and first["same"], first
    assert second["restored"] == 4, ("the first process's four messages, read back from tether", second)
    assert second["kept"] == 8 and second["same"], "the new turn continues the old one"
    assert second["first_prompt"] == "What is the weather in Paris?"
    assert second["cleared"] == 0, "clear() forgets the conversation"
    [started] = [e for e in agents.started() if e.agentid == "history-bot" and e.data.parent_run_id is None][1:]
    sent = next(e for e in agents.runs()[started.runid] if e.type == "tether.llm.call.requested")
    assert "What is the weather in Paris?" in json.dumps(sent.data.request["messages"]), \
        "the model was sent the restored conversation"
