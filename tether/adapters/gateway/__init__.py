"""The gateway: an OpenAI- and Anthropic-compatible HTTP server any agent points its base URL at.

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

from ._app import KEY_SHAPE, Gateway
from ._config import DEFAULT_PORT, TRUSTED, GatewayConfig, GatewaySection, digest, load_gateway_config
from ._identity import AGENT_HEADER, RUN_HEADER, run_for_trace
from ._ingest import BATCH, STRUCTURED
from ._mcp import mcp_server
from ._routing import ModelRoute, parse_route, resolve_model
from ._server import GatewayServer
from ._upstream import CallUpstream, Upstreams

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
