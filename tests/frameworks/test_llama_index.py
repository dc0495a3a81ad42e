"""LlamaIndex (llama-index-core and llama-index-llms-openai, at their current releases, in
.venv-llama-index) under tether.

A ``FunctionAgent`` with one tool makes two model calls (streamed chat completions) to the fake
provider (a ``ReActAgent`` and a ``CodeActAgent`` too, told their tool calls in words); the script
adds the lines docs/frameworks/llama-index.md gives (``tether.init()``, ``llm(...)``,
``wrap_tools(agent)``) and runs its scenarios in one process; a second process, after
NATS restarted, continues the conversation kept in ``TetherChatStore``.
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
    return optional_env("llama-index", project=True)


@pytest.fixture(scope="module")
def agents(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """Every scenario of llama_index_agent.py, run once against one fake provider and one NATS; then
    NATS restarts and a second process continues the conversation (``said["continued"]``)."""
    out, continued = across_a_restart(venv, "llama_index_agent.py", work=tmp_path_factory.mktemp("llama-index"),
                                      policies=POLICIES + BUDGET_BOT)
    out.said["continued"], out.said["context_continued"] = continued["history"], continued["context"]
    return out


def root_runs(out: Outcome, agent: str) -> list[Event]:
    return [e for e in out.started() if e.agentid == agent and e.data.parent_run_id is None]


def types(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run]


def run_of(out: Outcome, agent: str, index: int = 0) -> list[Event]:
    """The events of ``agent``'s ``index``-th run."""
    return out.runs()[root_runs(out, agent)[index].runid]


def tool_events(out: Outcome, agent: str) -> list[tuple[str, str]]:
    """``(type, tool)`` of each tool event of ``agent``'s runs."""
    return [(e.type.removeprefix("tether.tool.call."), e.data.tool) for e in out.events
            if e.type.startswith("tether.tool.call.") and e.agentid == agent]


def test_init_installs_the_span_handler_once(agents: Outcome) -> None:
    assert agents.said["installed"] == ["llama-index"]


def test_the_span_handler_reads_its_state_without_pydantics_getattr(agents: Outcome) -> None:
    # LlamaIndex calls it at every span's start and end; each read of a private attribute through
    # pydantic's __getattr__ cost about 3 µs (four a span before)
    assert agents.said["handler_lookups"] == 0


def test_the_private_members_tether_relies_on_are_as_it_expects(agents: Outcome) -> None:
    assert agents.said["broken_hooks"] == [], "\n".join(agents.said["broken_hooks"])


def test_one_run_with_llm_and_tool_spans_and_retries_tether_owns(agents: Outcome) -> None:
    said = agents.said["faults"]  # the first model call fails once upstream with a 500, the second with a 429
    assert said["ok"] and said["tool_returns"] == ["It is sunny in fake city."], said
    assert said["upstream"] == ["500", "200", "429", "200"], "one retry per failure, by tether alone"
    started = root_runs(agents, "weather-bot")[0]
    run = agents.runs()[started.runid]
    assert started.data.name == "weather-bot" and started.data.metadata["workflow"] == "FunctionAgent"
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


def test_a_persistent_429_is_three_upstream_requests_and_openais_own_error(agents: Outcome) -> None:
    said = agents.said["persistent"]
    assert not said["ok"]
    assert said["error"] == "openai.RateLimitError" and said["status"] == 429, said
    assert said["upstream"] == ["429", "429", "429"], "tether's three attempts; LlamaIndex and the SDK retry none"
    run = run_of(agents, "weather-bot", 1)
    assert types(run).count("llm.call.failed") == 1
    assert run[-1].data.status == "error" and run[-1].data.error.type == "RateLimitError"


def test_a_persistent_429_unstreamed_is_not_retried_by_llama_indexs_retry_decorator(agents: Outcome) -> None:
    said = agents.said["persistent_unstreamed"]  # FunctionAgent(streaming=False): achat(), under LlamaIndex's retry
    assert not said["ok"] and said["error"] == "openai.RateLimitError", said
    assert said["upstream"] == ["429", "429", "429"], "max_retries=0: tether's three attempts alone"


