"""decode_block reads a raw header block exactly as parse_headers + decode do, and the
usual event takes a shorter way through Event.from_wire with the same result.

Both shortcuts are checked against the long way on tether's own blocks and on blocks and
attributes mutated at random: the same WireEvent, the same Event, or the same error.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

import pytest

from tests._samples import sample_event
from tether.bus import _binding, decode, decode_block, encode_binary
from tether.bus._binding import validate
from tether.bus._client import parse_headers
from tether.schemas import Event, EventError, catalogue


def block_of(headers: dict[str, str]) -> bytes:
    """The header block as a NATS message carries it after ``NATS/1.0\\r\\n``."""
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"


def tether_blocks() -> list[tuple[bytes, bytes]]:
    out = []
    for event_type in sorted(catalogue()):
        event = sample_event(event_type)
        headers, payload = encode_binary(event)
        out.append((block_of({**headers, "Nats-Msg-Id": event.id}), payload))
        plain = Event.of(event.data)  # no run, agent or traceparent
        headers, payload = encode_binary(plain)
        out.append((block_of(headers), payload))
    return out


def outcome(fn: Callable[[], Any]) -> Any:
    try:
        wire = fn()
    except EventError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("wire", wire.attributes, wire.data, wire.structured)


def the_long_way(block: bytes, payload: bytes) -> Any:
    return outcome(lambda: decode(parse_headers(block) if block else None, payload))


@pytest.mark.parametrize(("block", "payload"), tether_blocks()[:6])
def test_tether_blocks_read_without_the_header_parser(block: bytes, payload: bytes,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    expected = the_long_way(block, payload)
    assert expected[0] == "wire"
    monkeypatch.setattr(_binding, "parse_headers", None)  # the long way would fail now
    assert outcome(lambda: decode_block(block, payload)) == expected


@pytest.mark.parametrize("change", [
    lambda b: b.replace(b"ce-id:", b"CE-Id:"),  # names in another case
    lambda b: b.replace(b"ce-source: ", b"ce-source: caf%C3%A9%20"),  # percent-encoded
    lambda b: b.replace(b"Content-Type: application/json", b"content-type: application/json"),
    lambda b: b.replace(b"Content-Type: application/json", b"Content-Type: application/cloudevents+json"),
    lambda b: b.replace(b"Content-Type: application/json", b"Content-Type: text/plain"),
    lambda b: b.replace(b"Content-Type: application/json\r\n", b""),
    lambda b: b.replace(b"Content-Type: application/json\r\n", b"Content-Type: application/json\r\n" * 2),
    lambda b: b.replace(b"Content-Type: application/json\r\n",
                        b"Content-Type: application/json\r\nContent-Type: text/plain\r\n"),  # the last one counts
    lambda b: b.replace(b"ce-specversion: 1.0\r\n", b""),
    lambda b: b.replace(b"ce-id: ", b"ce-id:  "),  # two spaces
    lambda b: b.replace(b"ce-id: ", b"ce-id:\t"),
    lambda b: b"X-Other: yes\r\n" + b,
    lambda b: b"ce-tenant: a\r\nce-tenant: b\r\n" + b,  # the last one wins, as in a dict
    lambda b: b"ce-ext_name: v\r\n" + b,
    lambda b: b.replace(b"Content-Type:", b"ce-id: again\r\nContent-Type:"),  # a name twice: the last one
    lambda b: b.replace(b"Content-Type:", b"ce-datacontenttype: text/plain\r\nContent-Type:"),
    lambda b: b.replace(b"Content-Type:", b"ce-subject: late\r\nContent-Type:"),  # out of the usual order
    lambda b: b.replace(b"ce-source: ", b"ce-source: \xc3\xa9"),
    lambda b: b[:-2],  # no closing blank line
    lambda b: b"",
])
def test_blocks_unlike_tether_s_read_as_the_long_way_reads_them(change: Callable[[bytes], bytes]) -> None:
    for block, payload in tether_blocks()[:4]:
        changed = change(block)
        assert outcome(lambda changed=changed, payload=payload: decode_block(changed, payload)) == \
            the_long_way(changed, payload), changed


def test_randomly_mutated_blocks_read_as_the_long_way_reads_them() -> None:
    rng = random.Random(5)
    blocks = tether_blocks()
    alphabet = [b" ", b"\t", b"\r", b"\n", b"\r\n", b":", b"%", b"%41", b"C", b"c", b"e", b"-", b"\x00", b"\xff",
                b"ce-", b"Content-Type", b"a"]
    for _ in range(3_000):
        block, payload = rng.choice(blocks)
        edited = bytearray(block)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(edited) + 1)
            cut = rng.choice((0, 0, 1, 2))
            edited[at:at + cut] = rng.choice(alphabet)
        mutated = bytes(edited)
        assert outcome(lambda mutated=mutated, payload=payload: decode_block(mutated, payload)) == \
            the_long_way(mutated, payload), mutated


# -- Event.from_wire's short way ------------------------------------------------------------------


def event_outcome(fn: Callable[[], Event]) -> Any:
    try:
        event = fn()
    except EventError as exc:
        return ("error", type(exc).__name__, str(exc))
    return ("event", event.model_dump(), type(event.data).__name__)


def from_wire_both_ways(attrs: dict[str, Any], data: bytes) -> tuple[Any, Any]:
    short = event_outcome(lambda: Event.from_wire(attrs, data, json_text=True))
    long = event_outcome(lambda: Event.from_wire(MappingProxyType(attrs), data, json_text=True))  # not a dict
    return short, long


def test_every_type_takes_the_short_way_to_the_same_event() -> None:
    for event_type in sorted(catalogue()):
        event = sample_event(event_type, extensions={"tenant": "acme"})
        attrs = event.attributes()
        data = event.data_json()
        short, long = from_wire_both_ways(attrs, data)
        assert short == long
        assert short[0] == "event" and short[1] == event.model_dump()


# Strings only: that is all the wire gives (headers are text; structured mode turns the rest into JSON text).
BAD_VALUES: list[str] = ["", " ", "0.3", "1", "urn:tether:schema:tether.run.started:v1",
                         "urn:tether:schema:tether.run.finished:v9", "not-a-time", "2026-01-01T00:00:00",
                         "2026-01-01T00:00:00+02:00", "00-zz-00-00", "BadName", "tether.nope", "x" * 30]


def test_randomly_changed_attributes_give_the_same_event_or_error() -> None:
    rng = random.Random(8)
    events = [sample_event(t) for t in sorted(catalogue())]
    names = ["specversion", "id", "source", "type", "time", "dataschema", "subject", "traceparent", "runid",
             "agentid", "datacontenttype", "tenant", "Upper", "with-dash", "dataref"]
    for _ in range(3_000):
        event = rng.choice(events)
        attrs: dict[str, Any] = event.attributes()
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(names)
            if rng.random() < 0.3:
                attrs.pop(name, None)  # missing
            else:
                attrs[name] = rng.choice(BAD_VALUES)
        data = event.data_json() if rng.random() < 0.8 else json.dumps({"unexpected": True}).encode()
        short, long = from_wire_both_ways(attrs, data)
        assert short == long, attrs


def test_validate_does_not_change_the_attributes_it_reads() -> None:
    event = sample_event("tether.run.started")
    headers, payload = encode_binary(event)
    wire = decode_block(block_of(headers), payload)
    before = dict(wire.attributes)
    assert validate(wire) == event
    assert wire.attributes == before
