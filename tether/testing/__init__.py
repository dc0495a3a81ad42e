"""Test helpers that ship with tether: a real nats-server you can stop and restart.

In pytest, enable the fixtures with ``pytest_plugins = ["tether.testing.pytest_plugin"]``.
"""

from ._server import NatsServer

__all__ = ["NatsServer"]
