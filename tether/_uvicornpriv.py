"""uvicorn's undocumented internals: every use tether makes of them, in this one module.

uvicorn documents running a ``Server``, not subclassing one. The gateway and the fake provider
run it inside their owner's loop, leaving signals to that owner and stopping without uvicorn's
100 ms polls; the fake provider also resets connections through uvicorn's request cycle. None of
these names is private by spelling (``tests/test_private_hooks.py`` cannot see them), so
``tests/testing/test_uvicornpriv.py`` checks :data:`HOOKS`. Imports nothing of tether but ``_hooks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from tether._hooks import Hook

__all__ = ["HOOKS", "QuietServer", "StoppingServer", "request_transport"]

HOOKS = (
    Hook("uvicorn", "uvicorn.Server", "capture_signals",
         "a context manager serve() runs in; tether's servers make it do nothing, so signals stay with the owner of "
         "the loop (tether up, tether gateway, a test)", __name__),
    Hook("uvicorn", "uvicorn.Server", "main_loop",
         "what serve() awaits until the server should exit; tether's wakes as soon as it is stopped (no 100 ms poll)",
         __name__),
    Hook("uvicorn", "uvicorn.Server", "on_tick",
         "one turn of uvicorn's main loop (the Date header, should_exit), called by tether's main_loop", __name__),
    Hook("uvicorn", "uvicorn.Server", "shutdown",
         "overridden by the fake provider to reset the connections still open after a grace period, through "
         "servers and server_state (connections, tasks)", __name__),
    Hook("uvicorn", "uvicorn.protocols.http.*.RequestResponseCycle", "transport",
         "the TCP transport under a request, reached through the ASGI receive callable (receive.__self__): the "
         "fake provider's reset faults abort it", __name__),
)


class QuietServer(uvicorn.Server):
    """uvicorn's server as a task of its owner's loop: it leaves signal handling to that owner,
    and stops at once when ``should_exit`` is set and :attr:`wake` is set."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.wake = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the owner of the loop handles signals

    async def main_loop(self) -> None:
        counter = 0
        while not await self.on_tick(counter):  # on_tick refreshes the Date header once a second
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self.wake.wait()  # set by the owner: no 100 ms wait to begin stopping


class StoppingServer(QuietServer):
    """A :class:`QuietServer` whose shutdown waits ``grace_s`` for responses in flight, then
    resets the connections still open (uvicorn's own polls every 100 ms)."""

    def __init__(self, config: uvicorn.Config, *, grace_s: float) -> None:
        super().__init__(config)
        self.grace_s = grace_s

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        state = self.server_state
        for connection in list(state.connections):
            connection.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace_s
        while (state.connections or state.tasks) and loop.time() < deadline:  # noqa: ASYNC110 (uvicorn has no event)
            await asyncio.sleep(0.005)
        for connection in list(state.connections):
            abort = getattr(getattr(connection, "transport", None), "abort", None)
            if callable(abort):  # any loop's transport: uvloop's are no asyncio.Transport
                abort()
        for task in list(state.tasks):
            task.cancel()
        if state.tasks:
            await asyncio.wait(list(state.tasks), timeout=1.0)
        for server in self.servers:
            await server.wait_closed()


def request_transport(receive: Any) -> Any:
    """The transport under the request whose ASGI ``receive`` this is (uvicorn's request cycle
    holds it), or None for another server."""
    return getattr(getattr(receive, "__self__", None), "transport", None)
