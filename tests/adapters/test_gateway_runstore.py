"""The gateways' shared run book (``RunStore.change``) while its bucket has no leader to answer: a cluster node
restarting. Unit tests on a KV double; tests/cluster/test_chaos.py runs the gateway through a real election."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoStreamResponseError

from tether.adapters.gateway import _runstore
from tether.adapters.gateway._runbook import Followed
from tether.adapters.gateway._runstore import RunStore


@dataclass
class Entry:
    value: bytes
    revision: int


class ElectingKV:
    """A bucket whose next ``gets`` reads and next ``writes`` writes get no answer; ``lands`` says whether an
    unanswered write was stored all the same (its ack lost)."""

    def __init__(self, *, gets: int = 0, writes: int = 0, lands: bool = False) -> None:
        self.entries: dict[str, Entry] = {}
        self.seq = 0
        self.gets, self.writes, self.lands = gets, writes, lands
        self.stored = 0
        self.stale_until = 0.0  # until then, reads answer ``stale`` (a replica lagging behind the writes)
        self.stale: dict[str, Entry] = {}

    async def get(self, key: str) -> Entry:
        if self.gets:
            self.gets -= 1
            raise NoStreamResponseError
        entries = self.stale if time.monotonic() < self.stale_until else self.entries
        if key not in entries:
            raise KeyNotFoundError
        return entries[key]


    def _store(self, key: str, value: bytes) -> int:
        self.seq += 1
        self.stored += 1
        self.entries[key] = Entry(value, self.seq)
        return self.seq

    async def create(self, key: str, value: bytes) -> int:
        return await self.update(key, value, last=0)

    async def update(self, key: str, value: bytes, last: int | None = None) -> int:
        held = self.entries.get(key)
        if (held.revision if held else 0) != last:
            raise KeyWrongLastSequenceError
        if self.writes:
            self.writes -= 1
            if self.lands:
                self._store(key, value)
            raise NoStreamResponseError
        return self._store(key, value)


def store_on(kv: ElectingKV) -> RunStore:
    store = RunStore(bus=None, idle_s=60.0)  # type: ignore[arg-type]  # the bus only opens the bucket
    store.kv = kv  # type: ignore[assignment]
    return store


def one_more_end(run: Followed | None) -> tuple[Followed | None, list[Any]]:
    """A decision that must be applied once: the run ends once more."""
    if run is None:
        run = Followed(run_id="r1", agent="a", trace_id="t" * 32, traceparent=None, first_at=1.0, last_at=1.0)
    run.ends += 1
    return run, [f"ended {run.ends}"]


def ends(kv: ElectingKV) -> int:
    return Followed.from_json(kv.entries[_runstore.run_key("r1")].value).ends


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runstore, "TRANSIENT_FOR_S", 5.0)


@pytest.mark.anyio
@pytest.mark.parametrize("lands", [False, True], ids=["write-lost", "ack-lost"])
async def test_an_unanswered_write_is_decided_once(lands: bool) -> None:
    kv = ElectingKV(lands=lands)
    store = store_on(kv)
    assert [str(out) for out in await store.change("r1", one_more_end)] == ["ended 1"]
    kv.writes = 2  # the next two writes get no answer
    assert [str(out) for out in await store.change("r1", one_more_end)] == ["ended 2"]
    assert ends(kv) == 2, "applied once, whether the unanswered write was stored or not"
    assert kv.stored == 2, "no write after the one that landed"


@pytest.mark.anyio
async def test_reads_are_asked_again_until_the_bucket_answers() -> None:
    kv = ElectingKV()
    store = store_on(kv)
    await store.change("r1", one_more_end)
    store.known.clear()  # decide on a fresh read
    kv.gets = 3
    assert [str(out) for out in await store.change("r1", one_more_end)] == ["ended 2"]
    assert ends(kv) == 2


@pytest.mark.anyio
async def test_conflicts_while_reads_lag_are_asked_again_until_they_catch_up() -> None:
    """A replica catching up after a restart answers an old revision for a while: every write on it conflicts.
    The change is asked again until reads catch up (up to TRANSIENT_FOR_S), not given up after a second."""
    kv = ElectingKV()
    store = store_on(kv)
    await store.change("r1", one_more_end)
    await store.change("r1", one_more_end)  # written: the reads' old revision below is behind it
    kv.stale = {key: Entry(entry.value, entry.revision - 1) for key, entry in kv.entries.items()}
    kv.stale_until = time.monotonic() + 2.0
    store.known.clear()  # decide on a fresh read
    started = time.monotonic()
    assert [str(out) for out in await store.change("r1", one_more_end)] == ["ended 3"]
    assert time.monotonic() - started >= 1.9, "it waited for the reads to catch up"
    assert ends(kv) == 3


@pytest.mark.anyio
async def test_conflicts_that_never_clear_are_an_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runstore, "TRANSIENT_FOR_S", 0.5)
    kv = ElectingKV()
    store = store_on(kv)
    await store.change("r1", one_more_end)
    kv.stale = {key: Entry(entry.value, entry.revision - 1) for key, entry in kv.entries.items()}
    kv.stale_until = time.monotonic() + 3600
    store.known.clear()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="kept conflicting"):
        await store.change("r1", one_more_end)
    assert time.monotonic() - started < 5.0


@pytest.mark.anyio
async def test_a_bucket_that_never_answers_is_an_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runstore, "TRANSIENT_FOR_S", 0.3)
    kv = ElectingKV()
    store = store_on(kv)
    kv.gets = 10_000
    with pytest.raises(NoStreamResponseError):
        await store.change("r1", one_more_end)
