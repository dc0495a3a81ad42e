"""``until_answered``: a read asked again while a cluster elects a leader, bounded; and the durable caller's read of a
completion from the log, which uses it (it failed with ``nats: timeout`` in tests/cluster/test_chaos.py's rolling
restart)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import nats.errors
import nats.js.errors
import pytest

from tether.bus import until_answered
from tether.middleware import DurableCalls
from tether.schemas import Event, LlmCallCompleted


class Electing:
    """Answers ``value`` after ``misses`` transient failures (each a different kind a node restart gives)."""

    def __init__(self, misses: int, value: Any) -> None:
        self.misses, self.value, self.asked = misses, value, 0

    async def __call__(self, *_: Any) -> Any:
        self.asked += 1
        if self.asked <= self.misses:
            raise (nats.errors.TimeoutError, nats.js.errors.NoStreamResponseError, nats.errors.NoRespondersError)[
                self.asked % 3]()
        return self.value


@pytest.mark.anyio
async def test_a_read_is_asked_again_until_answered() -> None:
    ask = Electing(4, "answer")
    assert await until_answered(ask, for_s=10.0) == "answer"
    assert ask.asked == 5


@pytest.mark.anyio
async def test_it_gives_up_after_its_time_with_the_last_error() -> None:
    ask = Electing(10_000, "never")
    with pytest.raises(nats.errors.Error):
        await until_answered(ask, for_s=0.3)
    assert 2 <= ask.asked < 20


@pytest.mark.anyio
async def test_a_refusal_is_raised_at_once() -> None:
    async def refused() -> None:
        raise nats.js.errors.NotFoundError

    with pytest.raises(nats.js.errors.NotFoundError):
        await until_answered(refused, for_s=10.0)


@pytest.mark.anyio
async def test_a_durable_callers_completion_is_read_from_the_log_through_an_election() -> None:
    completed = Event.of(LlmCallCompleted(call_id="c1", provider="openai", model="m", response={"ok": True}),
                         runid="r1", agentid="a")
    stored = SimpleNamespace(headers={"h": "1"}, data=b"{}")
    get_msg = Electing(3, stored)

    async def read(headers: Any, data: bytes) -> Event:
        assert headers is stored.headers
        return completed

    calls = DurableCalls.__new__(DurableCalls)  # only its bus is read here
    calls.bus = SimpleNamespace(js=SimpleNamespace(get_msg=get_msg), reader=SimpleNamespace(read=read))  # type: ignore[assignment]
    result = await calls._result({"call_id": "c1", "state": "completed", "seq": 42})
    assert result.response == {"ok": True} and result.event_seq == 42
    assert get_msg.asked == 4
