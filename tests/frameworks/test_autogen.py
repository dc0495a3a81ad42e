"""AutoGen AgentChat (autogen-agentchat + autogen-ext[openai], at their current releases, in .venv-autogen)
under tether.

``AssistantAgent`` with one tool makes two model calls (chat completions) to the fake provider over HTTP;
the script adds the two lines docs/frameworks/autogen.md gives (``tether.init()``, ``model_client(...)``).
AutoGen is slow to import, so one process runs every scenario in turn (``autogen_agent.py``), each agent
named for its scenario, the fake provider's faults set per scenario; the tests read what it said and
what the log holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer

from .._envs import optional_env
from ._harness import BUDGET_ONE_CALL, POLICIES, Outcome, events, run_script

pytestmark = [pytest.mark.slow, pytest.mark.nats]

SCENARIOS = ["retries", "down", "budget", "broken-tool", "sub-agent", "team", "memory", "tool-timeout", "tool-retry",
             "tool-resume", "kinds-agent-timeout", "kinds-agent-resume", "kinds-workbench-retry",
             "kinds-workbench-error", "kinds-workbench-resume", "kinds-attention"]
REMEMBER = "Weather in Paris: the user wants degrees Celsius."
MESSAGES = ["TextMessage", "ToolCallRequestEvent", "ToolCallExecutionEvent", "TextMessage"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    venv = optional_env("autogen", project=True)
    work = tmp_path_factory.mktemp("autogen")
    (work / "budget.toml").write_text(POLICIES + BUDGET_ONE_CALL)
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(venv, "autogen_agent.py", *SCENARIOS, nats=nats, fake=fake, work=work)
        out.events = events(nats, work / "home")
        yield out


@pytest.fixture(scope="module")
def with_otel_sdk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """The same agent in a process whose application set an OpenTelemetry SDK tracer provider first."""
    venv = optional_env("autogen", project=True)
    work = tmp_path_factory.mktemp("autogen-otel")
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(venv, "autogen_agent.py", "retries", "--otel-sdk", nats=nats, fake=fake, work=work)
        out.events = events(nats, work / "home")
        yield out


def run_of(out: Outcome, agent: str) -> list[Event]:
    [started] = [e for e in out.started() if e.agentid == agent]
    return out.runs()[started.runid]


def types(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run]


def test_one_run_with_llm_and_tool_spans_and_retries_tether_owns(outcome: Outcome) -> None:
    assert outcome.said["installed"] == ["autogen"]
    said = outcome.said["retries"]
    assert said["ok"] and said["messages"] == MESSAGES, "the framework saw two answers, no error"
    assert said["upstream"] == ["500", "200", "503", "200"], "one retry per failure, by tether alone"
    run = run_of(outcome, "retries_bot")
    assert run[0].data.name == "retries_bot" and run[0].data.parent_run_id is None
    assert types(run) == [
        "run.started",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "run.finished"]
    assert {e.agentid for e in run} == {"retries_bot"}
    requested, completed = (e for e in run if e.type.startswith("tether.tool.call"))
    assert requested.data.tool == "get_weather" and requested.data.arguments == {"city": "fake city"}
    assert completed.data.result == "It is sunny in fake city." and completed.data.duration_ms is not None
    assert run[-1].data.status == "ok"


def test_a_persistent_failure_is_three_upstream_requests_not_nine(outcome: Outcome) -> None:
    said = outcome.said["down"]
    assert not said["ok"] and said["error"] == "openai.InternalServerError", "the error AutoGen raises without tether"
    assert said["upstream"] == ["500", "500", "500"], "tether's three attempts; the SDK retries none"
    run = run_of(outcome, "down_bot")
    assert types(run).count("llm.call.failed") == 1
    assert run[-1].type == "tether.run.finished" and run[-1].data.status == "error"
    assert run[-1].data.error.type == "InternalServerError"


def test_a_budget_refusal_is_the_sdks_own_rate_limit_error(outcome: Outcome) -> None:
    said = outcome.said["budget"]
    assert not said["ok"] and said["error"] == "openai.RateLimitError" and "budget" in said["message"], said
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    run = run_of(outcome, "budget_bot")
    failed = next(e for e in run if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0
    assert run[-1].data.status == "error"


def test_a_tool_that_raises_is_a_failed_tool_call_with_its_arguments(outcome: Outcome) -> None:
    said = outcome.said["broken-tool"]
    assert said["ok"] and said["messages"] == MESSAGES, "AutoGen gives the error to the model, as without tether"
    run = run_of(outcome, "broken_tool_bot")
    requested, failed = (e for e in run if e.type.startswith("tether.tool.call"))
    assert requested.data.arguments == {"city": "fake city"}
    assert failed.type == "tether.tool.call.failed" and failed.data.tool == "get_weather"
    assert failed.data.error.type == "ConnectionError" and "is down" in failed.data.error.message
    assert run[-1].data.status == "ok"


def test_an_agent_used_as_a_tool_is_a_child_run(outcome: Outcome) -> None:
    assert outcome.said["sub-agent"]["ok"], outcome.said["sub-agent"]
    parent, child = run_of(outcome, "triage_bot"), run_of(outcome, "sub_agent_bot")
    assert child[0].data.parent_run_id == parent[0].runid and parent[0].data.parent_run_id is None
    assert child[0].traceparent.split("-")[1] == parent[0].traceparent.split("-")[1], "one trace"
    assert types(child) == ["run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested",
                            "tool.call.completed", "llm.call.requested", "llm.call.completed", "run.finished"]
    assert types(parent) == ["run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested",
                             "tool.call.completed", "run.finished"]
    assert [e.data.tool for e in parent if e.type == "tether.tool.call.completed"] == ["sub_agent_bot"]
    assert parent[-1].time >= child[-1].time, "the child ends first"


def test_a_team_is_a_run_and_each_agents_turn_its_child_run(outcome: Outcome) -> None:
    said = outcome.said["team"]
    assert said["ok"] and said["messages"] == [*MESSAGES, "TextMessage"], said
    team, turn = run_of(outcome, "weather_team"), run_of(outcome, "team_bot")
    critic = run_of(outcome, "team_critic_bot")
    assert team[0].data.name == "weather_team" and team[0].data.parent_run_id is None
    assert team[0].data.metadata["team"] == "RoundRobinGroupChat"
    assert turn[0].data.parent_run_id == critic[0].data.parent_run_id == team[0].runid, "each turn a child run"
    assert {r[0].traceparent.split("-")[1] for r in (team, turn, critic)} == {team[0].traceparent.split("-")[1]}
    assert types(turn) == ["run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested",
                           "tool.call.completed", "llm.call.requested", "llm.call.completed", "run.finished"]
    assert types(critic) == ["run.started", "llm.call.requested", "llm.call.completed", "run.finished"]
    assert types(team) == ["run.started", "run.finished"] and team[-1].data.status == "ok"
    assert team[-1].time >= critic[-1].time >= turn[-1].time, "the turns end first, in turn"


def test_memory_is_injected_into_the_models_context_and_recorded(outcome: Outcome) -> None:
    said = outcome.said["memory"]
    assert said["ok"] and "MemoryQueryEvent" in said["messages"], said
    run = run_of(outcome, "memory_bot")
    recalls = [e for e in run if e.type == "tether.tool.call.completed" and e.data.tool == "tether.memory.context"]
    assert len(recalls) == 1, "one retrieval per agent turn (AutoGen asks its memory once, before the first call)"
    assert recalls[0].data.result["injected"] == ["agent:weather-bot/home-city@1"]
    [sent] = [e for e in run if e.type == "tether.llm.call.requested"]
    system = [m["content"] for m in sent.data.request["messages"] if m["role"] == "system"]
    assert any(REMEMBER in text for text in system), system


def test_an_applications_own_otel_provider_keeps_its_spans_and_tether_gets_its_runs(with_otel_sdk: Outcome) -> None:
    said = with_otel_sdk.said
    assert said["retries"]["ok"] and said["retries"]["upstream"] == ["500", "200", "503", "200"]
    assert {"invoke_agent retries_bot", "execute_tool get_weather"} <= set(said["exported"]), \
        "the application's exporter still gets AutoGen's spans"
    run = run_of(with_otel_sdk, "retries_bot")
    assert types(run) == [
        "run.started",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "run.finished"]
    assert run[-1].data.status == "ok"


def tool_events(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run if e.type.startswith(("tether.tool.", "tether.call."))]


def test_a_tools_timeout_bounds_its_attempt_and_autogen_gives_the_error_to_the_model(outcome: Outcome) -> None:
    said = outcome.said["tool-timeout"]
    assert said["ok"] and said["messages"] == MESSAGES and said["ran"] == 1, said
    assert "did not finish within its timeout of 0.3 s" in said["tool_result"][0], said
    run = run_of(outcome, "tool_timeout_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.failed",
                                "call.dead_lettered"], "one span for the call: the policy's, not an observed one too"
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert failed.data.tool == "get_weather" and failed.data.attempts == 1
    assert run[-1].data.status == "ok"


def test_an_idempotent_tool_is_retried_under_the_policy(outcome: Outcome) -> None:
    said = outcome.said["tool-retry"]
    assert said["ok"] and said["messages"] == MESSAGES and said["ran"] == 2, "one failure, one retry"
    run = run_of(outcome, "tool_retry_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"]
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert completed.data.result == "It is sunny in fake city."


def test_a_resumed_run_replays_its_completed_tool_call_without_running_it(outcome: Outcome) -> None:
    said = outcome.said["tool-resume"]
    assert said["first"] == "InternalServerError" and said["ran_first"] == 1, said
    assert said["resumed"] == MESSAGES and said["ran_resumed"] == 1, "the booking was not made again"
    first, resumed = [e for e in outcome.started() if e.agentid == "tool_resume_bot"]
    assert first.runid == resumed.runid and resumed.data.resumed, "the agent's run, derived from the job's, resumed"
    run = outcome.runs()[resumed.runid]
    replayed = [e.data for e in run if e.type == "tether.call.replayed" and e.data.call_kind == "tool"]
    assert [(r.tool, r.response) for r in replayed] == [("get_weather", "Booked in fake city.")]


def test_bad_tools_and_teams_are_refused_with_what_to_pass(outcome: Outcome) -> None:
    assert outcome.said["refused"] == [
        "TypeError: tether.adapters.autogen.tools takes AutoGen tools and functions, not int",
        "ValueError: timeout_s must be a number of seconds above 0, got 0",
        "TypeError: tether.adapters.autogen.team takes an AutoGen team (RoundRobinGroupChat, SelectorGroupChat...), "
        "not object",
        "TypeError: tether.adapters.autogen.workbench takes an AutoGen Workbench (McpWorkbench, StaticWorkbench...), "
        "not list"]


def test_an_agent_tools_call_is_bounded_by_the_timeout_and_autogen_gives_the_error_to_the_model(
        outcome: Outcome) -> None:
    said = outcome.said["kinds-agent-timeout"]
    assert said["ok"] and said["ran"] <= 1, ("not idempotent: one attempt (its agent may not have reached it)", said)
    assert said["messages"][-2:] == ["ToolCallExecutionEvent", "TextMessage"], "the agent went on, as after an error"
    assert "did not finish within its timeout of 0.3 s" in said["tool_result"][0] and "is_error=True" in \
        said["tool_result"][0], said
    run = run_of(outcome, "kinds_agent_timeout_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.failed",
                                "call.dead_lettered"], "one span for the call: the policy's"
    child = run_of(outcome, "kinds_slow_agent")
    assert child[0].data.parent_run_id == run[0].runid, "the agent used as a tool is still a child run"


def test_a_resumed_run_replays_a_completed_agent_tool_call_without_running_its_agent(outcome: Outcome) -> None:
    said = outcome.said["kinds-agent-resume"]
    assert said["first"] == "InternalServerError" and said["ran_first"] == 1, said
    assert said["ran_resumed"] == 1, "the sub-agent did not run (and book) again"
    assert said["resumed"]["tool_result"] and "kinds_booker_agent: Booked in fake city." in \
        said["resumed"]["tool_result"][0], "the model got the recorded answer"
    assert len([e for e in outcome.started() if e.agentid == "kinds_booker_agent"]) == 1, "one child run: the first"
    first, resumed = [e for e in outcome.started() if e.agentid == "kinds_agent_resume_bot"]
    assert first.runid == resumed.runid and resumed.data.resumed
    replayed = [e.data for e in outcome.runs()[resumed.runid]
                if e.type == "tether.call.replayed" and e.data.call_kind == "tool"]
    assert [(r.tool, r.response) for r in replayed] == [
        ("kinds_booker_agent", "kinds_booker_agent: Booked in fake city.")]


def test_a_workbenchs_idempotent_tool_is_retried_after_its_timeout(outcome: Outcome) -> None:
    said = outcome.said["kinds-workbench-retry"]
    assert said["ok"] and said["ran"] == 2 and "It is sunny in fake city." in said["tool_result"][0], said
    run = run_of(outcome, "kinds_workbench_retry_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"], \
        "one span for the call (not the workbench's execute_tool span too), and the retry"


def test_a_workbench_tools_error_result_is_a_failed_call_and_reaches_the_model_as_it_came(outcome: Outcome) -> None:
    said = outcome.said["kinds-workbench-error"]
    assert said["ok"] and said["ran"] == 1, ("not idempotent: one attempt", said)
    assert "the weather service for fake city is down" in said["tool_result"][0] and "is_error=True" in \
        said["tool_result"][0]
    run = run_of(outcome, "kinds_workbench_error_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.failed",
                                "call.dead_lettered"]
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert "is down" in failed.data.error.message


def test_a_resumed_run_replays_a_workbench_tools_completed_call_as_its_tool_result(outcome: Outcome) -> None:
    said = outcome.said["kinds-workbench-resume"]
    assert said["first"] == "InternalServerError" and said["ran_first"] == 1, said
    assert said["ran_resumed"] == 1 and "Booked in fake city." in said["resumed"]["tool_result"][0], said
    first, resumed = [e for e in outcome.started() if e.agentid == "kinds_workbench_resume_bot"]
    assert first.runid == resumed.runid and resumed.data.resumed
    replayed = [e.data for e in outcome.runs()[resumed.runid]
                if e.type == "tether.call.replayed" and e.data.call_kind == "tool"]
    assert [r.tool for r in replayed] == ["get_weather"]
    assert replayed[0].response["is_error"] is False and replayed[0].response["result"][0]["content"] == \
        "Booked in fake city.", "the workbench's ToolResult, recorded and given back as one"


def test_needs_attention_reaches_the_model_as_the_tools_error_and_never_hangs_the_agent(outcome: Outcome) -> None:
    """AutoGen's workbench turns whatever a tool raises into the model's error text, and an AssistantAgent
    whose workbench raises waits forever: so a NeedsAttention (here the journal's, as a double) is that text
    on both paths, and the call does not run."""
    said = outcome.said["kinds-attention"]
    assert said["ok"] and said["ran"] == 0, said
    for path in ("tools", "workbench"):
        [result] = said[path]["tool_result"]
        assert "run autogen-attention needs attention" in result and "is_error=True" in result, (path, said)
        assert said[path]["messages"] == MESSAGES, "the agent went on, as after a tool's error"
