"""Tool results from the log: inside :func:`recorded_tools`, a ``@tether.tool`` call is answered
with the result its source run recorded for the same tool at the same position (its n-th call
of that tool gets the n-th recorded one) and the function is not called. The call is still
recorded as events, as any other. This is how an evaluation replays a run with one thing
changed (the model, the prompt) while the world (the tools) stays as it was.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["RecordedResult", "RecordedToolError", "RecordedTools", "ReplayMismatch", "current_recorded",
           "recorded_tools"]


class ReplayMismatch(RuntimeError):
    """The replayed run called a tool more often than its source run did: no result is recorded."""


class RecordedToolError(RuntimeError):
    """The source run's call of this tool failed; the replay fails it the same way."""


@dataclass(frozen=True)
class RecordedResult:
    result: Any = None
    error: str | None = None
    """The error type, when the recorded call failed."""


class RecordedTools:
    """Each tool's recorded outcomes, in the order the source run asked for them."""

    def __init__(self, outcomes: Mapping[str, Sequence[RecordedResult]], *, source_run: str | None = None) -> None:
        self._outcomes = {name: list(values) for name, values in outcomes.items()}
        self._used: dict[str, int] = {}
        self.source_run = source_run
        self.replayed = 0

    def take(self, tool: str) -> Any:
        """The next recorded result of ``tool``; raises what the recorded call raised."""
        position = self._used.get(tool, 0)
        recorded = self._outcomes.get(tool, [])
        if position >= len(recorded):
            raise ReplayMismatch(f"replay of run {self.source_run or '?'}: tool {tool!r} is called "
                                 f"{position + 1} time(s) but the source run recorded {len(recorded)}; the replayed "
                                 "agent took another path (its tool call is not in the log)")
        self._used[tool] = position + 1
        self.replayed += 1
        outcome = recorded[position]
        if outcome.error is not None:
            raise RecordedToolError(f"{tool}: the source run's call failed with {outcome.error}")
        return outcome.result


_current: contextvars.ContextVar[RecordedTools | None] = contextvars.ContextVar("tether_recorded_tools", default=None)


def current_recorded() -> RecordedTools | None:
    return _current.get()


@contextlib.contextmanager
def recorded_tools(tools: RecordedTools) -> Iterator[RecordedTools]:
    """Within the block (and tasks started in it), tool calls are answered from ``tools``."""
    token = _current.set(tools)
    try:
        yield tools
    finally:
        _current.reset(token)
