"""What the runtime does for throughput changes nothing a view shows.

The metrics view writes each counters row once per batch (its upserts summed), and a
projector that is behind raises CPython's GC thresholds until it has caught up.
"""

from __future__ import annotations

import gc
import random
import sqlite3
from pathlib import Path

from tether.projections import Item, MetricsView, Upsert, ViewStore
from tether.projections._runner import _catching_up
from tether.projections.metrics import _ADD, _ZERO
from tether.schemas import Event

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
    combined = view.combine(ops)
    counters = [op for op in combined if op.table == "counters"]
    assert len({(o.values["bucket"], o.values["dim_kind"], o.values["dim"])  # type: ignore[union-attr]
                for o in counters}) == len(counters)  # one upsert per row
    assert [op for op in combined if op.table == "samples"] == [op for op in ops if op.table == "samples"]


def test_counters_with_values_that_are_not_integers_are_not_summed() -> None:
    view = MetricsView()
    key = {"bucket": 60, "dim_kind": "model", "dim": "m"}
    ints = Upsert("counters", {**key, **_ZERO, "calls": 1}, _ADD)
    floats = Upsert("counters", {**key, **_ZERO, "calls": 0.5}, _ADD)
    assert view.combine([ints, floats, ints]) == [ints, floats, ints]  # floats: order of additions kept
    assert view.combine([ints, ints]) == [Upsert("counters", {**key, **_ZERO, "calls": 2}, _ADD)]


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
