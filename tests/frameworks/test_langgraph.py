"""LangGraph (langgraph + langchain-openai, at their current releases, in .venv-langgraph) under tether.

A ``create_react_agent`` with one tool makes two model calls to the fake provider; the script adds
the two lines docs/frameworks/langgraph.md gives (``tether.init()``, ``chat_model(...)``), keeps its
state in ``TetherCheckpointer`` and, when asked, puts memory into the model's input.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.testing import FakeProvider, NatsServer

from .._envs import OptionalEnv, optional_env
from ._harness import BUDGET_ONE_CALL, HERE, POLICIES, events, run_script

pytestmark = [pytest.mark.slow, pytest.mark.nats]

SCRIPT = "langgraph_agent.py"
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def venv() -> OptionalEnv:
    return optional_env("langgraph", project=True)


@pytest.fixture
def fake() -> Iterator[FakeProvider]:
    with FakeProvider(seed=1) as provider:
        yield provider


def test_one_run_with_llm_and_tool_spans_and_retries_tether_owns(venv: OptionalEnv, fake: FakeProvider,
                                                                  fresh_nats_server: NatsServer,
                                                                  tmp_path: Path) -> None:
    fake.set_faults("500#1/chat,503#3/chat")  # each model call fails once upstream
    out = run_script(venv, SCRIPT, "thread-1", QUESTION, nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert out.said["ok"], out.said
    assert out.said["installed"] == ["langgraph"]
    assert out.said["messages"] == ["human", "ai", "tool", "ai"], "the framework saw two answers, no error"
    assert out.upstream == ["500", "200", "503", "200"], "one retry per failure, by tether alone"
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    assert started.agentid == "weather-bot" and started.data.name == "weather-bot"
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
    assert run[-1].data.status == "ok"


def test_a_persistent_failure_is_three_upstream_requests_not_nine(venv: OptionalEnv, fake: FakeProvider,
                                                                   fresh_nats_server: NatsServer,
                                                                   tmp_path: Path) -> None:
    fake.set_faults("500/chat")
    out = run_script(venv, SCRIPT, "thread-2", QUESTION, nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert not out.said["ok"]
    assert out.said["error"] == "langchain_openai.chat_models.base.OpenAIAPIError", "LangChain's own, as without tether"
    assert {"openai.InternalServerError", "langchain_core.exceptions.ModelAPIError"} <= set(out.said["kinds"])
    assert out.upstream == ["500", "500", "500"], "tether's three attempts; the SDK and LangChain retry none"
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    run = out.runs()[started.runid]
    assert [e.type for e in run].count("tether.llm.call.failed") == 1
    assert run[-1].type == "tether.run.finished" and run[-1].data.status == "error"
    assert run[-1].data.error.type == "OpenAIAPIError"


def test_a_budget_refusal_is_the_frameworks_own_rate_limit_error(venv: OptionalEnv, fake: FakeProvider,
                                                                 fresh_nats_server: NatsServer,
                                                                 tmp_path: Path) -> None:
    out = run_script(venv, SCRIPT, "thread-3", QUESTION, nats=fresh_nats_server, fake=fake, work=tmp_path,
                     policies=POLICIES + BUDGET_ONE_CALL)
    assert not out.said["ok"]
    assert out.said["error"] == "langchain_openai.chat_models.base.OpenAIRateLimitError", out.said
    assert {"openai.RateLimitError", "langchain_core.exceptions.ModelRateLimitError"} <= set(out.said["kinds"])
    assert "budget" in out.said["message"]
    assert out.upstream == ["200"], "the second call was refused before anything was sent"
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    run = out.runs()[started.runid]
    failed = next(e for e in run if e.type == "tether.llm.call.failed")
    assert failed.data.error.type == "BudgetExceeded" and failed.data.attempts == 0
    assert run[-1].data.status == "error"


def test_the_graphs_state_survives_the_process_and_nats_restarting(venv: OptionalEnv, fake: FakeProvider,
                                                                    fresh_nats_server: NatsServer,
                                                                    tmp_path: Path) -> None:
    first = run_script(venv, SCRIPT, "thread-4", QUESTION, nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert first.said["ok"] and first.said["restored"] == 0
    fresh_nats_server.stop()
    fresh_nats_server.start()
    second = run_script(venv, SCRIPT, "thread-4", "And in Lisbon?", nats=fresh_nats_server, fake=fake,
                        work=tmp_path)
    assert second.said["ok"], second.said
    assert second.said["restored"] == 4, "the first process's four messages, read back from tether"
    assert second.said["messages"] == ["human", "ai", "tool", "ai"] * 2, "the new turn continues the old one"
    other = run_script(venv, SCRIPT, "thread-5", QUESTION, nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert other.said["restored"] == 0, "threads are kept apart"


def test_memory_is_injected_into_the_models_input_and_recorded(venv: OptionalEnv, fake: FakeProvider,
                                                               fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    remember = "Weather in Paris: the user wants degrees Celsius."
    out = run_script(venv, SCRIPT, "thread-6", QUESTION, remember, nats=fresh_nats_server, fake=fake, work=tmp_path)
    assert out.said["ok"], out.said
    assert out.said["messages"] == ["human", "ai", "tool", "ai"], "the injected memory is not kept in the state"
    out.events = events(fresh_nats_server, tmp_path / "home")
    [started] = out.started()
    run = out.runs()[started.runid]
    recalls = [e for e in run if e.type == "tether.tool.call.completed" and e.data.tool == "tether.memory.context"]
    assert len(recalls) == 2, "one retrieval per model call"
    assert recalls[0].data.result["injected"] == ["agent:weather-bot/home-city@1"]
    sent = [e for e in run if e.type == "tether.llm.call.requested"]
    assert len(sent) == 2
    for call in sent:
        first = call.data.request["messages"][0]
        assert first["role"] == "system" and remember in first["content"]


def test_the_checkpointer_passes_langgraphs_conformance_suite(venv: OptionalEnv,
                                                              fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    done = subprocess.run([str(venv.bin("python")), str(HERE / "langgraph_conformance.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "TETHER_NATS_URL": fresh_nats_server.url,
                               "TETHER_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    results = report["results"]
    for capability in ("put", "put_writes", "get_tuple", "list", "delete_thread",
                       "copy_thread", "delete_for_runs", "prune"):  # the last three: extended capabilities
        assert results[capability]["passed"], (capability, results[capability]["failures"])
        assert results[capability]["tests_passed"] > 0
    assert report["passed_all_base"]


def test_a_sync_graph_keeps_its_state_in_the_checkpointer(venv: OptionalEnv, fresh_nats_server: NatsServer,
                                                          tmp_path: Path) -> None:
    done = subprocess.run([str(venv.bin("python")), str(HERE / "langgraph_sync.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TETHER_NATS_URL": fresh_nats_server.url,
                               "TETHER_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-4000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert (said["first"], said["second"], said["state"]) == (2, 11, 11), "invoke() twice on one thread, restored"
    assert said["history"] == 6, "get_state_history: three checkpoints per invoke"
    assert (said["copied"], said["copied_history"]) == (11, 6), "copy_thread copies every checkpoint"
    assert (said["pruned_history"], said["pruned_state"]) == (1, 11), "prune keeps the latest, state intact"
    assert said["run_ids"] and said["run_ids_left"], "delete_for_runs removes the first run's checkpoints only"
    assert said["after_delete_for_runs"] == 3
    assert said["deleted"] == {}, "delete_thread"
    on_its_loop = said["on_its_loop"]
    assert on_its_loop["error"] == "LoopThreadError", "a sync call on its bus's loop would wait for itself"
    assert "ainvoke()" in on_its_loop["message"] and "TetherCheckpointer() without a bus" in on_its_loop["message"]


def test_the_store_keeps_items_in_tether_memory(venv: OptionalEnv, fresh_nats_server: NatsServer,
                                               tmp_path: Path) -> None:
    done = subprocess.run([str(venv.bin("python")), str(HERE / "langgraph_store.py")], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "TETHER_NATS_URL": fresh_nats_server.url,
                               "TETHER_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-4000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["get"] == {"unit": "celsius", "lang": "fr"} and said["missing"] is None
    assert said["by_prefix"] == ["celsius", "fahrenheit", "kelvin"], "every namespace under ('users',)"
    assert sorted(said["filtered"]) == ["fahrenheit", "kelvin"], "filter on the value's fields"
    assert said["query"] == [[["users", "u2", "prefs"], "fahrenheit"]], "tether's search, best first"
    assert said["namespaces"] == [["users", "u1", "prefs"], ["users", "u2", "prefs"], ["users", "\u00fc 3/x", "prefs"]]
    assert said["depth_2"] == [["users", "u1"], ["users", "u2"], ["users", "\u00fc 3/x"]]
    assert said["suffix"] == [["users", "u2", "prefs"]], "a wildcard prefix, a suffix, limit and offset"
    assert said["updated"] == "kelvin" and said["deleted"] is None
    assert said["from_the_graph"] == {"city": "Lisbon"}, "a node's write, read by another reader of the log"
    assert "async only" in said["sync"] and "ainvoke()" in said["sync"]
    written = [e for e in events(fresh_nats_server, tmp_path / "home") if e.type == "tether.memory.written"]
    assert {e.data.namespace for e in written} >= {"lg:users.u1.prefs", "lg:users.u1.visits"}, "in the log"
