"""The one error family for events that do not fit the catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["EventError", "InvalidEvent", "UnknownEventType"]


class EventError(ValueError):
    """An event that tether refuses: unknown type, bad payload or bad envelope.

    Catch this one class to handle every refusal; the subclasses say which it was.
    """

    def __init__(self, message: str, *, event_type: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type


class UnknownEventType(EventError):
    """The ``type`` attribute names no event in tether's catalogue."""

    def __init__(self, event_type: str, known: Sequence[str] = ()) -> None:
        hint = ""
        if known:
            prefix = event_type.rsplit(".", 1)[0]
            near = [k for k in known if k.startswith(prefix)] or list(known)
            hint = f"; known types include {', '.join(sorted(near)[:6])}"
        super().__init__(
            f"unknown event type {event_type!r}{hint} (run `tether schemas export DIR` "
            "for the full catalogue)",
            event_type=event_type,
        )


class InvalidEvent(EventError):
    """The envelope or the payload does not validate against its schema."""

    def __init__(
        self,
        event_type: str | None,
        problems: Sequence[dict[str, Any]],
        *,
        what: str = "payload",
    ) -> None:
        self.problems = [dict(p) for p in problems]
        lines = []
        for p in self.problems[:10]:
            loc = ".".join(str(x) for x in p.get("loc", ())) or "(root)"
            lines.append(f"{loc}: {p.get('msg', 'invalid')}")
        more = f" (+{len(self.problems) - 10} more)" if len(self.problems) > 10 else ""
        label = f"{event_type} " if event_type else ""
        super().__init__(
            f"invalid {label}{what}: " + "; ".join(lines) + more, event_type=event_type
        )
