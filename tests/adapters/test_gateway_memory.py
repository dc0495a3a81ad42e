"""Memory and runs over HTTP at the gateway: each key reaches its own agent's namespaces and runs only."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tether.adapters.gateway import Gateway, GatewayServer, run_for_trace
from tether.bus import Bus
from tether.memory import MemorySettings
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, OTHER_KEY, TRUSTED_KEY, gateway_config

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@pytest.fixture
async def gateway(fake: FakeProvider, bus: Bus, policies: PolicySet, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    config = gateway_config(fake, policies)
    settings = MemorySettings(view_dir=tmp_path / "memory", keyfile=tmp_path / "keys.json")
    async with GatewayServer(config, bus, port=0, grace_s=1, gateway=Gateway(config, bus, memory=settings)) as server:
        yield server


async def memory(http: httpx.AsyncClient, key: str, operation: str, body: Any, **headers: str) -> httpx.Response:
    return await http.post(f"/v1/memory/{operation}", json=body, headers={"authorization": f"Bearer {key}",
                                                                          **headers})


async def test_write_search_get_history_context_as_the_keys_agent(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        first = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "key": "contact",
                                                           "text": "The customer prefers email.",
                                                           "metadata": {"source": "chat"}})
        assert first.status_code == 200, first.text
        assert (first.json()["key"], first.json()["version"]) == ("contact", 1)
        second = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "key": "contact",
                                                            "text": "The customer prefers phone calls now.",
                                                            "expected_version": 1})
        assert second.json()["version"] == 2
        hits = (await memory(http, GATEWAY_KEY, "search", {"query": "how does the customer like to be contacted",
                                                           "k": 3})).json()["hits"]
        assert [h["entry"]["key"] for h in hits] == ["contact"]
        assert hits[0]["entry"]["text"] == "The customer prefers phone calls now."
        entry = (await memory(http, GATEWAY_KEY, "get", {"namespace": "agent:bot", "key": "contact"})).json()
        assert entry["version"] == 2 and entry["agent"] == "bot"
        versions = (await memory(http, GATEWAY_KEY, "history", {"namespace": "agent:bot", "key": "contact"})).json()
        assert [v["version"] for v in versions["versions"]] == [1, 2]
        context = (await memory(http, GATEWAY_KEY, "context", {"query": "customer contact", "token_budget": 50})).json()
        assert "phone calls" in context["text"] and context["tokens"] <= 50
        sub = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot.notes", "text": "a sub-namespace"},
                           **{"x-tether-agent": "bot/researcher"})
        assert sub.status_code == 200, "a sub-agent writes its agent's namespaces, named after it too"
        assert sub.json()["namespace"] == "agent:bot.notes"


async def test_a_key_cannot_reach_another_agents_namespaces(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        secret = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "key": "pin",
                                                            "text": "The vault code is 4242."})
        assert secret.status_code == 200
        for operation, body in (("get", {"namespace": "agent:bot", "key": "pin"}),
                                ("history", {"namespace": "agent:bot", "key": "pin"}),
                                ("search", {"query": "vault code", "namespaces": ["agent:bot"]}),
                                ("context", {"query": "vault code", "namespaces": "agent:bot"}),
                                ("write", {"namespace": "agent:bot", "key": "pin", "text": "overwritten"}),
                                ("write", {"namespace": "global", "text": "shared"})):
            refused = await memory(http, OTHER_KEY, operation, body)
            assert refused.status_code == 403, (operation, refused.text)
            assert refused.json()["error"]["code"] == "memory_access_denied"
            assert "other-bot" in refused.json()["error"]["message"]
        everywhere = await memory(http, OTHER_KEY, "search", {"query": "vault code"})
        assert everywhere.status_code == 200 and everywhere.json()["hits"] == [], "its search covers its own only"
        as_bot = await memory(http, OTHER_KEY, "get", {"namespace": "agent:bot", "key": "pin"},
                              **{"x-tether-agent": "bot"})
        assert as_bot.status_code == 403 and as_bot.json()["error"]["code"] == "agent_not_allowed"
        operator = await memory(http, TRUSTED_KEY, "get", {"namespace": "agent:bot", "key": "pin"})
        assert operator.json()["text"] == "The vault code is 4242.", "a trusted key with no agent: an operator"
        unchanged = await memory(http, GATEWAY_KEY, "get", {"namespace": "agent:bot", "key": "pin"})
        assert unchanged.json()["version"] == 1


async def test_bad_memory_requests_say_what_to_send(gateway: GatewayServer) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        missing = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "txt": "typo"})
        assert missing.status_code == 400
        assert "text: Field required" in missing.json()["error"]["message"]
        assert "txt: Extra inputs are not permitted" in missing.json()["error"]["message"]
        unknown = await memory(http, GATEWAY_KEY, "remember", {})
        assert unknown.status_code == 404
        assert "write, get, history, search, context" in unknown.json()["error"]["message"]
        not_json = await http.post("/v1/memory/write", content=b"{nope", headers={
            "authorization": f"Bearer {GATEWAY_KEY}"})
        assert not_json.status_code == 400 and not_json.json()["error"]["code"] == "invalid_json"
        absent = await memory(http, GATEWAY_KEY, "get", {"namespace": "agent:bot", "key": "never"})
        assert absent.status_code == 404 and absent.json()["error"]["code"] == "memory_not_found"
        await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "key": "k", "text": "v1"})
        conflict = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "key": "k", "text": "v2",
                                                              "expected_version": 0})
        assert conflict.status_code == 409 and conflict.json()["error"]["code"] == "version_conflict"
        bad_ns = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot has space", "text": "x"})
        assert bad_ns.status_code in (400, 403) and bad_ns.json()["error"]["message"]
        nokey = await http.post("/v1/memory/search", json={"query": "x"})
        assert nokey.status_code == 401


async def test_runs_over_http_are_the_keys_agents_own(gateway: GatewayServer) -> None:
    trace = secrets.token_hex(16)
    async with openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=GATEWAY_KEY, max_retries=0) as sdk:
        await sdk.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                          extra_headers={"traceparent": f"00-{trace}-{secrets.token_hex(8)}-01"})
    run_id = run_for_trace("bot", trace)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        listed = (await http.get("/v1/runs", headers={"authorization": f"Bearer {GATEWAY_KEY}"})).json()["runs"]
        assert [(r["run_id"], r["status"]) for r in listed] == [(run_id, "running")]
        mine = await http.get(f"/v1/runs/{run_id}", headers={"authorization": f"Bearer {GATEWAY_KEY}"})
        assert [e["type"] for e in mine.json()["events"]][:2] == ["tether.run.started", "tether.llm.call.requested"]
        theirs = await http.get(f"/v1/runs/{run_id}", headers={"authorization": f"Bearer {OTHER_KEY}"})
        assert theirs.status_code == 404 and "its own runs only" in theirs.json()["error"]["message"]
        assert (await http.get("/v1/runs", headers={"authorization": f"Bearer {OTHER_KEY}"})).json()["runs"] == []
        bad = await http.get("/v1/runs?limit=0", headers={"authorization": f"Bearer {GATEWAY_KEY}"})
        assert bad.status_code == 400


async def test_an_embedder_the_host_cannot_load_is_a_clear_503(fake: FakeProvider, bus: Bus, policies: PolicySet,
                                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``[memory] embedder = "static"`` on a host without the MiniLM files: the gateway's memory
    client tries to load it, and each memory request says why it cannot serve (nothing is written)."""
    monkeypatch.setenv("TETHER_MINILM_DIR", str(tmp_path / "no-model"))
    config = gateway_config(fake, policies)
    settings = MemorySettings(view_dir=tmp_path / "memory", keyfile=tmp_path / "keys.json", embedder="static",
                              source="tether.toml")
    gateway = Gateway(config, bus, memory=settings)
    async with GatewayServer(config, bus, port=0, grace_s=1, gateway=gateway) as server, \
            httpx.AsyncClient(base_url=server.url) as http:
        answer = await memory(http, GATEWAY_KEY, "write", {"namespace": "agent:bot", "text": "kept?"})
    assert answer.status_code == 503
    error = answer.json()["error"]
    assert error["code"] == "memory_unavailable"
    assert 'embedder = "static" in tether.toml cannot be loaded' in error["message"]
    assert 'set embedder = "none"' in error["message"]
