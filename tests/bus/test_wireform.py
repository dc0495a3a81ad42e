"""The one-pass encoder writes exactly the message tether wrote before it (``_old_wire``, frozen): the
subject, the headers in order, the header block and the body, for every catalogue type and for every
kind of envelope (percent-encoded values, extensions, claim checks, times in other zones)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from tests._samples import SAMPLES, sample_event
from tether.bus._headers import HeaderBlock
from tether.bus._wireform import encode_message
from tether.schemas import Event, InvalidEvent, ToolCallCompleted

from ._old_wire import old_block, old_message


def assert_as_before(event: Event, *, block: bool = True) -> None:
    """``event``'s message as before; ``block``: its header block written beforehand (else nats-py writes it)."""
    subject, headers, body = encode_message(event)
    old_subject, old_headers, old_written, old_body = old_message(event)
    assert subject == old_subject
    assert list(headers.items()) == list(old_headers.items())
    assert body == old_body
    assert (type(headers) is HeaderBlock) is block, f"block written beforehand for {event!r}: {not block}"
    assert (headers.block if type(headers) is HeaderBlock else old_block(headers)) == old_written


@pytest.mark.parametrize("event_type", sorted(SAMPLES))
def test_every_catalogue_type_is_written_as_before(event_type: str) -> None:
    full = sample_event(event_type)
    bare = Event.of(SAMPLES[event_type])
    for event in (full, bare, sample_event(event_type), Event.of(SAMPLES[event_type])):  # the templates' second use too
        assert_as_before(event)


def tool(i: int = 0) -> ToolCallCompleted:
    return ToolCallCompleted(call_id=f"c{i}", tool="web search/é", result={"n": i})


ENVELOPES: list[dict[str, object]] = [
    {},
    {"runid": "run-1", "agentid": "bot"},
    {"runid": "run 2 with spaces", "agentid": "bot"},  # percent-encoded: written the long way
    {"runid": "run-1", "agentid": "b\u00f6t"},
    {"subject": "ticket/1"},
    {"subject": "a \"quoted\" 100% subject"},
    {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "extensions": {"tenant": "t1"}},
    {"extensions": {"tenant": "t 1", "region": "eu1"}},
    {"extensions": {"tenant": ""}},  # an empty value: nats-py writes the block
    {"source": "urn:tether:host with space"},
    {"id": "an id with spaces"},
    {"id": "call-1:requested"},
    {"time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)},  # no fraction of a second
    {"time": datetime(2026, 1, 2, 3, 4, 5, 7, tzinfo=timezone(timedelta(hours=2)))},
    {"time": datetime(2026, 1, 2, 3, 4, 5, 7)},
]


@pytest.mark.parametrize("envelope", ENVELOPES, ids=[str(i) for i in range(len(ENVELOPES))])
def test_every_kind_of_envelope_is_written_as_before(envelope: dict[str, object]) -> None:
    for i in range(3):
        assert_as_before(Event.of(tool(i), **envelope), block=envelope != {"extensions": {"tenant": ""}})  # type: ignore[arg-type]


def test_claim_checked_subject_and_wire_read_events_are_written_as_before() -> None:
    event = Event.of(tool(), runid="run-1", agentid="bot")
    assert_as_before(event.with_dataref("nats-obj://tether-objects/x"))
    assert_as_before(event.model_copy(update={"subject": ""}), block=False)
    assert_as_before(event.model_copy(update={"datacontenttype": "application/json; charset=utf-8"}))
    read = Event.from_wire(event.attributes(), event.data_json(), json_text=True)
    assert_as_before(read)
    for batch in (Event.of_many([tool(i) for i in range(4)], runid="r", agentid="a"),):
        for e in batch:
            assert_as_before(e)


def test_a_template_is_one_envelopes_and_keeps_each_events_own_values() -> None:
    first, second = (Event.of(tool(i), runid="run-1", agentid="bot") for i in range(2))
    other = Event.of(tool(2), runid="run-2", agentid="bot")
    messages = [encode_message(e) for e in (first, second, other)]
    assert [h["ce-id"] for _, h, _ in messages] == [first.id, second.id, other.id]
    assert [h["Nats-Msg-Id"] for _, h, _ in messages] == [first.id, second.id, other.id]
    assert [h["ce-runid"] for _, h, _ in messages] == ["run-1", "run-1", "run-2"]
    assert messages[0][1] is not messages[1][1]
    assert messages[1][1]["ce-time"] == second.time_text()


def test_event_of_still_refuses_each_bad_envelope_after_good_ones() -> None:
    good = "00-" + "c" * 32 + "-" + "d" * 16 + "-01"
    Event.of(tool(), traceparent=good, runid="r")
    Event.of(tool(), traceparent=good, runid="r")  # seen: not matched again
    with pytest.raises(InvalidEvent, match="not a W3C traceparent"):
        Event.of(tool(), traceparent=good.upper())
    with pytest.raises(InvalidEvent, match="runid: must be a non-empty string"):
        Event.of(tool(), traceparent=good, runid="")
    with pytest.raises(InvalidEvent, match="agentid: must be a non-empty string"):
        Event.of(tool(), agentid=7)  # type: ignore[arg-type]
    with pytest.raises(InvalidEvent) as both:
        Event.of(tool(), runid="", source="")
    assert [p["loc"] for p in both.value.problems] == [("runid",), ("source",)]
    with pytest.raises(InvalidEvent, match="not a free extension name"):
        Event.of(tool(), extensions={"Tenant": "x"})
    with pytest.raises(InvalidEvent, match="expected a catalogue payload"):
        Event.of({"call_id": "c"})  # type: ignore[arg-type]


def test_one_template_serves_every_run_of_an_event_type() -> None:
    from tether.bus import _wireform

    def run(k: int) -> list[Event]:
        trace = f"00-{k:032x}-{k + 1:016x}-01"
        envelope: dict[str, Any] = {"runid": f"run-{k}", "agentid": f"agent-{k % 3}", "traceparent": trace}
        if k % 4 == 1:
            envelope.pop("traceparent")
        elif k % 4 == 2:
            envelope = {"agentid": "bot"}
        return [Event.of(tool(k), **envelope), Event.of(SAMPLES["tether.run.started"], **envelope),
                Event.of(SAMPLES["tether.llm.call.completed"], **envelope)]

    for event in run(0):
        assert_as_before(event)
    templates = len(_wireform._TEMPLATES)
    for k in range(1, 40):
        for event in run(k):
            assert_as_before(event)
    assert len(_wireform._TEMPLATES) == templates, "a template was made per run"


def test_event_of_keeps_checking_traceparents_once_it_has_seen_thousands() -> None:
    for k in range(4100):  # more than it keeps
        assert Event.of(tool(), traceparent=f"00-{k + 1:032x}-{k + 1:016x}-01").traceparent is not None
    with pytest.raises(InvalidEvent, match="not a W3C traceparent"):
        Event.of(tool(), traceparent=f"00-{1:032x}-{1:016x}-1")
