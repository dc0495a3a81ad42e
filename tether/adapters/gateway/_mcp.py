"""``tether mcp``: tether memory and runs as Model Context Protocol tools, for any MCP-capable agent.

A thin server (the official ``mcp`` SDK) in front of a running gateway's HTTP API: every tool
call is a request to ``/v1/memory/...`` or ``/v1/runs`` with the agent's gateway key, so the
gateway decides what the key may reach, exactly as over HTTP. Over stdio the key is the
server's (``--key`` or ``$TETHER_GATEWAY_KEY``); over streamable HTTP each client sends its own
(``Authorization: Bearer``), and a client with none is refused.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

try:  # the mcp extra: the tools' Context annotation is resolved at run time, so it is imported here
    from mcp.server.mcpserver import Context, MCPServer
    from mcp.server.mcpserver.exceptions import ToolError
except ImportError:  # pragma: no cover - without the extra, mcp_server() says what to install
    Context = MCPServer = ToolError = None  # type: ignore[assignment,misc]

__all__ = ["INSTRUCTIONS", "TOOLS", "mcp_server"]

TOOLS = ("memory_search", "memory_write", "memory_context", "memory_get", "runs_list", "run_events")
INSTRUCTIONS = ("tether memory: search, write and read facts that outlive a conversation (your namespaces: "
                "agent:<your agent id> and agent:<your agent id>.<topic>); and your runs as tether records them.")


class _Gateway:
    """The gateway's HTTP API, as one agent (its key) or as each HTTP client (theirs)."""

    def __init__(self, url: str, key: str | None, *, timeout_s: float = 30.0) -> None:
        self.http = httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout_s)
        self.key = key

    def _key(self, ctx: Context[Any, Any] | None) -> str:
        headers = ctx.headers if ctx is not None else None
        if headers is not None:  # streamable HTTP: the client's own key, never the server's
            auth = headers.get("authorization") or ""
            scheme, _, value = auth.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else headers.get("x-api-key")
            if not key:
                raise _tool_error("no gateway key: send yours as Authorization: Bearer <key> to this MCP server")
            return key
        if not self.key:
            raise _tool_error("no gateway key: start tether mcp with --key or $TETHER_GATEWAY_KEY")
        return self.key

    async def call(self, ctx: Context[Any, Any] | None, method: str, path: str, body: Any = None) -> dict[str, Any]:
        headers = {"authorization": f"Bearer {self._key(ctx)}"}
        try:
            answer = await self.http.request(method, path, json=body, headers=headers)
        except httpx.HTTPError as exc:
            raise _tool_error(f"the tether gateway at {self.http.base_url} did not answer ({type(exc).__name__}): "
                              "is it running (tether gateway, or tether up --gateway-port)?") from None
        try:
            doc = answer.json()
        except ValueError:
            doc = None
        if answer.status_code >= 400:
            error = doc.get("error") if isinstance(doc, dict) else None
            message = error.get("message") if isinstance(error, dict) else answer.text[:500]
            raise _tool_error(f"{answer.status_code}: {message}")
        return doc if isinstance(doc, dict) else {"value": doc}


def _tool_error(message: str) -> Exception:
    return ToolError(message)


def mcp_server(gateway_url: str, key: str | None = None) -> MCPServer:
    """The MCP server of :data:`TOOLS`, each a call to the gateway at ``gateway_url``."""
    if MCPServer is None:
        raise ImportError("tether mcp needs the official MCP SDK: pip install 'tether[mcp]'")
    gateway = _Gateway(gateway_url, key)
    server: MCPServer = MCPServer("tether", instructions=INSTRUCTIONS)

    @server.tool()
    async def memory_search(query: str, namespaces: list[str] | None = None, k: int = 5,
                            ctx: Context | None = None) -> dict[str, Any]:
        """Search tether memory: the k most relevant entries (default: every namespace you may read)."""
        return await gateway.call(ctx, "POST", "/v1/memory/search",
                                  {"query": query, "namespaces": namespaces, "k": k})

    @server.tool()
    async def memory_write(namespace: str, text: str, key: str | None = None,
                           metadata: dict[str, Any] | None = None,
                           ctx: Context | None = None) -> dict[str, Any]:
        """Write a fact to tether memory (a new version of `key`, or a new entry); returns its version."""
        return await gateway.call(ctx, "POST", "/v1/memory/write",
                                  {"namespace": namespace, "text": text, "key": key, "metadata": metadata})

    @server.tool()
    async def memory_context(query: str, namespaces: list[str] | None = None, token_budget: int = 1000,
                             ctx: Context | None = None) -> dict[str, Any]:
        """Text for a prompt: the memory entries most relevant to `query` that fit `token_budget`, cited."""
        return await gateway.call(ctx, "POST", "/v1/memory/context",
                                  {"query": query, "namespaces": namespaces, "token_budget": token_budget})

    @server.tool()
    async def memory_get(namespace: str, key: str,
                         ctx: Context | None = None) -> dict[str, Any]:
        """One memory entry as it is now."""
        return await gateway.call(ctx, "POST", "/v1/memory/get",
                                  {"namespace": namespace, "key": key})

    @server.tool()
    async def runs_list(limit: int = 20, ctx: Context | None = None) -> dict[str, Any]:
        """Your recent runs through the tether gateway: status, how each ended, tool calls pending."""
        return await gateway.call(ctx, "GET", f"/v1/runs?limit={int(limit)}")

    @server.tool()
    async def run_events(run_id: str, ctx: Context | None = None) -> dict[str, Any]:
        """One of your runs: its state and its events (LLM calls, tool calls, memory writes), in order."""
        return await gateway.call(ctx, "GET", f"/v1/runs/{quote(run_id, safe='')}")

    return server
