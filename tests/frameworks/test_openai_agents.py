"""The OpenAI Agents SDK (openai-agents, at its current release, in .venv-openai-agents) under tether.

An ``Agent`` with one function tool (and, for handoffs, a triage agent before it) makes two model
calls (Responses API) to the fake provider; the script adds the two lines
docs/frameworks/openai-agents.md gives (``tether.init()``, ``use_default_client()``), keeps its
conversation in ``TetherSession`` and, when asked, puts memory into the model's input. The
failure, budget and tool-policy scenarios (``wrap_tools``) run in one process
(openai_agents_scenarios.py); TetherSession's protocol checks in another (openai_agents_session.py).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer

from .._envs import OptionalEnv, optional_env
from ._harness import HERE, POLICIES, Outcome, events, run_script

pytestmark = [pytest.mark.slow, pytest.mark.nats]

SCRIPT = "openai_agents_agent.py"
BUDGET_BOT = """
[budgets.agent."budget-bot"]
calls = 1
"""
QUESTION = "What is the weather in Paris?"
ITEMS = ["user", "function_call", "function_call_output", "message"]


@pytest.fixture(scope="module")
def venv() -> OptionalEnv:
    return optional_env("openai-agents", project=True)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(seed=1) as provider:
        yield provider


def test_one_run_with_llm_and_tool_spans_and_retries_tether_owns(venv: OptionalEnv, fake: FakeProvider,
                                                                  fresh_nats_server: NatsServer,
                                                                  tmp_path: Path) -> None:
    fake.set_faults("500#1/responses,503#3/responses")  # each model call fails once upstream
    out = run_script(venv, SCRIPT, "session-1", QUESTION, "", nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert out.said["ok"], out.said
    assert out.said["installed"] == ["openai-agents"]
    assert out.said["items"] == ITEMS, "the framework saw two answers, no error"
    assert out.upstream == ["500", "200", "503", "200"], "one retry per failure, by tether alone"
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    assert started.agentid == "weather-bot"
    assert out.types(started.runid) == [
        "run.started",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "run.finished"]
    run = out.runs()[started.runid]
    assert {e.agentid for e in run} == {"weather-bot"}
    tool = next(e for e in run if e.type == "tether.tool.call.completed")
    assert tool.data.tool == "get_weather" and tool.data.result == "It is sunny in fake city."
    assert tool.data.duration_ms is not None
    assert run[-1].data.status == "ok"


def test_a_handoff_is_a_child_run_of_the_first_agents(venv: OptionalEnv, fake: FakeProvider,
                                                      fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    out = run_script(venv, SCRIPT, "session-2", QUESTION, "", "--handoff", nats=fresh_nats_server, fake=fake,
                     work=tmp_path)
    assert out.said["ok"] and out.said["last_agent"] == "weather-bot", out.said
    out.events = events(fresh_nats_server, tmp_path / "home")
    root, child = out.started()
    assert root.agentid == "triage" and root.data.parent_run_id is None
    assert child.agentid == "weather-bot" and child.data.parent_run_id == root.runid
    assert out.types(root.runid) == ["run.started", "llm.call.requested", "llm.call.completed", "run.finished"]
    assert out.types(child.runid) == ["run.started", "llm.call.requested", "llm.call.completed", "run.finished"]
    assert out.runs()[root.runid][-1].time >= out.runs()[child.runid][-1].time, "the child ends first"


def test_the_session_survives_the_process_and_nats_restarting(venv: OptionalEnv, fake: FakeProvider,
                                                              fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    first = run_script(venv, SCRIPT, "session-5", QUESTION, "", nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert first.said["ok"] and first.said["restored"] == 0
    assert first.said["items"] == ITEMS
    fresh_nats_server.stop()
    fresh_nats_server.start()
    second = run_script(venv, SCRIPT, "session-5", "And in Lisbon?", "", nats=fresh_nats_server, fake=fake,
                        work=tmp_path)
    assert second.said["ok"], second.said
    assert second.said["restored"] == 4, ("the first process's four items, read back from tether", second.said)
    assert second.said["items"] == ITEMS * 2, "the new turn continues the old one"
    other = run_script(venv, SCRIPT, "session-6", QUESTION, "", nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert other.said["restored"] == 0, "sessions are kept apart"


def test_memory_is_injected_into_the_models_input_and_recorded(venv: OptionalEnv, fake: FakeProvider,
                                                               fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    remember = "Weather in Paris: the user wants degrees Celsius."
    out = run_script(venv, SCRIPT, "session-7", QUESTION, remember, nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert out.said["ok"], out.said
    assert out.said["items"] == ITEMS, "the injected memory is not kept in the session"
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    run = out.runs()[started.runid]
    recalls = [e for e in run if e.type == "tether.tool.call.completed" and e.data.tool == "tether.memory.context"]
    assert len(recalls) == 2, "one retrieval per model call"
    assert recalls[0].data.result["injected"] == ["agent:weather-bot/home-city@1"]
    sent = [e for e in run if e.type == "tether.llm.call.requested"]
    assert len(sent) == 2
    for call in sent:
        assert remember in call.data.request["instructions"]


def test_memory_is_injected_only_for_the_agents_named(venv: OptionalEnv, fake: FakeProvider,
                                                     fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    remember = "Weather in Paris: the user wants degrees Celsius."
    out = run_script(venv, SCRIPT, "session-8", QUESTION, remember, "--memory-for=another-bot",
                     nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert out.said["ok"], out.said
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    run = out.runs()[started.runid]
    assert not [e for e in run if e.type.startswith("tether.tool.call") and e.data.tool == "tether.memory.context"]
    assert all(remember not in e.data.request["instructions"] for e in run if e.type == "tether.llm.call.requested")


@pytest.fixture(scope="module")
def session_protocol(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """What openai_agents_session.py's calls of TetherSession returned."""
    work = tmp_path_factory.mktemp("openai-agents-session")
    with NatsServer() as nats:
        done = subprocess.run([str(venv.bin("python")), str(HERE / "openai_agents_session.py")], cwd=work,
                              capture_output=True, text=True, timeout=300, check=False,
                              env={**os.environ, "TETHER_NATS_URL": nats.url, "TETHER_HOME": str(work / "home"),
                                   "OPENAI_API_KEY": "sk-fake-key-for-tests"})
        assert done.returncode == 0, done.stderr[-4000:]
        yield json.loads(done.stdout.strip().splitlines()[-1])


