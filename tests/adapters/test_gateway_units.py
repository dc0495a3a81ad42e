"""The gateway's pure parts: configuration, model routing, identity, error bodies, Retry-After."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

import tether.adapters.gateway as gateway_api
from tether.adapters.gateway import GatewayConfig, ModelRoute, digest, load_gateway_config, resolve_model
from tether.adapters.gateway._errors import problem, with_retry_after
from tether.adapters.gateway._identity import STRIPPED, Caller, Refused, identify, run_for_trace, trace_for_run
from tether.adapters.gateway._routing import parse_route
from tether.middleware import PolicyConfigError, ProviderConfig, Target, load_worker_config

ROOT = Path(__file__).resolve().parents[2]
PROVIDERS = {"openai": ProviderConfig("openai"), "anthropic": ProviderConfig("anthropic", "anthropic")}
KEYS = {digest("tg-key-bot"): "bot", digest("tg-key-ops"): "*"}


def test_public_api_is_complete() -> None:
    for module in ("_app", "_config", "_routing", "_server", "_upstream"):
        names = set(importlib.import_module(f"tether.adapters.gateway.{module}").__all__)
        assert names <= set(gateway_api.__all__), module
    for name in gateway_api.__all__:
        assert getattr(gateway_api, name) is not None


# -- configuration --------------------------------------------------------------------------


def test_config_from_mapping() -> None:
    config = GatewayConfig.from_mapping({
        "port": 0, "default_provider": "openai", "max_body_mb": 2, "capture": False, "retry_after_s": 3,
        "keys": {"tg-abcdef": "openclaw-main", f"sha256:{digest('tg-hidden')}": "ci", "tg-trusted": "*"},
        "keys_env": "GW_KEYS", "models": {"fast": "openai:gpt-4o-mini", "claude-*": "anthropic"},
        "redact": ["ssn"]}, providers=PROVIDERS, environ={"GW_KEYS": "tg-from-env=env-bot, tg-second=other"})
    assert config.keys[digest("tg-abcdef")] == "openclaw-main" and config.keys[digest("tg-hidden")] == "ci"
    assert config.keys[digest("tg-from-env")] == "env-bot" and config.keys[digest("tg-second")] == "other"
    assert "tg-hidden" not in config.plain_keys and "tg-abcdef" in config.plain_keys
    assert (config.max_body_bytes, config.capture, config.retry_after_s) == (2 * 1024 * 1024, False, 3.0)
    assert config.models == (ModelRoute("fast", "openai", "gpt-4o-mini"), ModelRoute("claude-*", "anthropic"))
    assert "tg-abcdef" not in repr(config), "keys are not in the configuration's repr"


@pytest.mark.parametrize(("section", "where"), [
    ({"prot": 1}, "gateway.prot"),
    ({"port": "80"}, "gateway.port"),
    ({"default_provider": "nope"}, "gateway.default_provider"),
    ({"models": {"x": "nope"}}, 'gateway.models.x'),
    ({"models": {"x-*": "openai:gpt-4o"}}, 'gateway.models."x-*"'),
    ({"keys": {"short": "bot"}}, "gateway.keys"),
    ({"keys": {"sha256:beef": "bot"}}, "gateway.keys"),
    ({"keys": {"tg-abcdef": ""}}, "gateway.keys"),
    ({"keys_env": "GW", "keys": {}}, "gateway.keys_env"),
    ({"max_body_mb": 0}, "gateway.max_body_mb"),
])
def test_config_errors_name_the_place(section: dict[str, object], where: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        GatewayConfig.from_mapping(section, providers=PROVIDERS, environ={"GW": "no-equals-sign"})
    assert str(caught.value).startswith(where)
    assert "tg-abcdef" not in str(caught.value), "a key is never shown whole"


def test_the_policy_parser_ignores_the_gateway_section(tmp_path: Path) -> None:
    file = tmp_path / "tether.toml"
    file.write_text('[providers.openai]\nkind = "openai"\n\n[gateway]\nport = 9000\ndefault_provider = "openai"\n'
                    '[gateway.keys]\n"tg-abcdef" = "bot"\n\n[routes."*".retry]\nmax_attempts = 4\n')
    assert load_worker_config(file).policies.policy_for("openai:x").retry.max_attempts == 4
    config = load_gateway_config(file)
    assert (config.port, config.default_provider, config.source) == (9000, "openai", str(file))
    assert config.policies.policy_for("openai:x").retry.max_attempts == 4
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[tool.tether.providers.a]\nkind = "anthropic"\n[tool.tether.gateway]\nport = 9001\n')
    assert load_gateway_config(pyproject).port == 9001
    (tmp_path / "empty").mkdir()
    assert load_gateway_config(cwd=tmp_path / "empty").port == 8400, "no file: the defaults"


def test_docs_toml_blocks_load(tmp_path: Path) -> None:
    """Every TOML block of docs/gateway.md is a valid tether.toml."""
    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / "docs" / "gateway.md").read_text(), re.S)
    assert blocks
    for i, block in enumerate(blocks):
        path = tmp_path / f"block{i}.toml"
        path.write_text(block)
        load_gateway_config(path, environ={"TETHER_GATEWAY_KEYS": ""})


def test_docs_openclaw_json_blocks_parse() -> None:
    blocks = re.findall(r"```json\n(.*?)```", (ROOT / "docs" / "gateway.md").read_text(), re.S)
    assert blocks
    for block in blocks:
        doc = json.loads(block)
        if "mcpServers" in doc:  # the MCP client entry of `tether mcp`
            assert doc["mcpServers"]["tether"]["args"][:1] == ["mcp"]
            continue
        if "plugins" in doc:  # the OpenClaw plugin's entry: the id and settings its manifest declares
            manifest = json.loads((ROOT / "integrations" / "openclaw" / "openclaw.plugin.json").read_text())
            entry = doc["plugins"]["entries"][manifest["id"]]
            assert entry["hooks"]["allowConversationAccess"] is True
            assert set(entry["config"]) <= set(manifest["configSchema"]["properties"])
            assert entry["config"]["gatewayUrl"].startswith("http://127.0.0.1:8400")
            continue
        for provider in doc["models"]["providers"].values():
            assert provider["api"] in ("openai-completions", "openai-responses", "anthropic-messages")
            assert provider["baseUrl"].startswith("http://127.0.0.1:8400")


# -- routing ----------------------------------------------------------------------------------


def test_model_resolution_order() -> None:
    routes = [parse_route("fast", "openai:gpt-4o-mini"), parse_route("gpt-4o", "anthropic"),
              parse_route("claude-*", "anthropic"), parse_route("*", "openai")]
    assert resolve_model("fast", routes, PROVIDERS, None) == Target("openai", "gpt-4o-mini")
    assert resolve_model("gpt-4o", routes, PROVIDERS, None) == Target("anthropic", "gpt-4o"), "exact first"
    assert resolve_model("anthropic/claude-x", routes, PROVIDERS, None) == Target("anthropic", "claude-x"), \
        "a provider prefix before globs"
    assert resolve_model("meta/llama-3", routes, PROVIDERS, None) == Target("openai", "meta/llama-3"), \
        "not a provider: the name keeps its slash"
    assert resolve_model("claude-haiku", routes, PROVIDERS, None) == Target("anthropic", "claude-haiku")
    assert resolve_model("o3", routes[:3], PROVIDERS, None) is None
    assert resolve_model("o3", routes[:3], PROVIDERS, "openai") == Target("openai", "o3")


def test_parse_route_refuses_nonsense() -> None:
    for value in ("", ":m", "p:", 3):
        with pytest.raises(ValueError):
            parse_route("x", value)


# -- identity ---------------------------------------------------------------------------------


def test_identify_keys_agents_and_runs() -> None:
    assert identify({"authorization": "Bearer tg-key-bot"}, KEYS) == Caller("bot", None, None, None)
    assert identify({"x-api-key": "tg-key-bot"}, KEYS) == Caller("bot", None, None, None)
    refused = identify({"authorization": "Bearer tg-key-nope"}, KEYS)
    assert isinstance(refused, Refused) and (refused.status, refused.code) == (401, "invalid_api_key")
    assert isinstance(missing := identify({}, KEYS), Refused) and missing.code == "missing_api_key"
    trace = "0af7651916cd43dd8448eb211c80319c"
    parent = f"00-{trace}-b7ad6b7169203331-01"
    derived = identify({"x-api-key": "tg-key-bot", "traceparent": parent}, KEYS)
    assert derived == Caller("bot", run_for_trace("bot", trace), trace, parent, derived_run=True)
    assert run_for_trace("bot", trace) == run_for_trace("bot", trace) != run_for_trace("other", trace)
    named = identify({"x-api-key": "tg-key-bot", "x-tether-run-id": "r-1"}, KEYS)
    assert named == Caller("bot", "r-1", trace_for_run("r-1"), None)
    assert isinstance(identify({"x-api-key": "tg-key-bot", "traceparent": "garbage"}, KEYS), Caller)
    sub = identify({"x-api-key": "tg-key-bot", "x-tether-agent": "bot/researcher"}, KEYS)
    assert isinstance(sub, Caller) and sub.agent == "bot/researcher"
    other = identify({"x-api-key": "tg-key-bot", "x-tether-agent": "botnet"}, KEYS)
    assert isinstance(other, Refused) and other.status == 403
    trusted = identify({"x-api-key": "tg-key-ops", "x-tether-agent": "anyone"}, KEYS)
    assert isinstance(trusted, Caller) and (trusted.agent, trusted.trusted) == ("anyone", True)
    bad_run = identify({"x-api-key": "tg-key-bot", "x-tether-run-id": "has space"}, KEYS)
    assert isinstance(bad_run, Refused) and bad_run.status == 400


# -- errors -----------------------------------------------------------------------------------


def test_problem_bodies_in_each_format() -> None:
    status, headers, body = problem("openai", 404, "nope", code="model_not_found")
    assert status == 404 and ("x-should-retry", "false") in headers
    assert json.loads(body) == {"error": {"message": "nope", "type": "invalid_request_error", "param": None,
                                          "code": "model_not_found"}}
    _, _, body = problem("anthropic", 413, "big")
    assert json.loads(body) == {"type": "error", "error": {"type": "request_too_large", "message": "big"}}
    _, _, body = problem("openai", 429, "slow down")
    assert json.loads(body)["error"]["type"] == "requests"


def test_retry_after_of_a_give_up() -> None:
    final = [("content-type", "application/json"), ("x-should-retry", "false")]
    assert ("retry-after", "5") in with_retry_after(500, final, breaker_wait_s=None, default_s=5)
    assert ("retry-after", "28") in with_retry_after(503, final, breaker_wait_s=27.2, default_s=5)
    assert ("retry-after", "1") in with_retry_after(429, final, breaker_wait_s=None, default_s=0)
    kept = [*final, ("Retry-After", "12")]
    assert with_retry_after(429, kept, breaker_wait_s=30, default_s=5) == kept, "the provider's hint wins"
    assert with_retry_after(400, final, breaker_wait_s=None, default_s=5) == final, "waiting cures no 400"
    retryable = [("content-type", "application/json")]
    assert with_retry_after(500, retryable, breaker_wait_s=None, default_s=5) == retryable, "not a give-up"


def test_route_request() -> None:
    from tether.adapters.gateway._requests import Routed, route_request

    config = GatewayConfig.from_mapping({"models": {"fast": "openai:gpt-4o-mini", "claude-*": "anthropic"}},
                                        providers=PROVIDERS, environ={})
    same = b'{"model": "gpt-4o-mini", "messages": []}'
    assert route_request("openai", b'{"model": "fast", "n": 1}', config) == Routed(
        Target("openai", "gpt-4o-mini"), b'{"model":"gpt-4o-mini","n":1}'), "an alias is renamed in the body"
    assert route_request("openai", b'{"model": "openai/gpt-4o-mini"}', config) == Routed(
        Target("openai", "gpt-4o-mini"), b'{"model":"gpt-4o-mini"}')
    assert route_request("anthropic", b'{"model": "claude-x"}', config) == Routed(
        Target("anthropic", "claude-x"), b'{"model": "claude-x"}'), "the agent's bytes when nothing changes"
    refused = {name: route_request(kind, body, config) for name, kind, body in [
        ("not json", "openai", b"{"), ("array", "anthropic", b"[]"), ("no model", "openai", b"{}"),
        ("unknown", "openai", same), ("other format", "openai", b'{"model": "claude-x"}')]}
    assert {k: v[0] for k, v in refused.items() if isinstance(v, tuple)} == {
        "not json": 400, "array": 400, "no model": 400, "unknown": 404, "other format": 404}
    assert b"Anthropic Messages format" in refused["other format"][2]  # type: ignore[index]


# -- tool calls in the conversation, and the run book ---------------------------------------------

@pytest.mark.parametrize(("result", "error"), [
    ("18 C", False), ("Error: unknown zone", True), ("error", True), ("errors are rare here", False),
    ('{"status": "error", "error": "timeout"}', True), ('{"error": null, "value": 1}', False),
    ({"isError": True, "content": []}, True), ({"is_error": False}, False), ('{"status": "ok"}', False),
    ([{"type": "text", "text": "Error: nope"}], True), ([{"type": "text", "text": "fine"}], False),
    ("[1, 2]", False), ("{not json", False), (None, False), (42, False),
])
def test_says_error(result: object, error: bool) -> None:
    from tether.adapters.gateway._toolcalls import says_error

    assert says_error(result) is error


def test_tool_uses_and_results_in_the_three_formats_with_parallel_calls() -> None:
    from tether.adapters.gateway._toolcalls import ToolResult, ToolUse, tool_results, tool_uses

    chat = {"choices": [{"message": {"tool_calls": [
        {"id": "a", "function": {"name": "f", "arguments": '{"x": 1}'}},
        {"id": "b", "function": {"name": "g", "arguments": "not json"}}]}}]}
    assert tool_uses("openai", "chat", chat) == [ToolUse("a", "f", {"x": 1}), ToolUse("b", "g", "not json")]
    assert tool_results("openai", "chat", {"messages": [{"role": "user", "content": "hi"},
                                                         {"role": "tool", "tool_call_id": "a", "content": "1"}]}) \
        == [ToolResult("a", "1", False)]
    responses = {"object": "response", "output": [{"type": "message"}, {"type": "function_call", "call_id": "c",
                                                                          "name": "f", "arguments": "{}"}]}
    assert tool_uses("openai", "responses", responses) == [ToolUse("c", "f", {})]
    assert tool_results("openai", "responses", {"input": [
        {"type": "function_call_output", "call_id": "c", "output": "Error: x"}]}) == [ToolResult("c", "Error: x", True)]
    claude = {"type": "message", "content": [{"type": "text", "text": "ok"},
                                             {"type": "tool_use", "id": "d", "name": "f", "input": {"y": 2}},
                                             {"type": "tool_use", "id": "e", "name": "g", "input": {}}]}
    assert [u.id for u in tool_uses("anthropic", "messages", claude)] == ["d", "e"]
    assert tool_results("anthropic", "messages", {"messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "d", "content": "fine", "is_error": True}]}]}) == \
        [ToolResult("d", "fine", True)]
    for odd in (None, [], {"choices": "x"}, {"choices": [{"message": None}]}, {"output": [{"type": "function_call"}]}):
        assert tool_uses("openai", "chat", odd) == [] and tool_uses("openai", "responses", odd) == []
        assert tool_results("anthropic", "messages", odd) == []


def test_run_book_idles_only_without_calls_in_flight_and_closes_pending_tools() -> None:
    from tether.adapters.gateway._runbook import MISSING, RunBook
    from tether.schemas import Event, LlmCallCompleted, LlmCallRequested, RunFinished, ToolCallFailed

    book = RunBook(idle_s=10)
    [started] = book.call_started("r", "bot", "t" * 32, None, 100.0)
    assert started.payload.tags == ("gateway",)
    assert book.sweep(200.0) == [], "a call in flight: the run is not idle, however long it takes"
    ask = Event.of(LlmCallRequested(call_id="c1", provider="openai", model="m", request={"messages": []}), runid="r")
    assert book.observed(ask) == []
    answer = {"choices": [{"message": {"tool_calls": [{"id": "t1", "function": {"name": "f", "arguments": "{}"}}]}}]}
    assert book.observed(Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="m", response=answer),
                                  runid="r")) == []
    assert book.call_ended("r", 101.0) == []
    assert book.sweep(110.5) == [], "idle counts from the end of its last call"
    assert book.sweep(111.0) != [] and not book.runs["r"].running
    outs = [o.payload for o in book.call_started("r", "bot", "t" * 32, None, 120.0)]
    assert [type(p).__name__ for p in outs] == ["RunStarted"] and outs[0].metadata["resumed_after"] == "idle"
    book2 = RunBook(idle_s=10)
    book2.call_started("r", "bot", "t" * 32, None, 100.0)
    book2.observed(Event.of(LlmCallRequested(call_id="c1", provider="openai", model="m"), runid="r"))
    book2.observed(Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="m", response=answer), runid="r"))
    ends = [o.payload for o in book2.reported(Event.of(RunFinished(status="ok"), runid="r"))]
    assert [type(p).__name__ for p in ends] == ["ToolCallRequested", "ToolCallFailed"], "no second run.finished"
    assert isinstance(ends[1], ToolCallFailed) and ends[1].error.type == MISSING
    assert book2.reported(Event.of(RunFinished(status="ok"), runid="unknown")) == []


def test_run_book_matches_a_result_whose_id_the_agent_stripped_to_letters_and_digits() -> None:
    """OpenClaw answers the model's ``call_fake1x1`` as ``callfake1x1`` (seen with openclaw 2026.9.6)."""
    from tether.adapters.gateway._runbook import RunBook
    from tether.schemas import Event, LlmCallCompleted, LlmCallRequested, ToolCallFailed

    book = RunBook(idle_s=10)
    book.call_started("r", "claw", "t" * 32, None, 100.0)
    book.observed(Event.of(LlmCallRequested(call_id="c1", provider="openai", model="m"), runid="r"))
    answer = {"choices": [{"message": {"tool_calls": [
        {"id": "call_fake1x1", "function": {"name": "apply_patch", "arguments": '{"input": "x"}'}}]}}]}
    book.observed(Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="m", response=answer), runid="r"))
    error = '{"status": "error", "tool": "apply_patch", "error": "The first line of the patch must be ..."}'
    request = {"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "callfake1x1",
                                                                 "content": error}]}
    outs = book.observed(Event.of(LlmCallRequested(call_id="c2", provider="openai", model="m", request=request),
                                  runid="r"))
    assert [type(o.payload).__name__ for o in outs] == ["ToolCallRequested", "ToolCallFailed"]
    assert isinstance(outs[1].payload, ToolCallFailed) and outs[1].payload.error.type == "ToolError"
    assert outs[0].payload.tool_call_id == "call_fake1x1" and not book.runs["r"].pending and not book.runs["r"].early


