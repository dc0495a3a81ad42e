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
from ._harness import BUDGET_ONE_CALL, HERE, POLICIES, Outcome, events, run_script

pytestmark = [pytest.mark.slow, pytest.mark.nats]

SOURCE = "urn:tether:adapter:langgraph"

SCRIPT = "langgraph_agent.py"
QUESTION = "What is the weather in Paris?"


@pytest.fixture(scope="module")
def venv() -> OptionalEnv:
    return optional_env("langgraph", project=True)


@pytest.fixture(scope="module")
def prebuilt(venv: OptionalEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcome]:
    """langgraph_prebuilt.py's scenarios, run once against one fake provider and one NATS."""
    work = tmp_path_factory.mktemp("prebuilt")
    with NatsServer() as nats, FakeProvider(seed=1) as provider:
        out = run_script(venv, "langgraph_prebuilt.py", nats=nats, fake=provider, work=work)
        out.events = events(nats, work / "home")
        yield out


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
    assert said["sync"] == {"get": {"unit": "rankine"}, "search": ["rankine"], "namespaces": [["users", "u4", "prefs"]]}
    assert "aget / aput / asearch and ainvoke()" in said["on_its_loop"], "a sync call on its memory's own loop"
    assert said["sync_graph"] == [1, 2], "a sync graph's node reads and writes with get / put"
    ttl = said["ttl"]
    assert ttl["short"] is None and ttl["kept"] == {"v": 3}, "the 0.3 s item expired, the one without a TTL stays"
    assert ttl["unrefreshed"] and ttl["refreshed"], "a read refreshes the TTL unless refresh_ttl=False"
    assert 299 < ttl["default_s"] <= 300.5 and ttl["default_not_refreshed"] == 1, "ttl={'default_ttl': 5, ...}"
    assert ttl["left"] == ["default", "kept", "long"]
    written = [e for e in events(fresh_nats_server, tmp_path / "home") if e.type == "tether.memory.written"]
    assert {e.data.namespace for e in written} >= {"lg:users.u1.prefs", "lg:users.u1.visits"}, "in the log"


def _script(venv: OptionalEnv, script: str, *args: str, nats: NatsServer,
            work: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(venv.bin("python")), str(HERE / script), *args], cwd=work, capture_output=True,
                          text=True, timeout=120, check=False,
                          env={**os.environ, "TETHER_NATS_URL": nats.url, "TETHER_HOME": str(work / "home")})


