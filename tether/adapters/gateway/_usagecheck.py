"""The agent's own count of a run's tokens beside what tether recorded for its calls.

An agent that counts its usage (the OpenClaw plugin's ``llm_output``) posts it as
``tether.llm.usage.reported``; the gateway sums the run's completed calls and says which counts
differ. Pure: usages in, words out; the gateway reads the log.
"""

from __future__ import annotations

from collections.abc import Iterable

from tether.schemas import Event, LlmCallCompleted, Usage

__all__ = ["COMPARED", "mismatch", "recorded_usage"]

COMPARED = ("input_tokens", "output_tokens", "cached_input_tokens")
"""The counts compared (cache writes and reasoning tokens are not reported alike by every API)."""


def recorded_usage(events: Iterable[Event]) -> tuple[Usage, int]:
    """The summed usage of the completed calls among ``events``, and how many there were."""
    total = {name: 0 for name in COMPARED}
    calls = 0
    for event in events:
        data = event.data
        if isinstance(data, LlmCallCompleted):
            calls += 1
            for name in COMPARED:
                total[name] += getattr(data.usage, name)
    return Usage(**total), calls


def mismatch(reported: Usage, recorded: Usage, reporter: str | None) -> tuple[str, ...]:
    """One line per count the agent and tether do not agree on (empty: they agree)."""
    who = reporter or "the agent"
    return tuple(f"{name}: {who} counted {getattr(reported, name)}, tether recorded {getattr(recorded, name)}"
                 for name in COMPARED if getattr(reported, name) != getattr(recorded, name))
