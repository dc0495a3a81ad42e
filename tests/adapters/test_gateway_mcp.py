"""``tether mcp`` as users run it (a process, over stdio and streamable HTTP), driven by the ``mcp``
SDK's own client session, in front of a real gateway: each key reaches its own agent's memory only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, TextIO

import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tether.adapters.gateway import Gateway, GatewayServer
from tether.adapters.gateway._mcp import TOOLS
from tether.bus import Bus
from tether.memory import MemorySettings
from tether.middleware import PolicySet
from tether.testing.fake_provider import FakeProvider

from .conftest import GATEWAY_KEY, OTHER_KEY, gateway_config

pytestmark = [pytest.mark.anyio, pytest.mark.nats]


@pytest.fixture
async def gateway(fake: FakeProvider, bus: Bus, policies: PolicySet, tmp_path: Path) -> AsyncIterator[GatewayServer]:
    config = gateway_config(fake, policies)
    settings = MemorySettings(view_dir=tmp_path / "memory", keyfile=tmp_path / "keys.json")
    async with GatewayServer(config, bus, port=0, grace_s=1, gateway=Gateway(config, bus, memory=settings)) as server:
        yield server


def answer(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    return result.structured_content or json.loads(result.content[0].text)


def refusal(result: Any) -> str:
    assert result.is_error
    return " ".join(getattr(c, "text", "") for c in result.content)


@pytest.fixture
def errlog(tmp_path: Path) -> Iterator[TextIO]:
    with open(tmp_path / "mcp.err", "w") as log:
        yield log


async def test_stdio_lists_and_calls_the_tools_as_its_keys_agent(gateway: GatewayServer, tmp_path: Path,
                                                                  errlog: TextIO) -> None:
    env = {**os.environ, "TETHER_GATEWAY_KEY": GATEWAY_KEY, "TETHER_HOME": str(tmp_path / "mcp-home")}
    params = StdioServerParameters(command=sys.executable, args=["-m", "tether", "mcp", "--gateway", gateway.url],
                                   env=env)
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        listed = await session.list_tools()
        assert sorted(t.name for t in listed.tools) == sorted(TOOLS)
        written = answer(await session.call_tool("memory_write", {
            "namespace": "agent:bot", "key": "contact", "text": "The customer prefers email."}))
        assert (written["key"], written["version"]) == ("contact", 1)
        hits = answer(await session.call_tool("memory_search", {"query": "customer contact"}))["hits"]
        assert [h["entry"]["text"] for h in hits] == ["The customer prefers email."]
        context = answer(await session.call_tool("memory_context", {"query": "contact", "token_budget": 40}))
        assert "email" in context["text"]
        got = answer(await session.call_tool("memory_get", {"namespace": "agent:bot", "key": "contact"}))
        assert got["agent"] == "bot"
        other = refusal(await session.call_tool("memory_write", {"namespace": "agent:other-bot", "text": "x"}))
        assert "403" in other and "agent:other-bot" in other
        assert answer(await session.call_tool("runs_list", {}))["runs"] == []


@pytest.fixture
def mcp_http(gateway: GatewayServer, tmp_path: Path) -> Iterator[str]:
    env = {**os.environ, "TETHER_HOME": str(tmp_path / "mcp-home")}
    env.pop("TETHER_GATEWAY_KEY", None)
    child = subprocess.Popen([sys.executable, "-m", "tether", "mcp", "--http", "--port", "0", "--gateway",
                              gateway.url], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + (child.stdout.read() if child.poll() is not None
                                                                 else "")
        yield line.split("listening on ")[1].split(" ")[0]
    finally:
        child.terminate()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def test_streamable_http_each_client_acts_with_its_own_key(mcp_http: str) -> None:
    async def call(key: str | None, tool: str, arguments: dict[str, Any]) -> Any:
        async with httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"} if key else {}, timeout=30) as http, \
                streamable_http_client(mcp_http, http_client=http) as (read, write), \
                ClientSession(read, write) as session:
            await session.initialize()
            if tool == "list":
                return await session.list_tools()
            return await session.call_tool(tool, arguments)

    assert sorted(t.name for t in (await call(GATEWAY_KEY, "list", {})).tools) == sorted(TOOLS)
    answer(await call(GATEWAY_KEY, "memory_write", {"namespace": "agent:bot", "key": "pin", "text": "code 4242"}))
    mine = answer(await call(GATEWAY_KEY, "memory_search", {"query": "code"}))["hits"]
    assert [h["entry"]["text"] for h in mine] == ["code 4242"]
    theirs = refusal(await call(OTHER_KEY, "memory_get", {"namespace": "agent:bot", "key": "pin"}))
    assert "403" in theirs and "other-bot" in theirs
    assert answer(await call(OTHER_KEY, "memory_search", {"query": "code"}))["hits"] == [], "its own namespaces only"
    nobody = refusal(await call(None, "memory_search", {"query": "code"}))
    assert "Authorization: Bearer" in nobody


def test_bad_options_say_what_to_do(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from tether.cli import main

    monkeypatch.delenv("TETHER_GATEWAY_KEY", raising=False)
    assert main(["mcp"]) == 2
    assert "--key or set $TETHER_GATEWAY_KEY" in capsys.readouterr().err
    assert main(["mcp", "--gateway", "localhost:8400", "--key", "k"]) == 2
    assert "http(s) URL such as http://127.0.0.1:8400" in capsys.readouterr().err