def test_tool_node_calls_run_under_the_tool_policy_and_a_resumed_run_replays_them(
        venv: OptionalEnv, fresh_nats_server: NatsServer, tmp_path: Path) -> None:
    (tmp_path / "tether.toml").write_text(POLICIES)
    crashed = _script(venv, "langgraph_tools.py", "crash", nats=fresh_nats_server, work=tmp_path)
    assert crashed.returncode == 3, crashed.stderr[-4000:]
    assert json.loads((tmp_path / "counts.json").read_text()) == {"charge": 1, "note": 1}
    done = _script(venv, "langgraph_tools.py", "resume", nats=fresh_nats_server, work=tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert (said["counts"]["charge"], said["counts"]["note"]) == (1, 1), "the completed calls replayed, not run"
    assert said["replayed"] == [
        {"content": "charged 5", "id": "call-0-charge", "status": "success", "name": "charge"},  # a ToolMessage
        {"content": "noted paid", "id": "call-1-note", "status": "success", "name": "note"}], "the Command's update"
    assert said["timeout"]["error"] == "builtins.TimeoutError"
    assert "'slow' did not finish within its timeout of 0.3 s" in said["timeout"]["message"]
    assert said["timeout"]["seconds"] < 4 and said["counts"]["slow"] == 1
    assert said["read"][0]["content"] == "read Oslo" and said["counts"]["flaky_read"] == 2, "idempotent: retried"
    assert said["write"]["error"] == "builtins.ConnectionError" and said["counts"]["flaky_write"] == 1, "not retried"
    log = events(fresh_nats_server, tmp_path / "home")
    tool_events = [e for e in log if e.type.startswith("tether.tool.") or e.type == "tether.call.replayed"]
    assert {e.source for e in tool_events if e.type != "tether.tool.call.failed"} == {SOURCE}  # failed: the engine's
    requested = [e for e in tool_events if e.type == "tether.tool.call.requested"]
    assert [e.data.tool for e in requested] == ["charge", "note", "charge", "note", "slow", "flaky_read",
                                                "flaky_write"], \
        "one record per call: the callback handler does not record them again"
    [first, again] = [e for e in requested if e.data.tool == "charge"]
    assert first.runid == again.runid, "the graph's run inside job-1 resumed with it"
    assert first.data.idempotency_key == again.data.idempotency_key
    replayed = [e for e in tool_events if e.type == "tether.call.replayed"]
    assert [(e.runid, e.data.tool) for e in replayed] == [(first.runid, "charge"), (first.runid, "note")]
    assert replayed[0].data.response == "charged 5"
    assert replayed[1].data.response["command"]["update"]["messages"][0]["content"] == "noted paid"
    failed = {e.data.tool: e.data for e in tool_events if e.type == "tether.tool.call.failed"}
    assert failed["slow"].error.type == "APITimeoutError"
    assert failed["flaky_write"].attempts == 1 and "flaky_read" not in failed
    attempts = [e.data.tool for e in tool_events if e.type == "tether.tool.call.attempt_failed"]
    assert attempts == ["slow", "flaky_read", "flaky_write"], "one failed attempt each; flaky_read then succeeded"
    assert said["subgraph"] == 2
    started = {e.runid: e for e in log if e.type == "tether.run.started"}
    names = {runid: e.data.name for runid, e in started.items()}
    [parent] = [runid for runid, name in names.items() if name == "parent"]
    tree = sorted((names[e.data.parent_run_id] if e.data.parent_run_id else "", e.data.name, e.agentid)
                  for e in started.values() if e.data.name in ("parent", "middle", "child"))
    assert tree == [("", "parent", "parent"), ("middle", "child", "child"), ("parent", "child", "child"),
                    ("parent", "middle", "middle")], tree
    finished = {e.runid: e.data.status for e in log if e.type == "tether.run.finished"}
    assert all(finished[runid] == "ok" for runid, name in names.items() if name in ("middle", "child"))
    assert finished[parent] == "ok"
    roots = sorted(e.data.name or "" for e in started.values() if e.data.parent_run_id is None)
    assert roots == ["", "parent", "read-bot", "slow-bot", "write-bot"], "job-1, and no run for a node or a chain"


@pytest.mark.parametrize("builder", ["react", "agent"])
def test_the_agents_langgraph_and_langchain_build_run_their_tools_under_the_tool_policy(
        builder: str, prebuilt: Outcome) -> None:
    """``create_react_agent(llm, tool_node(tools))`` and langchain's ``create_agent(llm, tools,
    middleware=[tool_middleware(...)])``: a resumed run's completed tool call replayed without running,
    a timeout, an idempotent tool retried (async and sync); one record per call (the callback handler
    leaves them alone)."""
    said = prebuilt.said[builder]
    crashed, resumed = said["crashed"], said["resumed"]
    assert not crashed["ok"] and crashed["ran"] == {"charge": 1}, crashed
    assert crashed["upstream"] == ["200", "500", "500", "500"], "the second model call failed after the tool ran"
    assert resumed["ok"] and resumed["ran"] == {"charge": 1}, "the completed tool call was not run again"
    assert resumed["tools"] == ["charged 1"], "its recorded result, as the ToolMessage the agent expects"
    assert resumed["upstream"] == ["200"], "the first model call replayed too: only the second was sent"
    assert said["timeout"]["error"] == "builtins.TimeoutError", said["timeout"]
    assert "'slow' did not finish within its timeout of 0.3 s" in said["timeout"]["message"]
    assert said["timeout"]["ran"] == {"slow": 1}
    assert said["retry"]["ok"] and said["retry"]["tools"] == ["Rain in fake city."], said["retry"]
    assert said["retry"]["ran"]["flaky_read"] == 2, "failed once (a reset), retried by tether"
    assert said["sync_retry"]["ok"] and said["sync_retry"]["tools"] == ["Rain in fake city."], said["sync_retry"]
    assert said["sync_retry"]["ran"]["flaky_read"] == 4, "invoke(): the same, through wrap_tool_call"

    log = prebuilt.events
    names = {e.runid: e.data.name or "" for e in log if e.type == "tether.run.started"}
    tools = [e for e in log if names.get(e.runid, "").startswith(f"{builder}-")
             and (e.type.startswith("tether.tool.call.")
                  or (e.type == "tether.call.replayed" and e.data.call_kind == "tool"))]
    assert [(names[e.runid], e.type.removeprefix("tether."), e.data.tool) for e in tools] == [
        (f"{builder}-pay", "tool.call.requested", "charge"), (f"{builder}-pay", "tool.call.completed", "charge"),
        (f"{builder}-pay", "tool.call.requested", "charge"), (f"{builder}-pay", "call.replayed", "charge"),
        (f"{builder}-slow", "tool.call.requested", "slow"), (f"{builder}-slow", "tool.call.attempt_failed", "slow"),
        (f"{builder}-slow", "tool.call.failed", "slow"),
        (f"{builder}-read", "tool.call.requested", "flaky_read"),
        (f"{builder}-read", "tool.call.attempt_failed", "flaky_read"),
        (f"{builder}-read", "tool.call.completed", "flaky_read"),
        (f"{builder}-sync", "tool.call.requested", "flaky_read"),
        (f"{builder}-sync", "tool.call.attempt_failed", "flaky_read"),
        (f"{builder}-sync", "tool.call.completed", "flaky_read")], "one record per call, from tether's tool policy"
    assert {e.source for e in tools if e.type != "tether.tool.call.failed"} == {SOURCE}
    [first, again] = [e for e in tools if e.type == "tether.tool.call.requested" and e.data.tool == "charge"]
    assert first.runid == again.runid and first.data.idempotency_key == again.data.idempotency_key
    assert tools[3].data.response == "charged 1"


def test_a_chat_models_callbacks_do_not_reach_tethers_handler(prebuilt: Outcome) -> None:
    """tether records model calls at its client: LangChain's chat model events skip its handler (no
    fallback writing every message list out as text for ``on_llm_start``, no call per token)."""
    assert prebuilt.said["reached"] == []


def test_tool_middleware_refuses_one_string_for_idempotent_tools(prebuilt: Outcome) -> None:
    assert prebuilt.said["refused"] == ("idempotent_tools is a collection of tool names, not one string "
                                        "('flaky_read'): write idempotent_tools={'flaky_read'}")
