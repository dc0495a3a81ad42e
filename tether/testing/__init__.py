"""Test helpers that ship with tether: a real nats-server you can stop and restart, and a fake
OpenAI/Anthropic-compatible provider with seeded fault injection.

In pytest, enable the fixtures with ``pytest_plugins = ["tether.testing.pytest_plugin"]``.
"""

from ._cluster import NatsCluster
from ._collect import collect
from ._server import NatsServer
from .fake_provider import (
    ErrorResponse,
    FakeProvider,
    FaultRule,
    FixedLatency,
    Hang,
    Linger,
    LoggedRequest,
    LogNormalLatency,
    MalformedJSON,
    Reset,
    ResetMidStream,
    SlowFirstByte,
    StallMidStream,
    UniformLatency,
    parse_faults,
    parse_latency,
    reply_text,
)

__all__ = [
    "ErrorResponse",
    "FakeProvider",
    "FaultRule",
    "FixedLatency",
    "Hang",
    "Linger",
    "LogNormalLatency",
    "LoggedRequest",
    "MalformedJSON",
    "NatsCluster",
    "NatsServer",
    "Reset",
    "ResetMidStream",
    "SlowFirstByte",
    "StallMidStream",
    "UniformLatency",
    "collect",
    "parse_faults",
    "parse_latency",
    "reply_text",
]
