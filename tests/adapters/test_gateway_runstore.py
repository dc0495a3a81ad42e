"""The gateways' shared run book (``RunStore.change``) while its bucket has no leader to answer: a cluster node
restarting. Unit tests on a KV double; tests/cluster/test_chaos.py runs the gateway through a real election."""

from __future__ import annotations

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

    async def get(self, key: str) -> Entry:
        if self.gets:
            self.gets -= 1
            raise NoStreamResponseError
        if key not in self.entries:
            raise KeyNotFoundError
        return self.entries[key]

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
async def test_a_bucket_that_never_answers_is_an_error_in_bounded_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_runstore, "TRANSIENT_FOR_S", 0.3)
    kv = ElectingKV()
    store = store_on(kv)
    kv.gets = 10_000
    with pytest.raises(NoStreamResponseError):
        await store.change("r1", one_more_end)