def test_the_session_keeps_the_protocol(session_protocol: dict[str, Any]) -> None:
    said = session_protocol
    assert said["is_session"], "the SDK's runtime-checkable Session protocol"
    assert said["empty"] == [] and said["pop_empty"] is None
    assert said["all"] == ["0", "1", "2", "3", "4"], "in the order written"
    assert said["last_two"] == ["3", "4"]
    assert said["popped"] == "4" and said["after_pop"] == ["0", "1", "2", "3"]
    assert said["cleared"] == []
    assert said["other"] == ["other"], "a session whose id is a prefix of another's is its own"
    assert said["limits"] == {"0": [], "2": ["m4", "m5"], "4": ["m2", "m3", "m4", "m5"],
                              "10": ["m0", "m1", "m2", "m3", "m4", "m5"]}, "the latest n, oldest first"


@pytest.mark.parametrize("method", ["run", "run_sync", "run_streamed"])
def test_the_session_does_what_the_sdks_own_session_tests_check(session_protocol: dict[str, Any],
                                                                method: str) -> None:
    """The checks of the SDK's tests/memory/test_session.py (not shipped in its wheel) on TetherSession,
    through each runner method (``run_sync`` on a loop of its own, in a thread, as the SDK's tests do)."""
    said = session_protocol[method]
    assert said["seconds"] < 60, "the session's calls run on the bus's loop (else each waits out a timeout)"
    assert said["answers"] == ["San Francisco", "California", "Dogs", "Cats", "Listed"]
    golden, state, dogs, liked, listed = said["sent"]
    assert golden == ["What city is the Golden Gate Bridge in?"]
    assert state == ["What city is the Golden Gate Bridge in?", "San Francisco", "What state is it in?"], \
        "the second turn has the first"
    assert dogs == ["I like dogs"], "another session starts empty"
    assert liked == [*state, "California", "What did I say I like?"], "and the first session is its own"
    assert listed == ["Earlier message", "Saved reply", "Test message"], "a list input goes after the history"


@pytest.mark.skipif(not os.environ.get("TETHER_SLOW_TESTS"), reason="two Agents SDK processes (some 40 s): "
                    "TETHER_SLOW_TESTS=1 runs it; tests/adapters/test_resume.py covers the derived runs in make test")