def test_identify_a_resumed_run() -> None:
    key = {"authorization": "Bearer tg-key-bot"}
    caller = identify({**key, "x-tether-run-id": "job-7", "x-tether-resume": "2"}, KEYS)
    assert isinstance(caller, Caller) and (caller.run_id, caller.resume) == ("job-7", "2")
    traced = identify({**key, "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                       "x-tether-resume": "1"}, KEYS)
    assert isinstance(traced, Caller) and traced.derived_run and traced.resume == "1"
    alone = identify({**key, "x-tether-resume": "1"}, KEYS)
    assert isinstance(alone, Refused) and (alone.status, alone.code) == (400, "resume_without_run")
    assert "x-tether-run-id" in alone.message
    bad = identify({**key, "x-tether-run-id": "job-7", "x-tether-resume": "two words"}, KEYS)
    assert isinstance(bad, Refused) and (bad.status, bad.code) == (400, "invalid_resume")
    assert identify(key, KEYS) == Caller("bot", None, None, None), "no resume unless asked"


def test_a_result_that_comes_before_its_call_waits_for_it_through_the_shared_state() -> None:
    """Two gateways: the request carrying a result is folded before the answer that asked for it
    (the other gateway had not written it yet); the span is made when the answer comes, timed by
    both calls, and the state survives its JSON round trip in KV between the two."""
    from datetime import timedelta

    from tether.adapters.gateway._runbook import Followed, answered, asked, begin
    from tether.schemas import Event, LlmCallCompleted, LlmCallRequested, ToolCallCompleted

    run, _ = begin(None, "r", "claw", "t" * 32, None, 100.0)
    request = {"messages": [{"role": "tool", "tool_call_id": "callx1", "content": "18 C"}]}
    came = Event.of(LlmCallRequested(call_id="c2", provider="openai", model="m", request=request), runid="r")
    assert asked(run, came, "openai") == [] and list(run.early) == ["callx1"]
    run = Followed.from_json(run.to_json())
    answer = {"choices": [{"message": {"tool_calls": [{"id": "call_x1", "function": {"name": "f",
                                                                                      "arguments": "{}"}}]}}]}
    done = Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="m", response=answer), runid="r",
                    time=came.time - timedelta(seconds=2))
    outs = answered(run, done, "openai", "chat")
    assert [type(o.payload).__name__ for o in outs] == ["ToolCallRequested", "ToolCallCompleted"]
    assert (outs[0].at, outs[1].at) == (done.time, came.time)
    assert isinstance(outs[1].payload, ToolCallCompleted) and outs[1].payload.result == "18 C"
    assert outs[1].payload.duration_ms == 2000
    assert not run.early and not run.pending and "callx1" in run.done
    assert asked(run, came, "openai") == [], "a result already made a span is not kept again"


