"""The CloudEvents NATS binding: both content modes, header encoding, refusals."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping
from typing import Any

import pytest

from tests._samples import SAMPLES, sample_event
from tether.bus import (
    STRUCTURED_CONTENT_TYPE,
    decode,
    decode_event,
    encode_binary,
    encode_structured,
    percent_decode,
    percent_encode,
)
from tether.bus._binding import validate
from tether.schemas import Event, EventError, InvalidEvent, RunStarted, UnknownEventType, catalogue

CATALOGUE = sorted(catalogue())

HOSTILE = [
    "run 42",
    'say "hi"',
    "100%",
    "%41",  # looks like an escape already
    "%",
    "%%zz%4",
    "urn:tether:a:b",
    "line1\r\nline2",
    "\n",
    "tab\there",
    "emoji 🚀🧵",
    "accentué çà",
    "中文字符",
    " leading",
    "trailing ",
    "  ",
    "\x00nul\x7fdel\x1besc",
    "nbsp\u00a0and\u2028sep",
    "ce-specversion: 0.3",
    "a=b; c=d, e",
]
_HEADER_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # nats-py 2.16 _HEADER_KEY_RE


def nats_wire(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers as another client sees them after nats-py 2.16 sent them.

    nats-py (``Client._send_publish``) strips each value and turns CR/LF into spaces, writes
    ``Key: value\\r\\n`` lines, and its reader splits on the first ``:`` and strips again.
    """
    lines = [b"NATS/1.0"]
    for key, value in headers.items():
        assert _HEADER_TOKEN.fullmatch(key.strip()), key
        sent = value.strip().translate({13: 32, 10: 32})
        lines.append(f"{key.strip()}: {sent}".encode())
    raw = b"\r\n".join(lines) + b"\r\n\r\n"
    out = {}
    for line in raw.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            out[name.strip().decode("ascii")] = value.strip().decode("utf-8", "replace")
    return out


def assert_header_safe(headers: Mapping[str, str]) -> None:
    for key, value in headers.items():
        assert _HEADER_TOKEN.fullmatch(key), key
        assert value == value.strip(), (key, value)
        assert "\r" not in value and "\n" not in value, (key, value)
        if key.lower().startswith("ce-"):
            assert all("\x21" <= ch <= "\x7e" and ch != '"' for ch in value), (key, value)


def hostile_event(value: str) -> Event:
    return Event.of(
        RunStarted(name=value, input={"v": value}, tags=(value,)),
        source=f"urn:{value}",
        runid=value,
        agentid=value,
        subject=value,
        extensions={"ext": value, "other": "plain"},
    )


# -- round trips -------------------------------------------------------------------------


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_binary_round_trip(event_type: str) -> None:
    event = sample_event(event_type)
    headers, payload = encode_binary(event)
    assert decode_event(headers, payload) == event
    assert decode_event(nats_wire(headers), payload) == event
    assert payload == event.data_json()
    assert headers["Content-Type"] == "application/json"
    assert headers["ce-specversion"] == "1.0"
    assert headers["ce-type"] == event_type
    assert headers["ce-id"] == event.id
    assert headers["ce-runid"] == "run-42"
    assert headers["ce-tenant"] == "acme"
    assert "ce-datacontenttype" not in headers  # carried by Content-Type
    assert_header_safe(headers)


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_structured_round_trip(event_type: str) -> None:
    event = sample_event(event_type)
    headers, payload = encode_structured(event)
    assert headers == {"Content-Type": STRUCTURED_CONTENT_TYPE}
    assert decode_event(headers, payload) == event
    doc = json.loads(payload)
    assert doc["type"] == event_type
    assert doc["data"] == json.loads(event.data_json())
    assert doc["tenant"] == "acme"


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_survive_binary_mode(value: str) -> None:
    event = hostile_event(value)
    headers, payload = encode_binary(event)
    assert_header_safe(headers)
    back = decode_event(nats_wire(headers), payload)
    assert back == event
    assert (back.runid, back.agentid, back.subject, back.extensions["ext"]) == (value,) * 4
    assert back.source == f"urn:{value}"


