"""Server-sent events, parsed incrementally from the bytes a tee passes through.

Only the tail of an event not yet complete is kept between chunks: the stream itself is
never buffered. Pure: bytes in, ``(event name, data)`` pairs out.
"""

from __future__ import annotations

import re

__all__ = ["SSEParser"]

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


class SSEParser:
    """Feed chunks; get the events they complete, with the raw bytes of each."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[tuple[bytes, str | None, str]]:
        """Events completed by ``chunk``: ``(raw bytes incl. the blank line, event name, data)``."""
        buf = self._tail + chunk if self._tail else chunk
        out: list[tuple[bytes, str | None, str]] = []
        start = 0
        for match in _BOUNDARY.finditer(buf):
            parsed = _parse(buf[start:match.start()])
            raw = buf[start:match.end()]
            start = match.end()
            out.append((raw, *parsed) if parsed is not None else (raw, None, ""))
        self._tail = buf[start:]
        return out

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet complete."""
        return self._tail


def _parse(block: bytes) -> tuple[str | None, str] | None:
    name: str | None = None
    data: list[str] = []
    for line in block.decode("utf-8", errors="replace").splitlines():
        if not line or line.startswith(":"):
            continue
        key, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if key == "data":
            data.append(value)
        elif key == "event":
            name = value
    if name is None and not data:
        return None
    return name, "\n".join(data)
