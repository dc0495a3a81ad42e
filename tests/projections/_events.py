"""Hand-built events for the errors and metrics views, folded in any order, without a server."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tether.projections import Item, Projection, ViewStore
from tether.schemas import Event, Payload

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ev(payload: Payload, t: float = 0.0, *, run: str | None = "run-1", agent: str | None = "bot",
       id: str | None = None) -> Event:
    return Event.of(payload, time=at(t), runid=run, agentid=agent, id=id)


def fold(view: Projection, events: Sequence[Event], path: Path, *, seqs: Sequence[int] | None = None) -> ViewStore:
    """A fresh store with ``events`` applied in the given order as one batch (sequence i+1 unless given)."""
    store = ViewStore(view, path)
    store.apply_batch([Item(seq, e) for seq, e in zip(seqs or range(1, len(events) + 1), events, strict=True)])
    assert store.failed_count() == 0, store.db.execute("SELECT * FROM _failed").fetchall()
    return store
