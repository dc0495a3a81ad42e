"""Hand-built events of runs for the traces and cost views, folded in memory in any order."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices.data
from genai_prices.types import ModelPrice

from tether.projections import Item, Projection, ViewStore
from tether.schemas import Event, Payload, Usage

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


class Run:
    """Events of one run, each ``at`` seconds after T0."""

    def __init__(self, run_id: str | None = "r1", agent: str | None = "bot", *, traceparent: str | None = None,
                 tenant: str | None = None) -> None:
        self.run_id = run_id
        self.agent = agent
        self.traceparent = traceparent
        self.tenant = tenant

    def __call__(self, payload: Payload, at: float, **extra: Any) -> Event:
        options: dict[str, Any] = {"runid": self.run_id, "agentid": self.agent, "traceparent": self.traceparent,
                                   "time": T0 + timedelta(seconds=at),
                                   "extensions": {"tenant": self.tenant} if self.tenant else None}
        return Event.of(payload, **{**options, **extra})


def fold(view: Projection, events: Sequence[Event], *, seqs: Sequence[int] | None = None) -> ViewStore:
    """An in-memory store with ``events`` applied in this order as one batch (sequence i+1 unless given)."""
    store = ViewStore(view, Path(":memory:"))
    store.apply_batch([Item(seq, e) for seq, e in zip(seqs or range(1, len(events) + 1), events, strict=True)])
    assert store.failed_count() == 0, store.db.execute("SELECT * FROM _failed").fetchall()
    return store


def table(db: sqlite3.Connection, name: str) -> list[tuple[Any, ...]]:
    return sorted(db.execute(f'SELECT * FROM "{name}"').fetchall(), key=repr)


def republished(event: Event) -> Event:
    """The same event sent again under a new id, as a producer retrying after the dedupe window would."""
    return Event.of(event.data, runid=event.runid, agentid=event.agentid, traceparent=event.traceparent,
                    time=event.time, extensions=event.extensions or None)


def by_hand(provider: str, model: str, usage: Usage) -> float:
    """What ``usage`` costs, from the model's per-million-token rates in genai-prices' data.

    Uncached input at the input rate, cache reads and cache writes at theirs, output
    (reasoning included) at the output rate: each token once.
    """
    [entry] = [p for p in genai_prices.data.providers if p.id == provider]
    [info] = [m for m in entry.models if m.id == model]
    prices = info.prices
    assert isinstance(prices, ModelPrice), f"{provider}:{model} has date-dependent prices; pick another model"
    parts = {"input_mtok": usage.input_tokens - usage.cached_input_tokens - usage.cache_write_tokens,
             "cache_read_mtok": usage.cached_input_tokens, "cache_write_mtok": usage.cache_write_tokens,
             "output_mtok": usage.output_tokens}
    total = Decimal(0)
    for rate_name, tokens in parts.items():
        if tokens:
            rate = getattr(prices, rate_name, None)
            assert isinstance(rate, Decimal), f"{provider}:{model} {rate_name} is {rate!r}, not a flat rate"
            total += rate * tokens
    return float(total / 1_000_000)
