"""Which event loop tether's own processes run on: uvloop where it is installed.

uvloop's wake-ups cost less CPU than asyncio's, which a worker answering one call at a
time pays several times a call; but it is another loop (its transports are not
``asyncio.Transport``), so code run here uses only what both loops provide, and
tests/cli/test_processes.py runs the commands on it. ``TETHER_EVENT_LOOP=asyncio`` keeps
the standard loop. Imports nothing of tether.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["loop_factory", "run"]

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory, or None (the standard loop) if it is missing or turned off."""
    if os.environ.get("TETHER_EVENT_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on :func:`loop_factory`'s loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
