"""The gateway: an OpenAI-, Anthropic- and Gemini-compatible HTTP server any agent points its base URL at.

``tether gateway`` (and ``tether up --gateway-port``) serve it; in code::

    config = load_gateway_config()                      # [gateway] and [providers.*] of tether.toml
    async with GatewayServer(config, bus) as server:    # uvicorn on config.host:config.port
        ...                                             # agents use server.url + "/v1"

Agents authenticate with gateway keys (each maps to an agent id); the providers' keys stay in
the gateway. Every call runs under the reliability policy through the
:class:`~tether.adapters.Interceptor` and is recorded as events; when the policy gives up,
the agent gets the provider's own error format with a ``Retry-After``. ``POST /v1/events``
takes CloudEvents (structured, binary, batch). See docs/gateway.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._app import KEY_SHAPE, Gateway
from ._config import DEFAULT_PORT, TRUSTED, GatewayConfig, GatewaySection, digest, load_gateway_config
from ._identity import AGENT_HEADER, RUN_HEADER, run_for_trace
from ._ingest import BATCH, STRUCTURED
from ._routing import ModelRoute, parse_route, resolve_model
from ._server import GatewayServer
from ._upstream import CallUpstream, Upstreams

if TYPE_CHECKING:
    from mcp.server.mcpserver import MCPServer

__all__ = [
    "AGENT_HEADER",
    "BATCH",
    "DEFAULT_PORT",
    "KEY_SHAPE",
    "RUN_HEADER",
    "STRUCTURED",
    "TRUSTED",
    "CallUpstream",
    "Gateway",
    "GatewayConfig",
    "GatewaySection",
    "GatewayServer",
    "ModelRoute",
    "Upstreams",
    "digest",
    "load_gateway_config",
    "mcp_server",
    "parse_route",
    "resolve_model",
    "run_for_trace",
]


def mcp_server(gateway_url: str, key: str | None = None) -> MCPServer:
    """``tether mcp``'s server (see ``_mcp``). The MCP SDK is imported on this first use only: it is
    about 40% of the imports of every ``tether`` process that never serves MCP (worker, up, gateway)."""
    from ._mcp import mcp_server as build

    return build(gateway_url, key)
