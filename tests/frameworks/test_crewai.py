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

[routes."tool:slow_lookup"]
tool_timeout_s = 0.3

[routes."tool:slow_async_lookup"]
tool_timeout_s = 0.3

[routes."tool:flaky_async_read"]
idempotent = true

[routes."tool:delegate_work_to_coworker"]
idempotent = true
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


@pytest.mark.parametrize("scenario", ["budget", "budget_options"])
def test_a_budget_refusal_is_crewais_own_error_and_sends_nothing(crews: Outcome, scenario: str) -> None:
    """The budget from tether.toml (an agent's), and from llm(tether={"policies": {...}}) (a run's):
    a mapping in tether.toml's shape was handed to tether.instrument as it was, which failed on it
    inside the transport (CrewAI saw a connection error, retried, and nothing was refused)."""
    said = crews.said[scenario]
    assert not said["ok"]
    assert said["error"] == "tether.adapters.crewai.TetherLLMError" and said["error_code"] == "budget_exceeded", said
    assert "budget" in said["message"] and "crewai.hooks.dispatch.HookAborted" in said["kinds"]
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    _, _, run = crew_run(crews, scenario)
    failed = next(e for e in run if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0
    assert run[-1].data.status == "error"


def test_llms_policies_option_takes_a_file_or_tables_and_refuses_anything_else(crews: Outcome) -> None:
    assert crews.said["policies_taken"] == ["PolicySet", "PolicySet"], "a path and a dict become a PolicySet"
    _, _, bad_policies, unknown, one_string, _ = crews.said["refused"]
    assert bad_policies.startswith("TypeError: tether.adapters.crewai.llm(tether={'policies': ...}): policies must "
                                   "be a tether.middleware.PolicySet, the path of a TOML file")
    assert bad_policies.endswith("not int")
    assert "tether= takes tether.instrument's options (agent, bus, capture" in unknown and "not 'policy'" in unknown
    assert "idempotent_tools is a collection of tool names" in one_string
    assert "write idempotent_tools={'flaky_read'}" in one_string


def test_a_failing_tool_is_a_failed_tool_call_run_once(crews: Outcome) -> None:
    said = crews.said["tool_error"]
    assert said["ok"], "CrewAI gives the tool's error to the model, which answers"
    _, _, run = crew_run(crews, "tool_error")
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert failed.data.tool == "get_forecast" and "no forecast for fake city" in failed.data.error.message
    assert failed.data.attempts == 1, "not idempotent: run once"
    assert "tool.call.completed" not in types(run)
    assert types(run).count("tool.call.requested") == 1, "one span per call: the hooks no longer observe it"


def test_a_tool_is_stopped_at_its_routes_timeout(crews: Outcome) -> None:
    said = crews.said["tool_timeout"]
    assert said["ok"], "CrewAI gives the timeout to the model as the tool's error, and the model answers"
    _, _, run = crew_run(crews, "tool_timeout")
    assert types(run)[types(run).index("tool.call.requested"):][:3] == [
        "tool.call.requested", "tool.call.attempt_failed", "tool.call.failed"]
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert "'slow_lookup' did not finish within its timeout of 0.3 s" in failed.data.error.message
    assert failed.data.attempts == 1
    requested = next(e for e in run if e.type == "tether.tool.call.requested")
    assert requested.source == "urn:tether:adapter:crewai" and requested.data.position == 0


def test_an_idempotent_tool_is_retried(crews: Outcome) -> None:
    said = crews.said["tool_retry"]
    assert said["ok"] and said["ran"]["flaky_read"] == 2, "failed once (a reset), retried, answered"
    _, _, run = crew_run(crews, "tool_retry")
    assert [t for t in types(run) if t.startswith("tool.")] == [
        "tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"]
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert completed.data.result == "Rain in fake city."


def test_a_resumed_crew_replays_its_completed_tool_call_without_running_it(crews: Outcome) -> None:
    crashed, resumed = crews.said["resume"]["crashed"], crews.said["resume"]["resumed"]
    assert not crashed["ok"] and crashed["ran"] == {"count_stock": 1}
    assert crashed["upstream"] == ["200", "500", "500", "500"], "the second model call failed after the tool ran"
    assert resumed["ok"] and resumed["ran"] == {"count_stock": 1}, "the tool (a BaseTool subclass) did not run again"
    assert resumed["upstream"] == ["200"], "the first model call was replayed too: only the second was sent"
    [task] = {e.runid for e in crews.started()
              if e.agentid == "stock-bot" and (e.data.metadata or {}).get("kind") == "task"}
    second = types(crews.runs()[task])[types(crews.runs()[task]).index("run.started", 1):]
    assert second == ["run.started", "llm.call.requested", "call.replayed", "tool.call.requested", "call.replayed",
                      "llm.call.requested", "llm.call.completed", "run.finished"]
    replayed = [e for e in crews.runs()[task] if e.type == "tether.call.replayed"][1]
    assert replayed.data.tool == "count_stock" and replayed.data.response == "41 umbrellas in fake city."


def test_a_resumed_crew_stops_at_a_call_its_process_died_in(crews: Outcome) -> None:
    """A tool that is not idempotent, the process gone inside it: the resumed crew neither runs it
    again nor lets CrewAI hand the stop to the model as a tool error; it raises tether.NeedsAttention."""
    said = crews.said["attention"]
    assert said["crashed"] == {"send_invoice": 1}
    resumed = said["resumed"]
    assert not resumed["ok"] and resumed["ran"] == {"send_invoice": 1}, "not run again"
    assert resumed["error"] == "tether.adapters.crewai.TetherNeedsAttention", resumed
    assert {"tether.adapters._runs.NeedsAttention", "crewai.hooks.dispatch.HookAborted"} <= set(resumed["kinds"])
    assert (resumed["tool"], resumed["position"]) == ("send_invoice", 0)
    assert "tether runs resolve" in resumed["message"] and resumed["upstream"] == [], "nothing sent after it"
    [task] = {e.runid for e in crews.started()
              if e.agentid == "invoice-bot" and (e.data.metadata or {}).get("kind") == "task"}
    assert types(crews.runs()[task])[-3:] == ["llm.call.requested", "call.replayed", "run.needs_attention"]


def test_crewais_memory_kept_in_tether_memory_is_there_for_a_new_connection(crews: Outcome) -> None:
    """crewai.Memory(storage=TetherMemoryStorage(...)): each record a tether memory entry, recalled by
    CrewAI's own search over its embeddings, read back through a new connection (a view of the log
    built again), one scope forgotten (a memory.deleted event), no model call made."""
    said = crews.said["memory"]
    assert said["first"] == said["again"] == ["The customer prefers email over phone."]
    assert said["record"] == {"scope": "/customers/acme", "categories": ["contact"], "importance": 0.8,
                              "embedded": True}
    assert said["scopes"] == ["/customers", "/office"] and said["categories"] == {"contact": 1, "hours": 1}
    assert said["info"] == {"record_count": 1, "child_scopes": ["/customers/acme"]}
    assert said["forgotten"] == 1 and said["left"] == ["The customer prefers email over phone."]
    assert said["missing"] and said["history"] == [1] and said["upstream"] == 0
    memory = [e for e in crews.events if e.type.startswith("tether.memory.")]
    assert [(e.type.removeprefix("tether.memory."), e.data.namespace) for e in memory] == [
        ("written", "crew:research"), ("written", "crew:research"), ("deleted", "crew:research")]
    assert memory[0].data.key == said["email_id"]
    assert said["bad_namespace"].startswith("InvalidMemory: invalid namespace 'research': use 'global' or")


def test_the_private_api_tether_relies_on_is_there(crews: Outcome) -> None:
    hooks = crews.said["hooks"]
    assert hooks["missing"] == [] and hooks["listed"] == ["_build_sync_client", "_build_async_client", "_run", "_arun"]
    assert hooks["transports"] == ["TetherTransport", "AsyncTetherTransport"], "the clients CrewAI built are tether's"
    assert hooks["run_governed"], "a BaseTool subclass's _run was put under the tool policy"


def test_a_crewai_without_a_hook_is_refused_naming_its_version(crews: Outcome) -> None:
    changed = crews.said["hooks"]["changed"]
    installed = crews.said["hooks"]["version"]
    assert installed.startswith("1.")
    assert changed.startswith(f"CrewAIChanged: crewai {installed}: crewai.llms.providers.openai.completion."
                              "OpenAICompletion._build_sync_client is not what tether relies on (it is missing)")
    assert "crewai.tools.BaseTool._run is not what tether relies on" in changed
    assert "Every use is in tether.adapters._crewaipriv: adapt it there" in changed


def test_bad_options_are_refused_with_what_to_do(crews: Outcome) -> None:
    retries, provider, *_, storage = crews.said["refused"]
    assert storage == ("TypeError: TetherMemoryStorage takes a tether.memory.Memory "
                       "(tether.memory.Memory.connect(...)), not object")
    assert "tether owns the retries" in retries and "leave max_retries out (was 3)" in retries
    assert "not 'anthropic/claude'" in provider and "OpenAI-compatible models (base_url=)" in provider


@pytest.mark.parametrize("kickoff", ["async_timeout", "akickoff_timeout"])
def test_an_async_tool_is_stopped_at_its_routes_timeout(crews: Outcome, kickoff: str) -> None:
    """Under ``Crew.kickoff()`` and ``Crew.akickoff()`` (CrewAI runs native tool calls in a thread of its own
    either way, an async tool there with ``asyncio.run``)."""
    said = crews.said[kickoff]
    assert said["ok"], "CrewAI gives the timeout to the model as text"
    assert said["ran"]["slow_async_lookup"] == (1 if kickoff == "async_timeout" else 2)  # RAN counts both
    _, _, run = crew_run(crews, kickoff)
    assert [t for t in types(run) if t.startswith("tool.")] == [
        "tool.call.requested", "tool.call.attempt_failed", "tool.call.failed"], "one span, from the tool policy"
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert "'slow_async_lookup' did not finish within its timeout of 0.3 s" in failed.data.error.message
    assert failed.data.attempts == 1, "not idempotent: run once"
    requested = next(e for e in run if e.type == "tether.tool.call.requested")
    assert requested.source == "urn:tether:adapter:crewai" and requested.data.arguments == {"city": "fake city"}


def test_an_async_tool_marked_idempotent_in_tether_toml_is_retried(crews: Outcome) -> None:
    said = crews.said["async_retry"]
    assert said["ok"] and said["ran"]["flaky_async_read"] == 2, "failed once (a reset), retried, answered"
    _, _, run = crew_run(crews, "async_retry")
    assert [t for t in types(run) if t.startswith("tool.")] == [
        "tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"]
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert completed.data.result == "Rain in fake city."


def test_a_resumed_crew_replays_its_completed_async_tool_call_without_running_it(crews: Outcome) -> None:
    crashed, resumed = crews.said["async_resume"]["crashed"], crews.said["async_resume"]["resumed"]
    assert not crashed["ok"] and crashed["ran"] == {"count_stock_async": 1}
    assert resumed["ok"] and resumed["ran"] == {"count_stock_async": 1}, "the async _run did not run again"
    assert resumed["upstream"] == ["200"]
    [task] = {e.runid for e in crews.started()
              if e.agentid == "async-stock-bot" and (e.data.metadata or {}).get("kind") == "task"}
    second = types(crews.runs()[task])[types(crews.runs()[task]).index("run.started", 1):]
    assert second == ["run.started", "llm.call.requested", "call.replayed", "tool.call.requested", "call.replayed",
                      "llm.call.requested", "llm.call.completed", "run.finished"]
    replayed = [e for e in crews.runs()[task] if e.type == "tether.call.replayed"][1]
    assert replayed.data.tool == "count_stock_async" and replayed.data.response == "41 umbrellas in fake city."


def test_a_tools_own_arun_runs_under_the_tool_policy(crews: Outcome) -> None:
    said = crews.said["arun"]
    assert said["result"] == "1 umbrellas counted in Oslo." and said["ran"] == {"count_stock_arun": 1}
    [run] = [e.runid for e in crews.started() if e.runid == "crewai-arun-1"]
    tools = [e for e in crews.runs()[run] if e.type.startswith("tether.tool.")]
    assert [(e.type, e.data.tool) for e in tools] == [("tether.tool.call.requested", "count_stock_async"),
                                                      ("tether.tool.call.completed", "count_stock_async")]
    assert tools[0].data.arguments == {"city": "Oslo"} and tools[1].data.result == "1 umbrellas counted in Oslo."


def test_a_delegation_is_a_governed_tool_call_and_the_coworker_a_child_run(crews: Outcome) -> None:
    """CrewAI's "Delegate work to coworker" (a tool CrewAI adds to the task, on no agent's list) runs
    under the tool policy, and the coworker it hands the work to works in a child run of the task's."""
    said = crews.said["delegation"]
    assert said["ok"], said
    assert said["upstream"] == ["200", "200", "200"], "the planner's call, the coworker's, the planner's answer"
    _, task, run = crew_run(crews, "delegation")
    assert task.agentid == "planner"
    tools = [e for e in run if e.type.startswith("tether.tool.")]
    assert [(e.type, e.data.tool) for e in tools] == [
        ("tether.tool.call.requested", "delegate_work_to_coworker"),
        ("tether.tool.call.completed", "delegate_work_to_coworker")], "one span, from the tool policy"
    assert tools[0].data.arguments["coworker"] == "fake coworker" and tools[0].source == "urn:tether:adapter:crewai"
    [child] = [e for e in crews.started() if e.data.parent_run_id == task.runid]
    assert (child.agentid, child.data.name, child.data.metadata["kind"]) == ("fake coworker", "fake coworker",
                                                                             "delegation")
    assert types(crews.runs()[child.runid]) == ["run.started", "llm.call.requested", "llm.call.completed",
                                                "run.finished"], "the coworker's model call is in its own run"
    assert crews.runs()[child.runid][-1].data.status == "ok"
    assert tools[1].data.result == crews.runs()[child.runid][2].data.response["choices"][0]["message"]["content"]


def test_a_resumed_crew_replays_a_completed_delegation_without_the_coworker_working_again(crews: Outcome) -> None:
    crashed, resumed = crews.said["delegation_resume"]["crashed"], crews.said["delegation_resume"]["resumed"]
    assert not crashed["ok"] and crashed["upstream"] == ["200", "200", "500", "500", "500"], crashed
    assert resumed["ok"], resumed
    assert resumed["upstream"] == ["200"], "the planner's first call and the whole delegation replayed"
    crew_runs = {e.runid for e in crews.started() if e.data.name == "delegation-resume"}
    [task] = {e.runid for e in crews.started() if e.data.parent_run_id in crew_runs and e.agentid == "planner"}
    second = types(crews.runs()[task])[types(crews.runs()[task]).index("run.started", 1):]
    assert second == ["run.started", "llm.call.requested", "call.replayed", "tool.call.requested", "call.replayed",
                      "llm.call.requested", "llm.call.completed", "run.finished"]
    children = [e for e in crews.started() if e.data.parent_run_id == task]
    assert [(e.agentid, e.data.metadata["kind"]) for e in children] == [("fake coworker", "delegation")], \
        "the coworker's child run was opened once, in the first process, not again"


def test_a_coworkers_stop_stops_the_resumed_crew_instead_of_becoming_a_text(crews: Outcome) -> None:
    """The coworker's process died inside its tool (not idempotent); the delegation is idempotent, so
    the resumed crew delegates again and the coworker's resumed run stops at that call. CrewAI's
    delegation tool catches every exception of its coworker: tether raises the stop again from the
    delegation, and the crew stops with TetherNeedsAttention naming the coworker's call."""
    said = crews.said["coworker_attention"]
    assert said["crashed"] == {"send_invoice": 1}
    resumed = said["resumed"]
    assert not resumed["ok"] and resumed["error"] == "tether.adapters.crewai.TetherNeedsAttention", resumed
    assert resumed["tool"] == "send_invoice" and resumed["ran"] == {"send_invoice": 1}, "not run again"
    assert resumed["upstream"] == [], "both model calls before the crash replayed, nothing sent after the stop"
    [child] = {e.runid for e in crews.started() if e.agentid == "fake coworker"
               and e.data.parent_run_id in {t.runid for t in crews.started() if t.agentid == "planner"}
               and any(x.type == "tether.run.needs_attention" for x in crews.runs()[e.runid])}
    assert resumed["run_id"] == child, "the stop names the coworker's run, where the call is to be resolved"
    assert types(crews.runs()[child])[-3:] == ["llm.call.requested", "call.replayed", "run.needs_attention"]
