"""asyncio's private API: the one use tether makes of it, in this module.

A hub whose bus was connected on a loop running in another thread must know that thread, to
refuse a blocking call made on it; asyncio keeps it in ``_thread_id`` while the loop runs.
uvloop's loop has no such attribute: the hub then knows no thread and hands every event over
with ``call_soon_threadsafe``. ``tests/adapters/test_sdkpriv.py`` checks :data:`HOOKS`.
"""

from __future__ import annotations

import asyncio

from tether._hooks import Hook

__all__ = ["HOOKS", "loop_thread_id", "others_ready"]

HOOKS = (
    Hook("python", "asyncio.BaseEventLoop", "_thread_id",
         "the thread a loop runs in, for a bus connected on a loop of another thread: Hub.on_loop_thread() "
         "(a blocking call there would wait for itself)", __name__),
    Hook("python", "asyncio.BaseEventLoop", "_ready",
         "the callbacks a loop runs in its next pass: a hub wakes the bus's loop once the caller's has none left "
         "(after the rest of the agent's step), so one step's events go over together", __name__),
)


def loop_thread_id(loop: asyncio.AbstractEventLoop) -> int | None:
    """The thread ``loop`` runs in; None if it is not running or does not say (uvloop)."""
    thread_id: int | None = getattr(loop, "_thread_id", None)
    return thread_id


def others_ready(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` has callbacks ready to run (work to do before it waits); False if it does not
    say (uvloop)."""
    ready = getattr(loop, "_ready", None)
    return bool(ready)
