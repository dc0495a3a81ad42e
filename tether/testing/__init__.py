"""Test helpers that ship with tether: a real nats-server you can stop and restart.

In pytest, enable the fixtures with ``pytest_plugins = ["tether.testing.pytest_plugin"]``.
"""

from ._collect import collect
from ._server import NatsServer

__all__ = ["NatsServer", "collect"]
