"""Time-ordered event ids (UUIDv7, RFC 9562), monotonic within a process."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime

__all__ = ["uuid7", "uuid7_time"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def uuid7() -> str:
    """Return a new UUIDv7 string.

    The 48-bit millisecond timestamp comes first, so ids sort by creation time; the
    12-bit ``rand_a`` field is a counter seeded randomly each millisecond (RFC 9562
    method 1), so ids made in the same millisecond by this process still sort in
    the order they were made.
    """
    global _last_ms, _counter
    rand = int.from_bytes(os.urandom(8), "big")
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = (rand >> 53) & 0x1FF  # leave headroom for 3.5k ids per ms
        else:
            ms = _last_ms
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                ms = _last_ms
                _counter = 0
        counter = _counter
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | counter << 64
        | 0b10 << 62
        | rand & 0x3FFF_FFFF_FFFF_FFFF
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7_time(value: str) -> datetime:
    """The creation time encoded in a UUIDv7 string (millisecond precision)."""
    u = uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"{value!r} is not a UUIDv7")
    return datetime.fromtimestamp((u.int >> 80) / 1000, tz=UTC)