def test_an_agent_run_inside_a_resumed_run_replays_its_model_calls(venv: OptionalEnv, fake: FakeProvider,
                                                                   fresh_nats_server: NatsServer,
                                                                   tmp_path: Path) -> None:
    """Wrapped in ``tether.run(run_id=..., resume=True)`` (a new session each time, so it asks the same):
    the second process gets both model answers (the triage agent's and, in the handoff's child run, the
    weather agent's) from the journal: the provider is not asked again."""
    first = run_script(venv, SCRIPT, "session-r1", QUESTION, "", "--handoff", "--resume=job-7",
                       nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert first.said["ok"], first.said
    assert first.upstream == ["200", "200"], "the triage agent's call, then the weather agent's"
    again = run_script(venv, SCRIPT, "session-r2", QUESTION, "", "--handoff", "--resume=job-7",
                       nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert again.said["ok"] and again.said["answer"] == first.said["answer"], again.said
    assert again.upstream == [], "every model call replayed"
    again.events = events(fresh_nats_server, tmp_path / "home")
    replayed = [e for e in again.events if e.type == "tether.call.replayed"]
    assert len(replayed) == 2 and {e.runid for e in replayed} <= {e.runid for e in again.events
                                                                   if e.type == "tether.llm.call.completed"}


@pytest.fixture(scope="module")
def scenarios(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """Every scenario of openai_agents_scenarios.py, run once in one process."""
    work = tmp_path_factory.mktemp("openai-agents-scenarios")
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(venv, "openai_agents_scenarios.py", nats=nats, fake=fake, work=work,
                         policies=POLICIES + BUDGET_BOT)
        out.said["traceparents"] = [r.traceparent for r in fake.log]
        out.events = events(nats, work / "home")
        yield out


def run_of(out: Outcome, agent: str) -> list[Event]:
    [started] = [e for e in out.started() if e.agentid == agent]
    return out.runs()[started.runid]


def test_a_persistent_failure_is_three_upstream_requests_not_nine(scenarios: Outcome) -> None:
    said = scenarios.said["persistent"]
    assert not said["ok"]
    assert said["error"] == "openai.InternalServerError", "the error the SDK raises without tether"
    assert said["upstream"] == ["500", "500", "500"], "tether's three attempts; the SDK retries none"
    run = run_of(scenarios, "persistent-bot")
    assert [e.type for e in run].count("tether.llm.call.failed") == 1
    assert run[-1].type == "tether.run.finished" and run[-1].data.status == "error"


def test_a_budget_refusal_is_the_sdks_own_rate_limit_error(scenarios: Outcome) -> None:
    said = scenarios.said["budget"]
    assert not said["ok"]
    assert said["error"] == "openai.RateLimitError" and "budget" in said["message"], said
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    run = run_of(scenarios, "budget-bot")
    failed = next(e for e in run if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0
    assert run[-1].data.status == "error"


def tool_events(out: Outcome, agent: str) -> list[tuple[str, str]]:
    """``(type, tool)`` of each tool event of ``agent``'s runs (the memory retrieval left out)."""
    return [(e.type.removeprefix("tether.tool.call."), e.data.tool) for e in out.events
            if e.type.startswith("tether.tool.call.") and e.agentid == agent]


def test_a_wrapped_tool_past_its_timeout_is_the_sdks_own_timeout_and_runs_once(scenarios: Outcome) -> None:
    said = scenarios.said["timeout"]
    assert said["ok"] and said["ran"] == 1, ("not idempotent: one attempt", said)
    assert said["outputs"] == ["Tool 'slow_lookup' timed out after 0.3 seconds."], "what the SDK gives its model"
    assert tool_events(scenarios, "slow-bot") == [
        ("requested", "slow_lookup"), ("attempt_failed", "slow_lookup"), ("failed", "slow_lookup")], \
        "one call, recorded once (not again from the trace's function span)"
    failed = next(e for e in scenarios.events if e.type == "tether.tool.call.failed" and e.agentid == "slow-bot")
    assert failed.data.attempts == 1 and failed.data.error.type == "APITimeoutError"
    assert "within its timeout of 0.3 s" in failed.data.error.message


def test_a_tool_error_the_sdk_gives_the_model_is_recorded_as_a_failed_call(scenarios: Outcome) -> None:
    said = scenarios.said["handled"]
    assert said["ok"] and said["ran"] == 1, ("not idempotent: one attempt", said)
    [output] = said["outputs"]
    assert output.startswith("An error occurred while running the tool."), "the SDK's default failure text, as without"
    assert tool_events(scenarios, "broken-bot") == [
        ("requested", "broken_lookup"), ("attempt_failed", "broken_lookup"), ("failed", "broken_lookup")], \
        "a failed call, not a completed one whose result is an error text"
    failed = next(e for e in scenarios.events if e.type == "tether.tool.call.failed" and e.agentid == "broken-bot")
    assert failed.data.error.type == "ToolError" and failed.data.error.message == output


def test_an_idempotent_wrapped_tool_is_retried_by_tether(scenarios: Outcome) -> None:
    said = scenarios.said["retried"]
    assert said["ok"] and said["ran"] == 2, ("its first attempt timed out, the second answered", said)
    assert said["outputs"] == ["It is cloudy in fake city."]
    assert tool_events(scenarios, "flaky-bot") == [
        ("requested", "flaky_lookup"), ("attempt_failed", "flaky_lookup"), ("completed", "flaky_lookup")]


def test_a_resumed_run_replays_its_completed_tool_call_without_running_it(scenarios: Outcome) -> None:
    crashed, resumed = scenarios.said["crashed"], scenarios.said["resumed"]
    assert not crashed["ok"] and crashed["error"] == "openai.InternalServerError", crashed
    assert crashed["ran"] == 1 and crashed["upstream"] == ["200", "500", "500", "500"]
    assert resumed["ok"] and resumed["ran"] == 1, ("the tool call was answered from the log", resumed)
    assert resumed["outputs"] == ["It is windy in fake city."], "the recorded result, as the SDK takes it"
    assert resumed["upstream"] == ["200"], "the first model call replayed too; the second made now"
    replayed = [e for e in scenarios.events if e.type == "tether.call.replayed" and e.data.call_kind == "tool"
                and e.agentid == "resume-bot"]
    assert [(e.data.tool, e.data.response) for e in replayed] == [("counted_lookup", "It is windy in fake city.")]


def test_a_crash_inside_a_wrapped_tool_stops_the_resumed_run_for_attention(scenarios: Outcome) -> None:
    said = scenarios.said["attention"]
    assert said["ok"], said
    assert said["attention"] == "tether.adapters.openai_agents.ToolNeedsAttention", "Runner.run raised it as it is"
    assert said["tool"] == "send_mail" and said["ran"] == 1, "the mail was not sent again"
    [attention] = [e for e in scenarios.events if e.type == "tether.run.needs_attention"]
    assert attention.agentid == "mail-bot" and attention.data.tool == "send_mail" and attention.data.position == 0


def test_each_model_request_carries_its_runs_trace_to_the_provider_or_gateway(scenarios: Outcome) -> None:
    """What a gateway in front of the provider reads to put the calls in a run (``traceparent``)."""
    sent = scenarios.said["traceparents"]
    assert len(sent) == 25 and all(sent), \
        "every request (3 + 1 + 2 + 2 + 2 + 4 + 1, 1 before a crash, and the MCP tools' 2 + 2 + 4 + 1) had one"
    traces_of_run: dict[str, set[str]] = {}  # a resumed run is opened again, in a trace of its own
    for started in scenarios.started():
        traces_of_run.setdefault(started.runid, set()).add(started.traceparent.split("-")[1])
    requested = [e for e in scenarios.events if e.type == "tether.llm.call.requested"]
    assert set(sent) <= {e.traceparent for e in requested}, "the call's own (its retries send it again)"
    for call in requested:
        assert call.traceparent.split("-")[1] in traces_of_run[call.runid], "the trace of the run that made it"


def test_an_mcp_servers_tool_past_its_timeout_is_the_sdks_own_timeout(scenarios: Outcome) -> None:
    said = scenarios.said["mcp-timeout"]
    assert said["ok"] and said["ran"] <= 1, ("not idempotent: one attempt (the server may not have begun it)", said)
    assert said["outputs"] == ["Tool 'mcp_slow_forecast' timed out after 2 seconds."], "what the SDK gives its model"
    assert tool_events(scenarios, "mcp-slow-bot") == [
        ("requested", "mcp_slow_forecast"), ("attempt_failed", "mcp_slow_forecast"), ("failed", "mcp_slow_forecast")], \
        "one call, recorded once (not again from the trace's function span)"


def test_an_idempotent_mcp_tool_is_retried_by_tether(scenarios: Outcome) -> None:
    said = scenarios.said["mcp-retried"]
    assert said["ok"] and said["ran"] == 2, ("its first attempt timed out, the second answered", said)
    assert said["outputs"] == [{"type": "text", "text": "Snow in fake city."}]
    assert tool_events(scenarios, "mcp-flaky-bot") == [
        ("requested", "mcp_flaky_forecast"), ("attempt_failed", "mcp_flaky_forecast"),
        ("completed", "mcp_flaky_forecast")]


def test_a_resumed_run_replays_its_completed_mcp_tool_call_without_calling_the_server(scenarios: Outcome) -> None:
    crashed, resumed = scenarios.said["mcp-crashed"], scenarios.said["mcp-resumed"]
    assert not crashed["ok"] and crashed["error"] == "openai.InternalServerError", crashed
    assert crashed["ran"] == 1 and crashed["upstream"] == ["200", "500", "500", "500"]
    assert resumed["ok"] and resumed["ran"] == 1, ("the MCP server was not called again", resumed)
    assert resumed["outputs"] == [{"type": "text", "text": "Booked in fake city."}], "the recorded result, as the SDK's"
    replayed = [e.data for e in scenarios.events if e.type == "tether.call.replayed" and e.data.call_kind == "tool"
                and e.data.tool == "mcp_book_table"]
    assert [r.response for r in replayed] == [{"type": "text", "text": "Booked in fake city."}]