@pytest.mark.parametrize("value", HOSTILE, ids=repr)
def test_hostile_values_survive_structured_mode(value: str) -> None:
    event = hostile_event(value)
    headers, payload = encode_structured(event)
    payload.decode("utf-8")  # valid UTF-8, non-ASCII kept as is
    back = decode_event(nats_wire(headers), payload)
    assert back == event
    assert (back.runid, back.agentid, back.subject, back.extensions["ext"]) == (value,) * 4


def test_the_wire_simulation_would_catch_unencoded_values() -> None:
    """The check above means something: raw values do not survive nats-py's headers."""
    sent = {"ce-runid": " run\r\n42 ", "ce-x": "a\nb"}
    assert nats_wire(sent) == {"ce-runid": "run  42", "ce-x": "a b"}
    assert nats_wire({k: percent_encode(v) for k, v in sent.items()}) != sent
    assert {k: percent_decode(v) for k, v in nats_wire(
        {k: percent_encode(v) for k, v in sent.items()}).items()} == sent


def test_non_ascii_stays_readable_in_structured_mode() -> None:
    _, payload = encode_structured(hostile_event("中文 🚀"))
    assert "中文 🚀".encode() in payload


def test_empty_extension_value_round_trips() -> None:
    event = Event.of(RunStarted(), extensions={"empty": ""})
    headers, payload = encode_binary(event)
    assert headers["ce-empty"] == ""
    assert decode_event(nats_wire(headers), payload).extensions == {"empty": ""}
    assert decode_event(*encode_structured(event)).extensions == {"empty": ""}


# -- percent encoding --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "encoded"),
    [
        ("", ""),
        ("plain-ASCII_~!#$&'()*+,/:;<=>?@[]^`{|}", "plain-ASCII_~!#$&'()*+,/:;<=>?@[]^`{|}"),
        (" ", "%20"),
        ('"', "%22"),
        ("%", "%25"),
        ("%41", "%2541"),
        ("\t\r\n", "%09%0D%0A"),
        ("\x00\x7f", "%00%7F"),
        ("é", "%C3%A9"),
        ("中", "%E4%B8%AD"),
        ("🚀", "%F0%9F%9A%80"),
        ("a b", "a%20b"),
    ],
)
def test_percent_encode_examples(raw: str, encoded: str) -> None:
    assert percent_encode(raw) == encoded
    assert percent_decode(encoded) == raw


def _random_text(rng: random.Random) -> str:
    pools = [
        (0x00, 0x7F),  # ASCII with controls, space, '"' and '%'
        (0x20, 0x25),  # space ! " # $ % -- the interesting ones, often
        (0x80, 0x7FF),  # two-byte UTF-8
        (0x800, 0xD7FF),  # three-byte, below the surrogates
        (0xE000, 0xFFFF),  # three-byte, above them
        (0x10000, 0x10FFFF),  # four-byte: emoji and beyond
    ]
    chars = []
    for _ in range(rng.randrange(0, 40)):
        lo, hi = rng.choice(pools)
        chars.append(chr(rng.randint(lo, hi)))
    return "".join(chars)


def test_percent_encoding_properties_on_random_text() -> None:
    rng = random.Random(20261127)
    allowed = {chr(c) for c in range(0x21, 0x7F)} - {'"'}
    for _ in range(3000):
        text = _random_text(rng)
        encoded = percent_encode(text)
        assert set(encoded) <= allowed, (text, encoded)
        assert encoded == encoded.strip()
        assert percent_decode(encoded) == text, (text, encoded)
        # every '%' in the output starts an escape of two upper-case hex digits
        assert re.fullmatch(r"(?:[^%]|%[0-9A-F]{2})*", encoded), encoded
        if not any(ch in ' "%' or not "\x21" <= ch <= "\x7e" for ch in text):
            assert encoded == text  # nothing to encode: untouched


def test_percent_decode_is_lenient_with_stray_percent_signs() -> None:
    assert percent_decode("100%") == "100%"
    assert percent_decode("%zz%4") == "%zz%4"
    assert percent_decode("%c3%a9") == "é"  # lower-case hex from other senders
    assert percent_decode("é%20x") == "é x"  # unencoded non-ASCII from a lax sender