def test_a_tool_call_openclaw_reports_with_its_responses_item_id_is_not_inferred() -> None:
    """OpenClaw's id for a Responses API tool call is ``<call_id>|<item id>`` (seen with openclaw
    2026.9.6 in its openai-responses mode): the plugin reports that; the conversation has the call_id."""
    from tether.adapters.gateway._runbook import RunBook
    from tether.schemas import Event, LlmCallCompleted, LlmCallRequested, ToolCallRequested

    book = RunBook(idle_s=10)
    book.call_started("r", "claw", "t" * 32, None, 100.0)
    book.observed(Event.of(LlmCallRequested(call_id="c1", provider="openai", model="m", operation="responses"),
                           runid="r"))
    answer = {"output": [{"type": "function_call", "id": "fc_9", "call_id": "call_fake5x2", "name": "f",
                          "arguments": "{}"}]}
    book.observed(Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="m", response=answer), runid="r"))
    assert book.reported(Event.of(ToolCallRequested(call_id="call_fake5x2|fc_9", tool="f",
                                                    tool_call_id="call_fake5x2|fc_9"), runid="r")) == []
    request = {"input": [{"type": "function_call_output", "call_id": "call_fake5x2", "output": "ok"}]}
    assert book.observed(Event.of(LlmCallRequested(call_id="c2", provider="openai", model="m", operation="responses",
                                                   request=request), runid="r")) == [], "reported: not inferred"
    assert not book.runs["r"].pending


