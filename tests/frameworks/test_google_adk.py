"""Google ADK (google-adk with its ``LiteLlm`` model, at their current releases, in .venv-google-adk) under tether.

An ``LlmAgent`` with one tool makes two model calls (chat completions, through LiteLLM) to the fake
provider over HTTP; the script adds the lines docs/frameworks/google-adk.md gives (``tether.init()``,
``lite_llm(...)``, ``TetherPlugin()`` in the ``App``). ADK and LiteLLM are slow to import, so one
process runs every scenario in turn (``google_adk_agent.py``), each agent named for its scenario, the
fake provider's faults set per scenario; the tests read what it said and what the log holds.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tether.schemas import Event
from tether.testing import FakeProvider, NatsServer

from .._envs import optional_env
from ._harness import BUDGET_ONE_CALL, POLICIES, Outcome, events, run_script

pytestmark = [pytest.mark.slow, pytest.mark.nats]

SCENARIOS = ["retries", "down", "budget", "broken-tool", "sub-agent", "memory", "memory-service", "session-service",
             "tool-timeout", "tool-retry", "tool-resume", "kinds-toolset", "kinds-long-running", "kinds-agent-tool",
             "gemini", "gemini-stream", "gemini-budget", "gemini-down", "genai", "gemini-refusals"]
REMEMBER = "Weather in Paris: the user wants degrees Celsius."
EVENTS = ["call", "result", "text"]
TWO_CALLS_AND_A_TOOL = ["run.started", "llm.call.requested", "llm.call.completed", "tool.call.requested",
                        "tool.call.completed", "llm.call.requested", "llm.call.completed", "run.finished"]


@pytest.fixture(scope="module")
def outcome(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    venv = optional_env("google-adk", project=True)
    work = tmp_path_factory.mktemp("google-adk")
    (work / "budget.toml").write_text(POLICIES + BUDGET_ONE_CALL)
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(venv, "google_adk_agent.py", *SCENARIOS, nats=nats, fake=fake, work=work)
        out.events = events(nats, work / "home")
        yield out


def run_of(out: Outcome, agent: str) -> list[Event]:
    [started] = [e for e in out.started() if e.agentid == agent]
    return out.runs()[started.runid]


def types(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run]


def test_one_run_with_llm_and_tool_spans_and_retries_tether_owns(outcome: Outcome) -> None:
    # ADK's LiteLlm brings LiteLLM, whose adapter init() installs too (its calls here go through
    # the AsyncOpenAI lite_llm() gives it, so still one tether call per model call: see the counts)
    assert outcome.said["installed"] == outcome.said["again"] == ["google-adk", "litellm"]
    assert outcome.said["upstream_transport"] == "LiteLLMAiohttpTransport", "LiteLLM's own, as without tether"
    said = outcome.said["retries"]
    assert said["ok"] and said["events"] == EVENTS, "the framework saw two answers, no error"
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
    assert not said["ok"] and said["error"] == "litellm.exceptions.InternalServerError", "LiteLLM's own, as without"
    assert "openai.InternalServerError" in said["kinds"]
    assert said["upstream"] == ["500", "500", "500"], "tether's three attempts; LiteLLM and the SDK retry none"
    run = run_of(outcome, "down_bot")
    assert types(run).count("llm.call.failed") == 1
    assert run[-1].type == "tether.run.finished" and run[-1].data.status == "error"
    assert run[-1].data.error.type == "InternalServerError"


def test_a_budget_refusal_is_the_frameworks_own_rate_limit_error(outcome: Outcome) -> None:
    said = outcome.said["budget"]
    assert not said["ok"] and said["error"] == "litellm.exceptions.RateLimitError", said
    assert "openai.RateLimitError" in said["kinds"] and "budget" in said["message"]
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    run = run_of(outcome, "budget_bot")
    failed = next(e for e in run if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0
    assert run[-1].data.status == "error"


def test_a_tool_that_raises_is_a_failed_tool_call_and_a_failed_run(outcome: Outcome) -> None:
    said = outcome.said["broken-tool"]
    assert not said["ok"] and said["error"] == "builtins.ConnectionError", "ADK raises the tool's error, as without"
    run = run_of(outcome, "broken_tool_bot")
    requested, attempt, failed = (e for e in run if e.type.startswith("tether.tool.call"))
    assert requested.data.arguments == {"city": "fake city"}
    assert attempt.type == "tether.tool.call.attempt_failed", "one attempt: the tool is not idempotent"
    assert failed.type == "tether.tool.call.failed" and failed.data.tool == "get_weather" and failed.data.attempts == 1
    assert "ConnectionError" in f"{failed.data.error.type} {failed.data.error.message}"
    assert "is down" in failed.data.error.message
    assert run[-1].data.status == "error" and run[-1].data.error.type == "ConnectionError"


def test_an_agent_used_as_a_tool_is_a_child_run(outcome: Outcome) -> None:
    assert outcome.said["sub-agent"]["ok"], outcome.said["sub-agent"]
    parent, child = run_of(outcome, "triage_bot"), run_of(outcome, "sub_agent_bot")
    assert child[0].data.parent_run_id == parent[0].runid and parent[0].data.parent_run_id is None
    assert child[0].traceparent.split("-")[1] == parent[0].traceparent.split("-")[1], "one trace"
    assert types(child) == TWO_CALLS_AND_A_TOOL
    assert types(parent) == TWO_CALLS_AND_A_TOOL
    assert [e.data.tool for e in parent if e.type == "tether.tool.call.completed"] == ["sub_agent_bot"]
    assert parent[-1].time >= child[-1].time, "the child ends first"


def test_memory_is_injected_into_the_models_input_and_recorded(outcome: Outcome) -> None:
    said = outcome.said["memory"]
    assert said["ok"] and said["events"] == EVENTS, said
    run = run_of(outcome, "memory_bot")
    recalls = [e for e in run if e.type == "tether.tool.call.completed" and e.data.tool == "tether.memory.context"]
    assert len(recalls) == 2, "one retrieval per model call"
    assert recalls[0].data.result["injected"] == ["agent:weather-bot/home-city@1"]
    sent = [e for e in run if e.type == "tether.llm.call.requested"]
    assert len(sent) == 2
    for call in sent:
        system = [m["content"] for m in call.data.request["messages"] if m["role"] == "system"]
        assert any(REMEMBER in str(text) for text in system), system


def test_adks_memory_service_on_tether_memory(outcome: Outcome) -> None:
    said = outcome.said["memory-service"]
    assert said["ok"], said
    (author, question), (bot, answer) = said["recalled"]
    assert (author, question) == ("user", "What is the weather in Paris?"), "the session's text, found by search"
    assert bot == "memory_service_bot" and answer.startswith("This is fake reply")
    assert said["after_delete"] == [answer], "delete_memory removes the entry search_memory named"
    assert said["other_user"] == 0, "one user's memory is not another's"
    written = [e for e in outcome.events if e.type == "tether.memory.written" and e.data.namespace == "adk:weather.u1"]
    assert len(written) == 2, "in the log: the views show it and it survives a restart"


def test_adks_session_service_on_tether_is_read_back_and_goes_on(outcome: Outcome) -> None:
    said = outcome.said["session-service"]
    assert said["ok"], said
    events, state = said["restored"]
    assert events == 4, "the user's message, the tool call, its result, the answer: read back by a new service"
    assert state == [["app:region", "eu"], ["topic", "weather"], ["user:unit", "C"]], "each scope's state"
    assert said["user_state"] == {"unit": "C"}
    assert said["after_second_turn"] == 8 and said["texts"][2] == "And in Lisbon?"
    assert said["listed"] == [True] and said["deleted"] is None
    [_first, later] = [e for e in outcome.started() if e.agentid == "session_service_bot"]
    sent = [e for e in outcome.runs()[later.runid] if e.type == "tether.llm.call.requested"]
    history = [m.get("content") for m in sent[0].data.request["messages"]]
    assert any("What is the weather in Paris?" in str(c) for c in history), "the model saw the first turn"


def tool_events(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run if e.type.startswith(("tether.tool.", "tether.call."))]


def test_a_tools_timeout_bounds_its_attempt_and_adk_raises_it(outcome: Outcome) -> None:
    said = outcome.said["tool-timeout"]
    assert not said["ok"] and said["error"] == "builtins.TimeoutError", "ADK raises a tool's error, as without"
    assert "did not finish within its timeout of 0.3 s" in said["message"]
    run = run_of(outcome, "tool_timeout_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.failed",
                                "call.dead_lettered"], "one span for the call: the policy's, not the plugin's too"
    assert run[-1].data.status == "error" and run[-1].data.error.type == "TimeoutError"


def test_an_idempotent_tool_is_retried_under_the_policy(outcome: Outcome) -> None:
    said = outcome.said["tool-retry"]
    assert said["ok"] and said["results"] == [{"result": "It is sunny in fake city."}] and said["ran"] == 2, said
    run = run_of(outcome, "tool_retry_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"]
    assert run[-1].data.status == "ok"


def test_a_resumed_run_replays_its_completed_tool_call_without_running_it(outcome: Outcome) -> None:
    said = outcome.said["tool-resume"]
    assert said["first"] == "InternalServerError" and said["ran_first"] == 1, said
    assert said["resumed"] == [{"booked": "fake city"}] and said["ran_resumed"] == 1, "ADK got the recorded dict"
    first, resumed = [e for e in outcome.started() if e.agentid == "tool_resume_bot"]
    assert first.runid == resumed.runid and resumed.data.resumed, "the ADK run, derived from the job's, resumed"
    run = outcome.runs()[resumed.runid]
    replayed = [e.data for e in run if e.type == "tether.call.replayed" and e.data.call_kind == "tool"]
    assert [(r.tool, r.response) for r in replayed] == [("get_weather", {"booked": "fake city"})]


def test_a_toolsets_tool_runs_under_the_policy_an_idempotent_one_retried(outcome: Outcome) -> None:
    said = outcome.said["kinds-toolset"]
    assert said["ok"] and said["results"] == [{"result": "It is sunny in fake city."}] and said["ran"] == 2, said
    run = run_of(outcome, "kinds_toolset_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.completed"], \
        "one span for the call (the policy's), and the retry"


def test_a_long_running_tools_call_is_bounded_by_the_timeout(outcome: Outcome) -> None:
    said = outcome.said["kinds-long-running"]
    assert not said["ok"] and said["error"] == "builtins.TimeoutError", said
    assert "did not finish within its timeout of 0.3 s" in said["message"]
    run = run_of(outcome, "kinds_long_running_bot")
    assert tool_events(run) == ["tool.call.requested", "tool.call.attempt_failed", "tool.call.failed",
                                "call.dead_lettered"]


def test_a_resumed_run_replays_a_completed_agent_tool_call_without_running_its_agent(outcome: Outcome) -> None:
    said = outcome.said["kinds-agent-tool"]
    assert said["first"] == "InternalServerError" and said["ran_first"] == 1, said
    assert said["ran_resumed"] == 1, "the sub-agent did not run (and book) again"
    assert len(said["resumed"]) == 1 and said["resumed"][0]["result"].startswith("This is fake reply"), said
    booker = [e for e in outcome.started() if e.agentid == "agent_tool_booker"]
    assert len(booker) == 1, "the AgentTool's agent ran once: its child run is the first attempt's only"
    first, resumed = [e for e in outcome.started() if e.agentid == "kinds_agent_tool_bot"]
    assert first.runid == resumed.runid and resumed.data.resumed
    replayed = [e.data for e in outcome.runs()[resumed.runid]
                if e.type == "tether.call.replayed" and e.data.call_kind == "tool"]
    assert [r.tool for r in replayed] == ["agent_tool_booker"]
    assert said["resumed"][0] == {"result": replayed[0].response}, "ADK got the sub-agent's recorded answer"


# -- ADK's native Gemini model (google-genai) through tether ----------------------------------------------


def llm_calls(run: list[Event], suffix: str) -> list[object]:
    return [e.data for e in run if e.type == f"tether.llm.call.{suffix}"]


def test_adks_native_gemini_model_runs_under_tethers_policy(outcome: Outcome) -> None:
    said = outcome.said["gemini"]
    assert said["ok"] and said["events"] == EVENTS, said
    assert said["upstream"] == ["500", "200", "429", "200"], "one retry per failure, by tether alone"
    run = run_of(outcome, "gemini_bot")
    assert types(run) == [
        "run.started",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "tool.call.requested", "tool.call.completed",
        "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
        "run.finished"]
    requested = llm_calls(run, "requested")
    assert {(r.provider, r.operation, r.model, r.stream) for r in requested} == {  # type: ignore[attr-defined]
        ("gemini", "generate_content", "gemini-2.5-flash", False)}
    failed = llm_calls(run, "attempt_failed")
    assert [f.error.code for f in failed] == ["INTERNAL", "RESOURCE_EXHAUSTED"]  # type: ignore[attr-defined]
    assert failed[1].retry_in_s == pytest.approx(0.1, abs=0.02), "the wait Gemini's RetryInfo asked"  # type: ignore[attr-defined]
    completed = llm_calls(run, "completed")
    assert all(c.usage.input_tokens > 0 and c.usage.output_tokens > 0 for c in completed)  # type: ignore[attr-defined]
    assert completed[0].response["candidates"][0]["content"]["parts"][0]["functionCall"]["name"] == "get_weather"  # type: ignore[attr-defined]
    tool = next(e.data for e in run if e.type == "tether.tool.call.completed")
    assert tool.tool == "get_weather" and tool.result == "It is sunny in fake city."  # type: ignore[attr-defined]
    assert run[-1].data.status == "ok"


def test_adks_streamed_gemini_calls_are_recorded_whole(outcome: Outcome) -> None:
    said = outcome.said["gemini-stream"]
    assert said["ok"] and said["events"][-2:] == ["result", "text"] and said["texts"], said
    assert said["upstream"] == ["503", "200", "200"]
    run = run_of(outcome, "gemini_stream_bot")
    assert [r.stream for r in llm_calls(run, "requested")] == [True, True]  # type: ignore[attr-defined]
    answer = llm_calls(run, "completed")[-1]
    assert answer.response["candidates"][0]["content"]["parts"] == [{"text": said["texts"][-1]}]  # type: ignore[attr-defined]
    assert answer.finish_reason == "STOP" and answer.ttft_ms is not None  # type: ignore[attr-defined]


def test_a_budget_refusal_is_adks_own_resource_exhausted_error(outcome: Outcome) -> None:
    said = outcome.said["gemini-budget"]
    assert not said["ok"] and "google.genai.errors.ClientError" in said["kinds"], said
    assert said["error"].startswith("google.adk.models."), "ADK's own 429 error, as without tether"
    assert "RESOURCE_EXHAUSTED" in said["message"] and "budget" in said["message"]
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    failed = llm_calls(run_of(outcome, "gemini_budget_bot"), "failed")
    assert [(f.error.type, f.attempts) for f in failed] == [("BudgetExceeded", 0)]  # type: ignore[attr-defined]


def test_a_gemini_outage_is_three_upstream_requests_and_genais_server_error(outcome: Outcome) -> None:
    said = outcome.said["gemini-down"]
    assert not said["ok"] and said["error"] == "google.genai.errors.ServerError", said
    assert said["upstream"] == ["503", "503", "503"], "tether's three attempts; google-genai retries none"
    assert run_of(outcome, "gemini_down_bot")[-1].data.status == "error"


def test_plain_google_genai_given_tethers_http_clients(outcome: Outcome) -> None:
    said = outcome.said["genai"]
    assert said["ok"] and said["text"] and said["streamed"] == said["text"] == said["sync"], said
    assert said["upstream"] == ["500", "200", "200", "200"]
    assert "httpx_async_client=tether.async_http_client()" in said["instrument"], "instrument says what to do"
    run = run_of(outcome, "genai_bot")
    assert types(run)[1:-1] == ["llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
                                "llm.call.requested", "llm.call.completed",
                                "llm.call.requested", "llm.call.completed"], "async, streamed, sync"
    assert llm_calls(run, "completed")[0].usage.input_tokens + llm_calls(run, "completed")[0].usage.output_tokens \
        == said["usage"]  # type: ignore[attr-defined]


def test_the_native_gemini_model_works_on_a_second_event_loop(outcome: Outcome) -> None:
    said = outcome.said["second-loop"]  # ADK builds a google-genai client per loop, all on gemini()'s HTTP client
    assert said["ok"] and said["text"].startswith("This is fake reply"), said
    assert said["upstream"] == ["200"]
    assert types(run_of(outcome, "second_loop_bot"))[1:-1] == ["llm.call.requested", "llm.call.completed"], \
        "no attempt lost to a connection of the closed loop"


def test_gemini_refuses_what_would_bypass_or_multiply_tether_saying_what_to_do(outcome: Outcome) -> None:
    said = outcome.said["gemini-refusals"]
    assert said["ok"], said
    assert said["client"][0] == "TypeError" and "leave client out" in said["client"][1]
    assert said["retry_options"][0] == "TypeError" and "tether's policy" in said["retry_options"][1]
    assert said["durable"][0] == "ValueError" and "leave mode out" in said["durable"][1]
    assert said["own_http_client"][0] == "TypeError" and "httpx_async_client" in said["own_http_client"][1]
    assert said["kept"][0]["x-team"] == "weather" and said["kept"][1:] == [1, "AsyncClient"], \
        "the caller's other http_options are kept; one attempt; tether's client"