def test_percent_decode_refuses_what_is_not_utf8() -> None:
    with pytest.raises(UnicodeDecodeError):
        percent_decode("%FF")
    with pytest.raises(InvalidEvent, match="not UTF-8"):
        decode({"ce-specversion": "1.0", "ce-runid": "%C3"}, b"{}")


# -- what is not a CloudEvent ------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [None, {}, {"Content-Type": "application/json"}, {"Nats-Msg-Id": "x", "ce-type": "tether.run.started"}],
)
def test_a_message_that_is_no_cloudevent_is_refused(headers: dict[str, str] | None) -> None:
    with pytest.raises(InvalidEvent, match="not a CloudEvent") as info:
        decode_event(headers, b'{"name": "x"}')
    assert STRUCTURED_CONTENT_TYPE in str(info.value)
    assert isinstance(info.value, EventError)


@pytest.mark.parametrize("payload", [b"not json", b"{", b"\xff\xfe\x00", b""])
def test_structured_payload_that_is_not_json(payload: bytes) -> None:
    with pytest.raises(InvalidEvent, match="structured event is not JSON"):
        decode_event({"Content-Type": STRUCTURED_CONTENT_TYPE}, payload)


@pytest.mark.parametrize("payload", [b"[1, 2]", b'"text"', b"null", b"42"])
def test_structured_payload_that_is_not_an_object(payload: bytes) -> None:
    with pytest.raises(InvalidEvent, match="not a JSON object"):
        decode_event({"Content-Type": STRUCTURED_CONTENT_TYPE}, payload)


def test_structured_base64_data_is_refused() -> None:
    doc = sample_event("tether.run.started").to_json()
    doc.pop("data")
    doc["data_base64"] = "e30="
    with pytest.raises(InvalidEvent, match="data_base64"):
        decode_event({"Content-Type": STRUCTURED_CONTENT_TYPE}, json.dumps(doc).encode())


@pytest.mark.parametrize("payload", [b"not json", b"{\"status\": ", b"\xff"])
def test_binary_payload_that_is_not_json(payload: bytes) -> None:
    headers, _ = encode_binary(sample_event("tether.run.finished"))
    with pytest.raises(InvalidEvent, match="not JSON") as info:
        decode_event(headers, payload)
    assert info.value.problems[0]["loc"] == ("data",)
    assert info.value.event_type == "tether.run.finished"


def test_binary_payload_that_is_empty_or_not_an_object() -> None:
    headers, _ = encode_binary(sample_event("tether.run.finished"))
    for payload in (b"", b"[]", b"null"):
        with pytest.raises(InvalidEvent, match="must be a JSON object"):
            decode_event(headers, payload)


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream", "application/xml"])
def test_binary_non_json_datacontenttype_is_refused(content_type: str) -> None:
    headers, payload = encode_binary(sample_event("tether.run.finished"))
    headers["Content-Type"] = content_type
    with pytest.raises(InvalidEvent, match="application/json") as info:
        decode_event(headers, payload)
    assert info.value.problems[0]["loc"] == ("datacontenttype",)


@pytest.mark.parametrize("content_type", ["text/plain", "application/octet-stream"])
def test_structured_non_json_datacontenttype_is_refused(content_type: str) -> None:
    doc = sample_event("tether.run.finished").to_json()
    doc["datacontenttype"] = content_type
    with pytest.raises(InvalidEvent, match="application/json"):
        decode_event({"Content-Type": STRUCTURED_CONTENT_TYPE}, json.dumps(doc).encode())


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/vnd.x+json"]
)
def test_json_content_types_are_accepted(content_type: str) -> None:
    event = sample_event("tether.run.finished")
    headers, payload = encode_binary(event)
    headers["Content-Type"] = content_type
    back = decode_event(headers, payload)
    assert back.data == event.data
    assert back.datacontenttype == content_type


def test_binary_without_content_type_is_json() -> None:
    event = sample_event("tether.tool.call.completed")
    headers, payload = encode_binary(event)
    del headers["Content-Type"]
    assert decode_event(headers, payload) == event