def test_gemini_calls_pair_by_id_else_by_function_and_place() -> None:
    """Gemini's calls often carry no id: a result without one answers the next unanswered call of
    its function in the model turn before it (parallel calls of one function in order; a call whose
    result never came does not shift the later ones); a result with an id answers that id."""
    from tether.adapters.gateway._runbook import RunBook
    from tether.schemas import Event, LlmCallCompleted, LlmCallRequested, ToolCallCompleted, ToolCallFailed

    def call(name: str, city: str, call_id: str | None = None) -> dict[str, object]:
        return {"functionCall": {"name": name, "args": {"city": city}, **({"id": call_id} if call_id else {})}}

    def answer(name: str, result: object, call_id: str | None = None) -> dict[str, object]:
        return {"functionResponse": {"name": name, "response": result, **({"id": call_id} if call_id else {})}}

    book = RunBook(idle_s=10)
    book.call_started("r", "bot", "t" * 32, None, 100.0)
    user = {"role": "user", "parts": [{"text": "weather?"}]}
    forgotten = {"role": "model", "parts": [call("get_weather", "Oslo")]}  # its result never came
    turn = {"role": "model", "parts": [call("get_weather", "Paris"), call("get_time", "Paris"),
                                       call("get_weather", "Rome"), call("lookup", "Nice", "fc-7")]}
    history = [user, forgotten, user]

    def exchange(n: int, contents: list[object], response: dict[str, object]) -> list[object]:
        ask = LlmCallRequested(call_id=f"c{n}", provider="google", model="g", operation="generate_content",
                               request={"contents": contents})
        outs = book.observed(Event.of(ask, runid="r"))
        book.observed(Event.of(LlmCallCompleted(call_id=f"c{n}", provider="google", model="g", response=response),
                               runid="r"))
        return [o.payload for o in outs]

    assert exchange(1, history, {"candidates": [{"content": turn, "index": 0}]}) == []
    pending = book.runs["r"].pending
    assert sorted(pending) == ["#1:get_time", "#2:get_weather", "#3:get_weather", "fc7"], "after the forgotten call"
    results = {"role": "user", "parts": [answer("get_weather", {"result": "18 C"}), answer("lookup", "ok", "fc-7"),
                                         answer("get_weather", {"error": "no such city"}),
                                         answer("get_time", {"result": "noon"})]}
    outs = exchange(2, [*history, turn, results], {"candidates": [{"content": {"role": "model", "parts": [
        {"text": "done"}]}}]})
    spans = {(p.tool, p.arguments["city"], p.tool_call_id) for p in outs if type(p).__name__ == "ToolCallRequested"}
    assert spans == {("get_weather", "Paris", None), ("get_weather", "Rome", None), ("get_time", "Paris", None),
                     ("lookup", "Nice", "fc-7")}
    ended = {p.call_id: p for p in outs if isinstance(p, ToolCallCompleted | ToolCallFailed)}
    result = {(p.tool, p.arguments["city"]): ended[p.call_id] for p in outs if type(p).__name__ == "ToolCallRequested"}
    failed = result.pop(("get_weather", "Rome"))
    assert isinstance(failed, ToolCallFailed) and failed.error.type == "ToolError"
    assert {k: getattr(v, "result", None) for k, v in result.items()} == {
        ("get_weather", "Paris"): {"result": "18 C"}, ("get_time", "Paris"): {"result": "noon"},
        ("lookup", "Nice"): "ok"}
    assert not book.runs["r"].pending
    assert exchange(3, [*history, turn, results], {"candidates": []}) == [], "a resent history makes no span again"


