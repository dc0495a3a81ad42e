"""A throwaway nats-server for tests: free port, temporary store, stop and restart."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from tether.bus import EmbeddedServer

__all__ = ["NatsServer"]


class NatsServer:
    """A real ``nats-server -js`` on a free loopback port with a temporary store.

    ``stop()`` and ``start()`` again keep the port and the store, so clients reconnect
    and the stream survives: that is how outage tests are written.
    """

    def __init__(self, directory: str | Path | None = None, *, max_payload: int | None = None) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="tether-nats-"))
        self._server = EmbeddedServer(self.directory, max_payload=max_payload, die_with_parent=True)

    @property
    def url(self) -> str:
        if self._server.url is None:
            raise RuntimeError("server not started")
        return self._server.url

    @property
    def pid(self) -> int | None:
        return self._server.pid

    @property
    def running(self) -> bool:
        return self._server.owned

    def start(self) -> NatsServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def kill(self) -> None:
        """SIGKILL: the server dies without a clean shutdown."""
        self._server._kill()
        self._server.stop(timeout=0)

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
