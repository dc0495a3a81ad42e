"""What the commands share: the bus configuration from ``--url``/``--home``, and SIGINT/SIGTERM as an event."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Iterator
from typing import Any

from tether.bus import BusConfig

__all__ = ["bus_config", "stop_on_signals", "wait_for_signal"]


def bus_config(args: argparse.Namespace, **extra: Any) -> BusConfig:
    return BusConfig.from_env(url=args.url, home=args.home, **extra)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[asyncio.Event]:
    """While inside, SIGINT and SIGTERM set the event instead of interrupting the process."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def wait_for_signal() -> None:
    with stop_on_signals() as stop:
        await stop.wait()