def test_gemini_providers_keys_and_errors() -> None:
    from tether.adapters.gateway._requests import Routed, route_request
    from tether.adapters.gateway._upstream import Upstreams

    google = ProviderConfig.from_mapping("google", {"kind": "gemini", "api_key_env": "NO_SUCH_VAR_FOR_TESTS"})
    assert (google.kind, google.base_url) == ("gemini", "https://generativelanguage.googleapis.com/v1beta")
    keyed = ProviderConfig("google", "gemini", google.base_url, api_key="AIza-upstream")
    assert Upstreams({"google": keyed})._auth["google"] == [("x-goog-api-key", "AIza-upstream")]
    assert keyed.auth_headers() == {"x-goog-api-key": "AIza-upstream"}
    caller = identify({"x-goog-api-key": "tg-key-bot"}, KEYS)
    assert isinstance(caller, Caller) and caller.agent == "bot"
    assert "x-goog-api-key" in STRIPPED, "the agent's key never goes upstream"
    status, headers, body = problem("gemini", 401, "who?", code="invalid_api_key")
    assert status == 401 and ("x-should-retry", "false") in headers
    assert json.loads(body)["error"] == {"code": 401, "message": "who?", "status": "UNAUTHENTICATED", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "invalid_api_key", "domain": "tether"}]}
    config = GatewayConfig.from_mapping({"models": {"flash": "google:gemini-2.5-flash", "gpt-*": "openai"}},
                                        providers={**PROVIDERS, "google": keyed}, environ={})
    assert route_request("gemini", b'{"contents": []}', config, model="flash") == Routed(
        Target("google", "gemini-2.5-flash"), b'{"contents": []}'), "the alias's model goes in the path, not the body"
    assert route_request("gemini", b'{"contents": []}', config, model="google/gemini-2.5-pro") == Routed(
        Target("google", "gemini-2.5-pro"), b'{"contents": []}')
    other = route_request("gemini", b"{}", config, model="gpt-4o")
    assert isinstance(other, tuple) and other[0] == 404 and b"OpenAI format" in other[2]
    assert route_request("openai", b'{"model": "flash"}', config)[0] == 404  # type: ignore[index]
