"""LiteLLM (litellm, at its current release, in .venv-litellm) under tether.

An agent loop of two model calls with one tool (``litellm.acompletion``, ``completion``, streamed)
against the fake provider, with the one line docs/frameworks/litellm.md gives (``tether.init()``),
inside ``tether.run``; the scenarios run in one process, so LiteLLM is imported once for all.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

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
CACHE_GPT_4O = """
[routes."openai:gpt-4o".cache]
enabled = true
"""
TWO_CALLS_EACH_RETRIED = [
    "run.started",
    "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
    "llm.call.requested", "llm.call.attempt_failed", "llm.call.completed",
    "run.finished"]


@pytest.fixture(scope="module")
def venv() -> OptionalEnv:
    return optional_env("litellm", project=True)


@pytest.fixture(scope="module")
def calls(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """Every scenario of litellm_agent.py, run once against one fake provider and one NATS."""
    work = tmp_path_factory.mktemp("litellm")
    with NatsServer() as nats, FakeProvider(seed=1) as fake:
        out = run_script(venv, "litellm_agent.py", nats=nats, fake=fake, work=work,
                         policies=POLICIES + BUDGET_BOT + CACHE_GPT_4O)
        out.events = events(nats, work / "home")
        yield out


def run_of(out: Outcome, name: str) -> list[Event]:
    [started] = [e for e in out.started() if e.data.name == name]
    return out.runs()[started.runid]


def types(run: list[Event]) -> list[str]:
    return [e.type.removeprefix("tether.") for e in run]


def test_init_routes_litellm_once_through_tethers_clients(calls: Outcome) -> None:
    assert calls.said["installed"] == calls.said["again"] == ["litellm"]
    assert calls.said["sessions"] == ["TetherTransport", "AsyncTetherTransport"]
    assert calls.said["num_retries"] is None, "litellm.num_retries set by the application is unset"
    # tether sends LiteLLM's async calls on the transport LiteLLM would have used (aiohttp's: its parser is C)
    assert calls.said["upstream_transport"] == "LiteLLMAiohttpTransport"


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_each_call_is_under_tethers_policy_in_the_run(calls: Outcome, mode: str) -> None:
    said = calls.said[mode]
    assert said["ok"], said
    assert said["upstream"] == ["500", "200", "503", "200"], "one retry per failure, by tether alone"
    run = run_of(calls, mode)
    assert types(run) == TWO_CALLS_EACH_RETRIED
    assert {e.agentid for e in run} == {"weather-bot"}
    completed = [e for e in run if e.type == "tether.llm.call.completed"]
    assert all(e.data.usage is not None and e.data.usage.input_tokens > 0 for e in completed)
    assert completed[0].data.response["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_stream_is_retried_by_tether_before_its_first_chunk(calls: Outcome) -> None:
    said = calls.said["stream"]
    assert said["ok"], said
    assert said["upstream"] == ["500", "200", "200"]
    run = run_of(calls, "stream")
    assert types(run).count("llm.call.completed") == 2 and types(run).count("llm.call.attempt_failed") == 1


def test_a_persistent_429_is_three_upstream_requests_and_litellms_own_error(calls: Outcome) -> None:
    said = calls.said["persistent"]
    assert not said["ok"]
    assert said["error"] == "litellm.exceptions.RateLimitError", said
    assert said["upstream"] == ["429", "429", "429"], "tether's three attempts; LiteLLM and its SDK retry none"
    run = run_of(calls, "persistent")
    assert types(run).count("llm.call.requested") == 1 and types(run).count("llm.call.failed") == 1
    assert run[-1].data.status == "error"


def test_a_budget_refusal_is_litellms_rate_limit_error_and_sends_nothing(calls: Outcome) -> None:
    said = calls.said["budget"]
    assert not said["ok"]
    assert said["error"] == "litellm.exceptions.RateLimitError" and "budget" in said["message"], said
    assert said["upstream"] == ["200"], "the second call was refused before anything was sent"
    failed = next(e for e in run_of(calls, "budget") if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0


def test_a_session_the_application_set_is_refused_not_replaced(calls: Outcome) -> None:
    assert "litellm.client_session is already set by the application" in calls.said["refused"]
    assert "tether.http_client(transport=...)" in calls.said["refused"]
    assert calls.said["kept"] == "HTTPTransport", "the application's session is left as it was"


def test_tethers_response_cache_answers_litellms_repeated_call(calls: Outcome) -> None:
    """LiteLLM's own cache (``litellm.cache``) is not needed: its calls go through tether's, per route."""
    said = calls.said["cached"]
    assert said["ok"], said
    first, second = json.loads(said["answer"])
    assert first == second and said["upstream"] == ["200"], "the second run's call was answered from the cache"
    replayed = [e for e in calls.events if e.type == "tether.call.replayed" and e.agentid == "cached-bot"]
    assert [e.data.via for e in replayed] == ["cache"]