def test_a_budget_refusal_is_the_429_error_llama_index_users_get_and_sends_nothing(agents: Outcome) -> None:
    said = agents.said["budget"]
    assert not said["ok"] and said["error"] == "openai.RateLimitError" and said["status"] == 429, said
    assert "budget_exceeded" in said["message"]
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    failed = next(e for e in run_of(agents, "budget-bot") if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0


def test_a_failing_tool_is_a_failed_tool_call_that_llama_index_tells_the_model(agents: Outcome) -> None:
    said = agents.said["tool_error"]
    assert said["ok"] and said["tool_returns"] == ["no forecast for fake city"], said
    run = run_of(agents, "forecast-bot")
    failed = next(e for e in run if e.type == "tether.tool.call.failed")
    assert failed.data.tool == "get_forecast" and failed.data.error.message == "no forecast for fake city"
    assert run[-1].data.status == "ok", "LlamaIndex gives the model the error; the run goes on"


def test_a_handoff_runs_the_agent_handed_to_as_a_child_run(agents: Outcome) -> None:
    said = agents.said["handoff"]
    assert said["ok"] and "is now handling the request" in said["tool_returns"][0], said
    parent = root_runs(agents, "triage")[0]
    [child] = [e for e in agents.started() if e.agentid == "fake to_agent" and e.data.parent_run_id == parent.runid]
    assert child.data.parent_run_id == parent.runid and parent.data.metadata["workflow"] == "AgentWorkflow"
    assert types(agents.runs()[parent.runid]) == ["run.started", "llm.call.requested", "llm.call.completed",
                                                  "tool.call.requested", "tool.call.completed", "run.finished"]
    handoff = [e for e in agents.runs()[parent.runid] if e.type.startswith("tether.tool.call.")]
    assert handoff[0].data.tool == "handoff" and handoff[0].data.arguments == {"to_agent": "fake to_agent",
                                                                                "reason": "fake reason"}
    assert "is now handling the request" in handoff[1].data.result, "the handoff tool's call, under the policy"
    assert types(agents.runs()[child.runid]) == ["run.started", "llm.call.requested", "llm.call.completed",
                                                 "run.finished"]
    assert agents.runs()[child.runid][-1].data.status == "ok"


def test_the_tool_calls_of_an_agent_not_given_to_wrap_tools_are_observed_once(agents: Outcome) -> None:
    said = agents.said["observed"]
    assert said["ok"] and said["tool_returns"] == ["It is sunny in fake city."], said
    run = run_of(agents, "observed-bot")
    assert types(run) == ["run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested",
                          "tool.call.completed", "llm.call.requested", "llm.call.completed", "run.finished"]
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert completed.data.tool == "get_weather" and completed.data.result == "It is sunny in fake city."
    assert completed.source == "urn:tether:adapter:llama-index"


def test_the_tools_of_an_agents_tool_retriever_run_under_the_policy_once(agents: Outcome) -> None:
    said = agents.said["retrieved"]  # wrap_tools(agent, timeout_s=0.3): the retrieved tool takes 5 s
    assert said["ok"] and said["tool_returns"] == ["tool 'slow_forecast' did not finish within its timeout of 0.3 s"]
    assert tool_events(agents, "retrieving-bot") == [
        ("requested", "slow_forecast"), ("attempt_failed", "slow_forecast"), ("failed", "slow_forecast")]


def test_an_agent_run_from_a_tool_is_a_child_run(agents: Outcome) -> None:
    assert agents.said["sub_agent"]["ok"], agents.said["sub_agent"]
    parent = root_runs(agents, "asking-bot")[0]
    [child] = [e for e in agents.started() if e.agentid == "forecaster"]
    assert child.data.parent_run_id == parent.runid
    assert types(agents.runs()[child.runid]) == ["run.started", "llm.call.requested", "llm.call.completed",
                                                 "run.finished"]
    assert types(agents.runs()[parent.runid]) == [
        "run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.completed", "run.finished"]


def test_a_handed_to_agent_has_a_child_run_that_ends_when_it_hands_back(agents: Outcome) -> None:
    said = agents.said["handed_back"]  # a ReAct triage hands off in words; the agent handed to hands back
    assert said["ok"] and said["tool_returns"][1] == "Handed back to triage.", said
    assert said["upstream"] == ["200", "200", "200"]
    parent = root_runs(agents, "triage")[2]
    [child] = [e for e in agents.started() if e.data.parent_run_id == parent.runid]
    assert child.agentid == "fake to_agent"
    assert types(agents.runs()[child.runid]) == ["run.started", "llm.call.requested", "llm.call.completed",
                                                 "tool.call.requested", "tool.call.completed", "run.finished"]
    assert types(agents.runs()[parent.runid]) == [
        "run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.completed", "run.finished"]
    finished = next(e for e in agents.runs()[child.runid] if e.type == "tether.run.finished")
    answer = [e for e in agents.runs()[parent.runid] if e.type == "tether.llm.call.requested"][1]
    assert agents.events.index(finished) < agents.events.index(answer), \
        "the child run finished when its agent handed back, before triage went on (not with the workflow run)"
    assert finished.data.status == "ok" and agents.runs()[parent.runid][-1].data.status == "ok"


def test_a_resumed_workflow_replays_its_completed_handoff_and_the_agent_handed_to_acts(agents: Outcome) -> None:
    crashed, resumed = agents.said["handoff_crashed"], agents.said["handoff_resumed"]
    assert not crashed["ok"] and crashed["upstream"] == ["200", "500", "500", "500"], crashed
    assert resumed["ok"] and resumed["upstream"] == ["200"], ("triage's call and the handoff replayed", resumed)
    assert "is now handling the request" in resumed["tool_returns"][0], "the recorded result, as a ToolOutput"
    [run_id] = {e.runid for e in agents.started() if e.agentid == "triage" and e.data.parent_run_id == "job-handoff"}
    replayed = [e.data.tool for e in agents.runs()[run_id] if e.type == "tether.call.replayed"]
    assert replayed == [None, "handoff"], "the model call, then the handoff, answered from the log"
    [child_id] = {e.runid for e in agents.started() if e.data.parent_run_id == run_id}
    child = types(agents.runs()[child_id])
    assert child[-4:] == ["run.started", "llm.call.requested", "llm.call.completed", "run.finished"], \
        ("the replayed handoff handed off again: the agent handed to made its call now", child)
    assert agents.runs()[child_id][-1].data.status == "ok"


def test_a_replayed_handoff_hands_off_only_if_its_recorded_call_did(agents: Outcome) -> None:
    said = agents.said["replayed_handoffs"]
    assert said["handed"] == {"handed_off": True, "next_agent": "fake to_agent"}, said
    assert said["refused"] == {"handed_off": False, "next_agent": None}, said


def test_a_react_agent_driven_by_text_calls_its_tool_under_the_policy_in_two_steps(agents: Outcome) -> None:
    said = agents.said["text_agents"]["react"]
    assert said["ok"] and said["tool_returns"] == ["It is sunny in fake city."], said
    assert said["upstream"] == ["200", "200"]
    run = run_of(agents, "react-bot")
    assert run[0].data.metadata["workflow"] == "ReActAgent"
    assert types(run) == ["run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested",
                          "tool.call.completed", "llm.call.requested", "llm.call.completed", "run.finished"]
    first, second = [e for e in run if e.type == "tether.llm.call.requested"]
    assert "tools" not in first.data.request, "a ReAct agent calls its tools in words"
    assert "Observation: It is sunny in fake city." in json.dumps(second.data.request["messages"])
    requested = next(e for e in run if e.type == "tether.tool.call.requested")
    assert requested.data.tool == "get_weather" and requested.data.arguments == {"city": "fake city"}


def test_a_react_agents_tools_time_out_and_are_retried_only_when_idempotent(agents: Outcome) -> None:
    said = agents.said["text_agents"]
    timeout, retried = said["timeout"], said["retried"]
    assert timeout["ok"] and timeout["ran"]["slow_lookup"] == 1, ("not idempotent: one attempt", timeout)
    assert timeout["tool_returns"] == ["tool 'slow_lookup' did not finish within its timeout of 0.3 s"]
    assert tool_events(agents, "slow-react") == [
        ("requested", "slow_lookup"), ("attempt_failed", "slow_lookup"), ("failed", "slow_lookup")]
    assert retried["ok"] and retried["ran"]["flaky_lookup"] == 2 and retried["tool_returns"] == [
        "It is cloudy in fake city."], retried
    assert tool_events(agents, "flaky-react") == [
        ("requested", "flaky_lookup"), ("attempt_failed", "flaky_lookup"), ("completed", "flaky_lookup")]


def test_a_resumed_react_run_replays_its_tool_call_and_stops_at_a_crash_inside_one(agents: Outcome) -> None:
    said = agents.said["text_agents"]
    crashed, resumed = said["crashed"], said["resumed"]
    assert not crashed["ok"] and crashed["ran"]["counted_lookup"] == 1, crashed
    assert resumed["ok"] and resumed["ran"]["counted_lookup"] == 1, ("answered from the log", resumed)
    assert resumed["tool_returns"] == ["It is windy in fake city."] and resumed["upstream"] == ["200"], resumed
    [run_id] = {e.runid for e in agents.started() if e.agentid == "resume-react"}
    assert [e.data.tool for e in agents.runs()[run_id] if e.type == "tether.call.replayed"] == [None, "counted_lookup"]
    died, stopped = said["attention"]["died"], said["attention"]["resumed"]
    assert died == {"ok": False, "error": "Crash", "ran": 1}, died
    assert stopped["error"] == "NeedsAttention" and stopped["ran"] == 1 and stopped["tool"] == "charge_card", stopped
    [card_id] = {e.runid for e in agents.started() if e.agentid == "careful-react"}
    assert types(agents.runs()[card_id])[-1] == "run.needs_attention"


def test_a_codeact_agents_code_execution_is_one_tool_call_replayed_on_resume(agents: Outcome) -> None:
    crashed, resumed = agents.said["text_agents"]["code_crashed"], agents.said["text_agents"]["code_resumed"]
    assert not crashed["ok"] and crashed["ran"]["run_code"] == 1, crashed
    assert resumed["ok"] and resumed["ran"]["run_code"] == 1, ("the code not run again", resumed)
    assert resumed["tool_returns"] == ["It is sunny in fake city."] and resumed["upstream"] == ["200"], resumed
    [run_id] = {e.runid for e in agents.started() if e.agentid == "code-bot"}
    run = agents.runs()[run_id]
    assert run[0].data.metadata["workflow"] == "CodeActAgent"
    requested = next(e for e in run if e.type == "tether.tool.call.requested")
    assert requested.data.tool == "execute" and requested.data.arguments == {
        "code": "print(get_weather(city='fake city'))"}, "the code the model wrote, recorded as one call's argument"
    completed = next(e for e in run if e.type == "tether.tool.call.completed")
    assert completed.data.tool == "execute" and completed.data.result == "It is sunny in fake city."
    assert [e.data.tool for e in run if e.type == "tether.call.replayed"] == [None, "execute"]
    assert not [e for e in run if e.type.startswith("tether.tool.call.") and e.data.tool == "get_weather"], \
        "the tools the code calls are not recorded one by one (docs/frameworks/llama-index.md)"


def test_a_handed_to_agent_that_fails_ends_its_child_run_and_the_workflows_in_error(agents: Outcome) -> None:
    said = agents.said["handoff_failed"]  # the agent handed to: its model call fails past tether's attempts
    assert not said["ok"] and said["error"] == "openai.InternalServerError", said
    assert said["upstream"] == ["200", "500", "500", "500"]
    parent = root_runs(agents, "triage")[1]
    [child] = [e for e in agents.started() if e.data.parent_run_id == parent.runid]
    assert child.agentid == "fake to_agent"
    assert agents.runs()[child.runid][-1].data.status == "error"
    assert agents.runs()[parent.runid][-1].data.status == "error"


def test_a_model_option_tether_owns_or_a_plain_workflow_is_refused_with_what_to_do(agents: Outcome) -> None:
    retries, client, option, workflow = agents.said["refused"]
    assert "tether owns the retries" in retries and "leave max_retries out (was 3)" in retries
    assert "leave async_http_client out" in client and "tether={...}" in client
    assert "tether= takes the options of tether.async_http_client" in option and "not 'polices'" in option
    assert "policies" in option, "the options it takes, named"
    assert "takes an agent (FunctionAgent, ReActAgent...) or an AgentWorkflow, not Echo" in workflow
    assert "decorate them with @tether.tool" in workflow


def test_two_runs_at_once_are_two_runs_each_with_its_own_calls(agents: Outcome) -> None:
    assert len(agents.said["concurrent"]) == 2
    runs = root_runs(agents, "twin-bot")
    assert len(runs) == 2
    for started in runs:
        assert types(agents.runs()[started.runid]) == [
            "run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested", "tool.call.completed",
            "llm.call.requested", "llm.call.completed", "run.finished"]


def test_a_plain_workflows_run_is_a_run_named_for_its_class(agents: Outcome) -> None:
    assert agents.said["echo"] == "echo: hello"
    [started] = root_runs(agents, "Echo")
    assert started.data.name == "Echo" and types(agents.runs()[started.runid]) == ["run.started", "run.finished"]
    assert agents.runs()[started.runid][-1].data.status == "ok"


def test_a_wrapped_tool_called_synchronously_is_recorded_in_the_callers_run(agents: Outcome) -> None:
    assert agents.said["sync_call"] == "It is sunny in Lyon."
    assert tool_events(agents, "sync-bot") == [("requested", "get_weather"), ("completed", "get_weather")]


def test_memory_is_injected_before_each_model_call_and_recorded(agents: Outcome) -> None:
    remember = "Weather in Paris: the user wants degrees Celsius."
    said = agents.said["memory"]
    assert said["ok"], said
    run = run_of(agents, "remembering-bot")
    recalls = [e for e in run if e.type == "tether.tool.call.completed" and e.data.tool == "tether.memory.context"]
    assert len(recalls) == 3, "a retrieval each time the agent reads its memory (docs/frameworks/llama-index.md)"
    kinds = [e.data.tool if e.type.startswith("tether.tool.call.") else e.type for e in run
             if e.type in ("tether.llm.call.requested", "tether.tool.call.completed")]
    assert kinds == ["tether.memory.context", "tether.llm.call.requested", "get_weather", "tether.memory.context",
                     "tether.llm.call.requested", "tether.memory.context"], "before each model call, and at the end"
    assert all(r.data.result["injected"] == ["agent:weather-bot/home-city@1"] for r in recalls)
    sent = [e for e in run if e.type == "tether.llm.call.requested"]
    assert len(sent) == 2
    for call in sent:
        system = [m["content"] for m in call.data.request["messages"] if m["role"] == "system"]
        assert any(remember in text for text in system), system


def test_a_tool_past_its_timeout_is_an_error_the_model_is_told_and_runs_once(agents: Outcome) -> None:
    said = agents.said["tool_timeout"]
    assert said["ok"] and said["ran"]["slow_lookup"] == 1, ("not idempotent: one attempt", said)
    assert said["tool_returns"] == ["tool 'slow_lookup' did not finish within its timeout of 0.3 s"]
    assert tool_events(agents, "slow-bot") == [
        ("requested", "slow_lookup"), ("attempt_failed", "slow_lookup"), ("failed", "slow_lookup")]


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
    assert resumed["tool_returns"] == ["It is windy in fake city."], "the recorded result, as a ToolOutput"
    assert resumed["upstream"] == ["200"], "the first model call replayed too; the second made now"
    replayed = [e for e in agents.events if e.type == "tether.call.replayed" and e.data.call_kind == "tool"
                and e.agentid == "resume-bot"]
    assert [(e.data.tool, e.data.response) for e in replayed] == [("counted_lookup", "It is windy in fake city.")]
    runs = [e for e in agents.started() if e.agentid == "resume-bot"]
    assert len({e.runid for e in runs}) == 1 and runs[1].data.resumed, "the same run, resumed"


def test_a_resumed_run_that_died_inside_a_non_idempotent_tool_stops_without_running_it(agents: Outcome) -> None:
    died, resumed = agents.said["attention"]["died"], agents.said["attention"]["resumed"]
    assert died == {"ok": False, "error": "Crash", "ran": 1}, died
    assert resumed["error"] == "NeedsAttention" and resumed["ran"] == 1, ("not run again", resumed)
    assert resumed["tool"] == "charge_card" and resumed["arguments"] == {"city": "fake city"}
    [run_id] = {e.runid for e in agents.started() if e.agentid == "careful-bot"}
    run = types(agents.runs()[run_id])
    assert run[-1] == "run.needs_attention" and run.count("run.finished") == 1, \
        ("the resumed run stops as needing attention, not finished", run)


def test_a_resumed_run_on_a_bus_of_the_agents_loop_is_recorded_in_the_enclosing_run_with_a_warning(
        agents: Outcome) -> None:
    said = agents.said["callers_bus"]
    assert said["answer"].startswith("This is fake reply"), said
    [warning] = said["warnings"]
    assert "LlamaIndex workflow 'bus-bot' gets no run of its own" in warning and "job-bus" in warning
    assert "let tether use its own background bus" in warning, "what to do instead"
    assert not [e for e in agents.started() if e.agentid == "bus-bot"]
    assert types(agents.runs()["job-bus"]).count("tool.call.completed") == 1, "its calls in the enclosing run"


def test_the_chat_store_answers_as_llama_indexs_own_sql_store(agents: Outcome) -> None:
    stores = agents.said["stores"]
    assert stores["tether"] == stores["sqlalchemy"], stores
    assert stores["tether"][0] == ["user:one", "assistant:two", "user:three"], "the operations did something"


def test_the_chat_history_survives_the_process_and_nats_restarting(agents: Outcome) -> None:
    first, second = agents.said["history"], agents.said["continued"]
    assert first["restored"] == 0 and first["kept"] == 4, first
    assert second["restored"] == 4, ("the first process's four messages, read back from tether", second)
    assert second["kept"] == 8 and second["first_prompt"] == "What is the weather in Paris?", second
    assert second["cleared"] == 0, "delete_messages forgets the conversation"
    started = root_runs(agents, "history-bot")[1]
    sent = next(e for e in agents.runs()[started.runid] if e.type == "tether.llm.call.requested")
    assert "What is the weather in Paris?" in json.dumps(sent.data.request["messages"]), \
        "the model was sent the restored conversation"


def test_a_workflow_context_survives_the_process_and_nats_restarting(agents: Outcome) -> None:
    first, second = agents.said["context"], agents.said["context_continued"]
    assert first == {"restored": False, "tool_returns": ["Visit 1 to fake city."], "state": {"visits": 1}}, first
    assert second["restored"] and second["tool_returns"] == ["Visit 2 to fake city."], \
        ("the agent's state came back in its Context, and the tool got the Context", second)
    assert second["state"] == {"visits": 2} and second["deleted"], "delete() forgets it"
    recorded = [e.data.arguments for e in agents.events
                if e.type == "tether.tool.call.requested" and e.data.tool == "count_visit"]
    assert recorded == [{"city": "fake city"}] * 2, "the Context is passed, not recorded"
