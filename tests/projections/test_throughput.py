"""What the runtime does for throughput changes nothing a view shows.

The metrics view writes each counters row once per batch (its upserts summed), and a
projector that is behind raises CPython's GC thresholds until it has caught up.
"""

from __future__ import annotations

import gc
import random
import sqlite3
from pathlib import Path

from tether.bus import FeedMessage
from tether.projections import Item, MetricsView, ViewStore
from tether.projections._runner import _behind, _catching_up
from tether.schemas import Event, LlmCallCompleted, Usage

from ._runs import T0
from .test_metrics import history


def rows(db: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    return sorted(db.execute(f'SELECT * FROM "{table}"').fetchall(), key=repr)


def test_counters_written_once_per_batch_equal_one_write_per_event(tmp_path: Path) -> None:
    events: list[Event] = history() * 3  # each event three times, under three sequences
    random.Random(7).shuffle(events)
    items = [Item(seq, e) for seq, e in enumerate(events, start=1)]
    view = MetricsView()

    one_batch = ViewStore(view, tmp_path / "batch.db")
    one_batch.apply_batch(items)
    by_event = ViewStore(view, tmp_path / "by-event.db")
    for item in items:  # a batch of one: nothing to combine
        by_event.apply_batch([item])

    assert rows(one_batch.db, "counters") == rows(by_event.db, "counters")
    assert rows(one_batch.db, "samples") == rows(by_event.db, "samples")
    assert one_batch.checksum() == by_event.checksum()

    ops = [op for item in items for op in view.apply(item.event, item.seq)]  # type: ignore[arg-type]
    folded, refused = view.fold([(item.seq, item.event) for item in items])  # type: ignore[misc]
    assert refused == []
    counters = [op for op in folded if op.table == "counters"]
    assert len({(o.values["bucket"], o.values["dim_kind"], o.values["dim"])  # type: ignore[union-attr]
                for o in counters}) == len(counters)  # one upsert per row
    assert [op for op in folded if op.table == "samples"] == [op for op in ops if op.table == "samples"]


def test_counts_that_are_not_integers_keep_their_place(tmp_path: Path) -> None:
    """Hand-built events can carry float counts: their additions keep the order of the log."""
    def completed(tokens: float, at: int) -> Event:
        usage = Usage.model_construct(input_tokens=tokens, output_tokens=0, cached_input_tokens=0,
                                      cache_write_tokens=0, reasoning_tokens=0)
        data = LlmCallCompleted.model_construct(call_id=f"c{at}", provider="p", model="m", usage=usage,
                                                attempt=1, latency_ms=None, ttft_ms=None)
        return Event.of(LlmCallCompleted(call_id=f"c{at}", provider="p", model="m"), time=T0).model_copy(
            update={"data": data})

    events = [completed(t, i) for i, t in enumerate((1, 2**53, 0.5, 1, 0.25, 3), start=1)]
    items = [Item(seq, e) for seq, e in enumerate(events, start=1)]
    view = MetricsView()
    folded, _ = view.fold([(item.seq, item.event) for item in items])  # type: ignore[misc]
    model_rows = [op.values["input_tokens"] for op in folded  # type: ignore[union-attr]
                  if op.table == "counters" and op.values["dim_kind"] == "model"]
    assert model_rows == [1 + 2**53, 0.5, 1, 0.25, 3]
    one_batch = ViewStore(view, tmp_path / "batch.db")
    one_batch.apply_batch(items)
    by_event = ViewStore(view, tmp_path / "by-event.db")
    for item in items:
        by_event.apply_batch([item])
    assert rows(one_batch.db, "counters") == rows(by_event.db, "counters")


def test_gc_thresholds_are_raised_while_behind_and_restored_after() -> None:
    before = gc.get_threshold()
    a, b = object(), object()
    try:
        _catching_up(a, True)
        raised = gc.get_threshold()
        assert raised[0] >= 50_000 and raised[1] >= 50 and raised[2] >= 1000  # young and old collections rarer
        _catching_up(b, True)
        _catching_up(a, False)
        assert gc.get_threshold() == raised  # b is still behind
        _catching_up(b, False)
        assert gc.get_threshold() == before
        _catching_up(b, False)  # twice: nothing
        assert gc.get_threshold() == before
    finally:
        _catching_up(a, False)
        _catching_up(b, False)
        gc.set_threshold(*before)


def test_behind_is_told_by_what_waits_on_the_server_not_by_one_partial_fetch() -> None:
    def fetched(n: int, waiting: int) -> list[FeedMessage]:
        return [FeedMessage("tether.evt.a.r.llm.completed.c", None, b"{}", seq, 0.0, waiting + n - seq)
                for seq in range(1, n + 1)]

    assert _behind(fetched(1000, 5000), 1000) is True  # a full batch
    assert _behind(fetched(300, 5000), 1000) is True  # a partial one, with more than a batch waiting
    assert _behind(fetched(300, 200), 1000) is None  # a partial one, some waiting: no change either way
    assert _behind(fetched(300, 0), 1000) is False  # the last message is the head
    assert _behind([], 1000) is False