def test_unknown_type_on_the_wire() -> None:
    headers, payload = encode_binary(sample_event("tether.run.finished"))
    headers["ce-type"] = "tether.run.exploded"
    del headers["ce-dataschema"]
    with pytest.raises(UnknownEventType):
        decode_event(headers, payload)


def test_bad_envelope_values_on_the_wire_are_refused() -> None:
    event = sample_event("tether.run.finished")
    for name, value in (("ce-traceparent", "nope"), ("ce-runid", ""), ("ce-my_ext", "x"),
                        ("ce-specversion", "0.3"), ("ce-time", "noon")):
        headers, payload = encode_binary(event)
        headers[name] = value
        with pytest.raises(InvalidEvent, match=" envelope: "):
            decode_event(headers, payload)


def test_bad_payload_on_the_wire_names_the_field() -> None:
    headers, _ = encode_binary(sample_event("tether.run.finished"))
    with pytest.raises(InvalidEvent, match=r"error\.type: ") as info:
        decode_event(headers, b'{"status": "ok", "error": {"type": ""}}')
    assert info.value.problems[0]["loc"] == ("error", "type")


# -- claim checks ------------------------------------------------------------------------


def test_decode_event_with_a_dataref_points_at_the_object_store() -> None:
    event = sample_event("tether.llm.call.completed").with_dataref("tether-obj://tether-objects/abc")
    headers, payload = encode_binary(event, data=b"")
    assert headers["ce-dataref"] == percent_encode("tether-obj://tether-objects/abc")
    assert payload == b""
    with pytest.raises(InvalidEvent, match="object store") as info:
        decode_event(headers, payload)
    assert info.value.problems[0]["loc"] == ("dataref",)
    assert "EventReader" in str(info.value)


def test_a_dataref_is_resolved_with_the_fetched_data() -> None:
    event = sample_event("tether.llm.call.completed").with_dataref("tether-obj://tether-objects/abc")
    headers, payload = encode_binary(event, data=b"")
    wire = decode(headers, payload)
    assert wire.dataref == "tether-obj://tether-objects/abc"
    assert (wire.id, wire.type, wire.structured) == (event.id, event.type, False)
    back = validate(wire, event.data_json())
    assert back == event
    assert back.dataref == "tether-obj://tether-objects/abc"
    assert "dataref" not in back.extensions


# -- header names ------------------------------------------------------------------------


@pytest.mark.parametrize("case", [str.upper, str.title, lambda k: k[:1].upper() + k[1:]])
def test_header_names_are_matched_case_insensitively(case: Any) -> None:
    event = sample_event("tether.memory.written")
    headers, payload = encode_binary(event)
    shouted = {case(k): v for k, v in headers.items()}
    assert shouted != headers
    assert decode_event(shouted, payload) == event
    structured_headers, body = encode_structured(event)
    assert decode_event({"CONTENT-TYPE": STRUCTURED_CONTENT_TYPE.upper()}, body) == event
    assert decode_event({"content-type": f"{STRUCTURED_CONTENT_TYPE}; charset=utf-8"}, body) == event
    assert structured_headers == {"Content-Type": STRUCTURED_CONTENT_TYPE}


def test_other_headers_are_ignored() -> None:
    event = sample_event("tether.run.started")
    headers, payload = encode_binary(event)
    headers.update({"Nats-Msg-Id": event.id, "Nats-Expected-Stream": "TETHER_EVENTS", "X-Other": "1"})
    assert decode_event(headers, payload) == event


def test_structured_mode_wins_over_ce_headers() -> None:
    """A message with the structured content type is read from its body alone."""
    event = sample_event("tether.run.started")
    _, body = encode_structured(event)
    headers = {"Content-Type": STRUCTURED_CONTENT_TYPE, "ce-runid": "other", "ce-specversion": "1.0"}
    wire = decode(headers, body)
    assert wire.structured
    assert decode_event(headers, body).runid == "run-42"


def test_every_sample_has_a_binary_form_nats_can_carry() -> None:
    for event_type in SAMPLES:
        headers, _ = encode_binary(sample_event(event_type))
        assert nats_wire(headers) == headers
