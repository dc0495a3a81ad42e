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
_POOL = 512
_STRIDE = 20
_hex = ""
"""Random hex digits drawn from the OS for ``_POOL`` ids at a time (one system call and one ``hex()`` per
512 ids), ``_STRIDE`` per id: 3 seed a millisecond's counter, 16 (62 bits and the variant) end the id."""
_taken = _POOL
_prefix_ms = -1
_prefix = ""
"""``_prefix_ms``'s part of an id (its 48 bits in hex, the version digit), written once per millisecond."""
_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}
"""A random hex digit as the variant's (``0b10``) and two random bits."""


def _forget_random() -> None:
    """A forked child draws its own random bytes (else parent and child would make the same ids)."""
    global _hex, _taken
    _hex, _taken = "", _POOL


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_forget_random)


def uuid7() -> str:
    """Return a new UUIDv7 string.

    The 48-bit millisecond timestamp comes first, so ids sort by creation time; the
    12-bit ``rand_a`` field is a counter seeded randomly each millisecond (RFC 9562
    method 1), so ids made in the same millisecond by this process still sort in
    the order they were made.
    """
    global _last_ms, _counter, _hex, _taken, _prefix_ms, _prefix
    with _lock:
        if _taken >= _POOL:
            _hex, _taken = os.urandom(_POOL * _STRIDE // 2).hex(), 0
        i = _taken * _STRIDE
        _taken += 1
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms = ms
            _counter = int(_hex[i:i + 3], 16) & 0x1FF  # leave headroom for 3.5k ids per ms
        else:
            _counter += 1
            if _counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms += 1
                _counter = 0
        if _last_ms != _prefix_ms:
            h = f"{_last_ms & 0xFFFF_FFFF_FFFF:012x}"
            _prefix_ms, _prefix = _last_ms, f"{h[:8]}-{h[8:]}-7"
        # (ms 48 bits, version 7, counter 12 bits, variant 0b10, rand 62 bits), in the five groups
        return f"{_prefix}{_counter:03x}-{_VARIANT[_hex[i + 3]]}{_hex[i + 4:i + 7]}-{_hex[i + 7:i + 19]}"


def uuid7_time(value: str) -> datetime:
    """The creation time encoded in a UUIDv7 string (millisecond precision)."""
    u = uuid.UUID(value)
    if u.version != 7:
        raise ValueError(f"{value!r} is not a UUIDv7")
    return datetime.fromtimestamp((u.int >> 80) / 1000, tz=UTC)
