"""UUIDv7 ids: RFC 9562 layout, monotonic within the process, time recoverable."""

from __future__ import annotations

import os
import re
import types
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from tether.schemas import _ids, uuid7, uuid7_time

CANONICAL = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def test_layout_is_version_7_rfc_variant() -> None:
    for _ in range(200):
        value = uuid7()
        assert CANONICAL.match(value), value
        u = uuid.UUID(value)
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert (u.int >> 76) & 0xF == 7
        assert (u.int >> 62) & 0b11 == 0b10
        assert str(u) == value  # canonical, lower-case form


def test_many_ids_in_a_tight_loop_are_unique_and_sorted() -> None:
    ids = [uuid7() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    # string order and the 128-bit integer order agree (fixed width, lower-case hex)
    ints = [uuid.UUID(i).int for i in ids]
    assert ints == sorted(ints)


def test_random_bits_differ_between_ids() -> None:
    tails = {uuid7()[-12:] for _ in range(1000)}
    assert len(tails) > 990


def _frozen_clock(monkeypatch: pytest.MonkeyPatch, ns: list[int]) -> None:
    monkeypatch.setattr(_ids, "time", types.SimpleNamespace(time_ns=lambda: ns[0]))
    monkeypatch.setattr(_ids, "_last_ms", 0)
    monkeypatch.setattr(_ids, "_counter", 0)


def test_counter_overflow_in_one_millisecond_borrows_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    start_ms = 1_800_000_000_000
    _frozen_clock(monkeypatch, [start_ms * 1_000_000])
    ids = [uuid7() for _ in range(10_000)]  # more than the 12-bit counter holds
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps[0] == start_ms
    assert stamps[-1] > start_ms  # had to borrow
    assert stamps[-1] <= start_ms + 4  # ...but only a few milliseconds
    assert all(uuid.UUID(i).version == 7 for i in ids)


def test_clock_going_backwards_keeps_order(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1_800_000_000_000 * 1_000_000]
    _frozen_clock(monkeypatch, now)
    first = [uuid7() for _ in range(10)]
    now[0] -= 5_000 * 1_000_000  # NTP steps the clock back 5 s
    later = [uuid7() for _ in range(10)]
    assert first + later == sorted(first + later)
    assert len(set(first + later)) == 20


def test_uuid7_time_round_trip_is_close_to_now() -> None:
    before = datetime.now(UTC)
    value = uuid7()
    after = datetime.now(UTC)
    when = uuid7_time(value)
    assert when.tzinfo is not None
    assert when.utcoffset() == timedelta(0)
    # millisecond precision: the stamp is `before` truncated, at worst
    assert before - timedelta(milliseconds=1) <= when <= after


def test_uuid7_time_reads_the_stamp_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    ms = 1_773_500_966_535  # 2026-03-14T15:09:26.535Z
    _frozen_clock(monkeypatch, [ms * 1_000_000 + 999_999])
    assert uuid7_time(uuid7()) == datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [str(uuid.uuid4()), str(uuid.uuid1()), "00000000-0000-0000-0000-000000000000"],
    ids=["v4", "v1", "nil"],  # fixed ids: every xdist worker must collect the same tests
)
def test_uuid7_time_rejects_other_versions(value: str) -> None:
    with pytest.raises(ValueError, match="not a UUIDv7"):
        uuid7_time(value)


def test_uuid7_time_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        uuid7_time("not-a-uuid")


def test_ids_across_pool_refills_are_canonical_uuid7_with_random_variant_bits() -> None:
    ids = [uuid7() for _ in range(3 * _ids._POOL + 7)]
    for value in ids:
        parsed = uuid.UUID(value)
        assert (parsed.version, parsed.variant, str(parsed)) == (7, uuid.RFC_4122, value)
    assert {value[19] for value in ids} == set("89ab")  # the variant's two bits, then two random ones
    assert len({value[20:] for value in ids}) == len(ids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_draws_its_own_random_digits() -> None:
    uuid7()  # the pool is drawn
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.write(write, ",".join(uuid7() for _ in range(4)).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 4096).decode().split(",")
    os.waitpid(pid, 0)
    os.close(read)
    parent = [uuid7() for _ in range(4)]
    assert not {c[19:] for c in child} & {p[19:] for p in parent}
