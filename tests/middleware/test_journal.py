"""The journal without I/O: events folded into calls, calls of a resumed run matched in order."""

from __future__ import annotations

from typing import Any

import pytest

from tether.middleware import Journal, request_digests, request_fingerprint, request_hash, tool_hash
from tether.schemas import (
    CallReplayed,
    Event,
    LlmCallCompleted,
    LlmCallFailed,
    LlmCallRequested,
    Payload,
    RunStarted,
    ToolCallCompleted,
    ToolCallRequested,
)


def body(n: int, **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": f"q{n}"}], **extra}


def h(n: int) -> str:
    return request_hash(body(n))


def ev(payload: Payload) -> Event:
    return Event.of(payload, runid="r")


def asked(call: str, n: int) -> Event:
    return ev(LlmCallRequested(call_id=call, provider="openai", model="m", request=body(n), request_hash=h(n)))


def answered(call: str, n: int) -> Event:
    return ev(LlmCallCompleted(call_id=call, provider="openai", model="m", response={"a": n}))


def sequential(*ns: int) -> list[Event]:
    return [e for n in ns for e in (asked(f"c{n}", n), answered(f"c{n}", n))]


def test_request_hash_leaves_out_volatile_keys_only() -> None:
    assert request_hash(body(1)) == request_hash(body(1, user="u", stream_options={"include_usage": True},
                                                     metadata={"k": "v"}, store=True))
    assert request_hash(body(1)) != request_hash(body(1, temperature=0))
    assert request_hash(body(1)) != request_hash(body(1, stream=True)), "a stream replays only as a stream"
    assert request_hash(body(1)) != request_hash(body(1), operation="responses")
    assert request_hash({"b": 1, "a": [1, "é"]}) == request_hash({"a": [1, "é"], "b": 1}), "key order"
    assert request_hash(b"not json") == request_hash("not json")
    assert tool_hash("t", {"x": 1}) != tool_hash("t", {"x": 2})


def test_matches_in_order_and_replays() -> None:
    cursor = Journal.of(sequential(0, 1, 2)).cursor()
    looks = [cursor.match("llm", h(n)) for n in range(4)]
    assert [look.replay for look in looks] == [True, True, True, False]
    assert [look.position for look in looks] == [0, 1, 2, 3]
    assert [look.entry.response if look.entry else None for look in looks] == [{"a": 0}, {"a": 1}, {"a": 2}, None]
    assert cursor.replayed == 3 and cursor.diverged == ("llm", 3)


def test_first_mismatch_ends_replay_for_good() -> None:
    cursor = Journal.of(sequential(0, 1, 2)).cursor()
    assert cursor.match("llm", h(0)).replay
    assert not cursor.match("llm", h(9)).replay
    assert not cursor.match("llm", h(2)).replay, "after the first mismatch, everything runs live"
    assert not cursor.match("tool", tool_hash("t", 1)).replay
    assert cursor.diverged == ("llm", 1)


def test_out_of_order_sequential_calls_do_not_match() -> None:
    cursor = Journal.of(sequential(0, 1)).cursor()
    assert not cursor.match("llm", h(1)).replay


def test_calls_in_flight_together_match_in_any_order() -> None:
    events = [asked("a", 0), asked("b", 1), answered("b", 1), answered("a", 0), *sequential(2)]
    cursor = Journal.of(events).cursor()
    assert [cursor.match("llm", h(n)).replay for n in (1, 0, 2)] == [True, True, True]


def test_failed_and_unfinished_calls_run_live_without_ending_replay() -> None:
    failed = ev(LlmCallFailed(call_id="c1", provider="openai", model="m", attempts=3,
                              error={"type": "RateLimitError"}))  # type: ignore[arg-type]
    journal = Journal.of([*sequential(0), asked("c1", 1), failed, *sequential(2), asked("c3", 3)])
    assert [e.state for e in journal.entries] == ["completed", "failed", "completed", "unfinished"]
    assert [e.call_id for e in journal.unfinished] == ["c3"]
    cursor = journal.cursor()
    looks = [cursor.match("llm", h(n)) for n in range(4)]
    assert [look.replay for look in looks] == [True, False, True, False]
    assert looks[1].entry is not None and looks[1].entry.state == "failed"
    assert cursor.diverged is None


def test_llm_and_tool_calls_have_positions_of_their_own() -> None:
    tool = [ev(ToolCallRequested(call_id="t0", tool="send", arguments={"to": "x"})),
            ev(ToolCallCompleted(call_id="t0", tool="send", result="sent"))]
    cursor = Journal.of([*sequential(0), *tool, *sequential(1)]).cursor()
    assert cursor.match("llm", h(0)).replay
    assert cursor.match("llm", h(1)).replay, "an LLM call is not held up by a tool call nobody asked the journal for"
    look = cursor.match("tool", tool_hash("send", {"to": "x"}))
    assert look.replay and look.position == 0 and look.entry is not None and look.entry.response == "sent"


def test_a_stream_without_its_events_is_not_replayable() -> None:
    events = [ev(LlmCallRequested(call_id="s", provider="openai", model="m", stream=True, request_hash=h(0))),
              answered("s", 0)]
    assert not Journal.of(events).cursor().match("llm", h(0)).replay


def replayed(call: str, original: str, n: int) -> Event:
    return ev(CallReplayed(call_id=call, call_kind="llm", via="journal", original_call_id=original,
                           original_event_id=f"e-{original}", response={"a": n}))


def test_an_attempt_that_died_early_keeps_the_rest_of_the_one_before() -> None:
    resumed = ev(RunStarted(resumed=True))
    first = sequential(0, 1, 2, 3)
    second = [resumed, asked("d0", 0), replayed("d0", "c0", 0), asked("d1", 1)]  # died during its second call
    journal = Journal.of([ev(RunStarted()), *first, *second])
    assert [e.call_id for e in journal.entries] == ["c0", "d1", "c2", "c3"]
    cursor = journal.cursor()
    assert [cursor.match("llm", h(n)).replay for n in range(4)] == [True, False, True, True]
    assert journal.entries[0].event_id == "e-c0", "a replayed call links the call that paid"


def test_an_attempt_that_diverged_replaces_the_one_before() -> None:
    resumed = ev(RunStarted(resumed=True))
    journal = Journal.of([*sequential(0, 1, 2), resumed, asked("d0", 0), replayed("d0", "c0", 0),
                          asked("d9", 9), answered("d9", 9)])
    cursor = journal.cursor()
    assert [cursor.match("llm", h(n)).replay for n in (0, 9)] == [True, True]
    assert not cursor.match("llm", h(2)).replay


def _random_json(rng: Any, depth: int = 0) -> Any:
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.choice([None, True, False])
    if kind == 1:
        return rng.randint(-10**12, 10**12)
    if kind == 2:
        return rng.choice([0.1, -2.5e-8, 1e300, 3.0, 12345.678])
    if kind in (3, 4):
        return "".join(rng.choice('ab "\\/\n\té€😀\x00\u2028<>') for _ in range(rng.randrange(12)))
    if kind in (5, 6):
        return {"".join(rng.choice('kéy "\\') for _ in range(rng.randrange(1, 5))): _random_json(rng, depth + 1)
                for _ in range(rng.randrange(4))}
    return [_random_json(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_request_digests_are_the_hash_and_the_fingerprint_made_apart() -> None:
    """The journal's request hash and the runaway guard's fingerprint, made from one canonical writing
    of each top-level value (the adapters' way), are byte for byte what the two functions make: a
    resumed run matches calls recorded by any earlier tether, and identical calls still count."""
    import random

    rng = random.Random(14)
    volatile = ["stream", "stream_options", "user", "metadata", "store", "safety_identifier", "service_tier"]
    for n in range(2_000):
        body = {rng.choice([*volatile, "model", "messages", "tools", "temperature", "é", "a b", "Z", f"k{n % 7}"]):
                _random_json(rng) for _ in range(rng.randrange(7))}
        operation = rng.choice(["chat", "responses", "messages", "embeddings"])
        assert request_digests(body, operation=operation) == (request_hash(body, operation=operation),
                                                              request_fingerprint(body)), body


def test_canonical_json_is_json_dumps_canonical_writing() -> None:
    """Every hash and fingerprint is made by one C encoder made once; it writes what ``json.dumps`` with the
    canonical options writes (random JSON, values ``default=str`` writes, NaN), and refuses a cycle as it does."""
    import datetime
    import json
    import random

    from tether.middleware._budget import canonical_json

    def dumps(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)

    rng = random.Random(11)
    for _ in range(2_000):
        value = _random_json(rng)
        assert canonical_json(value) == dumps(value), value
    odd = {"when": datetime.date(2026, 12, 7), "nan": float("nan"), "inf": float("-inf"),
           "t": (1, "é"), "s": "\x00\u2028😀"}
    assert canonical_json(odd) == dumps(odd)
    looped: dict[str, Any] = {"a": 1}
    looped["self"] = looped
    with pytest.raises(ValueError, match="Circular reference"):
        canonical_json(looped)


def test_request_and_tool_hashes_are_those_recorded_before() -> None:
    """A resumed run matches the calls an earlier tether recorded: the hashes of a fixed request and tool call
    are the strings tether wrote before the canonical writing was made faster."""
    body = {"model": "gpt-4o-mini", "stream": False, "temperature": 0.5, "user": "u1", "messages": [
        {"role": "user", "content": 'Grüße, "quoted" \\ 😀', "n": [1, 2.5, None, True]}]}
    assert request_hash(body) == "sha256:c8b541013e319d3c399b9d33cbb554241bb50801427e7cbebf16dfdf8768ec2a"
    assert request_fingerprint(body) == "ca92f428f04ed9ca0e4f42295cda4fc45b1c2b1dad6107ba38ccb60afafcfc49"
    assert request_digests(body) == (request_hash(body), request_fingerprint(body))
    assert tool_hash("get_weather", {"city": "Zürich", "days": 3}) == \
        "sha256:e09611b765719e39e51d2b04b610f10e4f6ec0d8f094e16fecd3955b6060cba2"
    assert request_hash(b"not json") == "sha256:7a53be54da7f53d987b46fbfbaf8ea36c19347eabf4f94e02426365c69ce5e51"
