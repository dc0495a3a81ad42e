"""Rarer garbage collections while tether holds big batches of short-lived objects: a projector
catching up, a bulk memory write. Whoever holds them says so (:func:`pace`); the process's own
thresholds come back once nobody does. Imports nothing of tether.

While a batch is in flight its objects (payload models, their dicts and lists, some 25 an event)
outlive young collections, and with the default thresholds the collector walks them again and
again: every 700 allocations a young collection, and a collection of the whole heap every ten
middle-generation ones (25 to 75 ms each on a big heap), a fifth of a projector's rebuild and an
eighth of a bulk write's CPU (67 against 58 us a write). A young collection walks the young
objects still alive, whatever the threshold, so the fewer there are the less it costs: while
someone is holding, young collections run every 500,000 allocations (net of what was freed) and
whole-heap ones a hundred times less often. Memory stays bounded: a batch's objects (no cycles
among them) are freed by reference counting once it is done.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator

__all__ = ["BATCH_THRESHOLDS", "pace", "paced"]

BATCH_THRESHOLDS = (500_000, 50, 1000)
"""At least these, while anyone holds a batch."""

_lock = threading.Lock()
_holders: set[int] = set()
_saved: tuple[int, int, int] | None = None


def pace(holder: object, holding: bool) -> None:
    """``holder`` (any object, by identity) holds a big batch now, or no longer. Idempotent."""
    global _saved
    with _lock:
        key = id(holder)
        if holding == (key in _holders):
            return
        if holding:
            if not _holders:
                _saved = gc.get_threshold()
                if _saved[0]:  # 0: collection is off; leave it so
                    gc.set_threshold(*(max(mine, theirs) for mine, theirs in zip(BATCH_THRESHOLDS, _saved,
                                                                                 strict=True)))
            _holders.add(key)
        else:
            _holders.discard(key)
            if not _holders and _saved is not None:
                gc.set_threshold(*_saved)
                _saved = None


@contextlib.contextmanager
def paced() -> Iterator[None]:
    """:func:`pace` for the ``with`` block."""
    token = object()
    pace(token, True)
    try:
        yield
    finally:
        pace(token, False)
