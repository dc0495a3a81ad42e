"""The CloudEvents NATS protocol binding (1.0.3): binary and structured content modes.

Binary mode puts every context attribute, extensions included, in a ``ce-<name>``
header, percent-encoded, and the data as the message payload with ``Content-Type``
set to ``datacontenttype``. Structured mode sends the JSON event format with
``Content-Type: application/cloudevents+json``. Readers accept both: a message without
that content type is binary mode. The cloudevents SDK has no NATS binding, so this is it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tether.schemas import Event, InvalidEvent

from ._headers import parse_headers

__all__ = [
    "STRUCTURED_CONTENT_TYPE",
    "WireEvent",
    "decode",
    "decode_block",
    "decode_event",
    "encode_binary",
    "encode_structured",
    "percent_decode",
    "percent_encode",
]

STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
_PREFIX = "ce-"
# Per the binding: space, '"', '%' and anything outside U+0021..U+007E are encoded.
_NEEDS_ENCODING = re.compile(r'[^\x21-\x7e]|["%]')


def percent_encode(value: str) -> str:
    """Percent-encode a header value as the NATS binding requires (UTF-8 octets)."""
    if value.isascii() and value.isprintable() and not _NEEDS_ENCODING.search(value):
        return value
    out = []
    for ch in value:
        if ch in ' "%' or not ("\x21" <= ch <= "\x7e"):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def percent_decode(value: str) -> str:
    if "%" not in value:
        return value
    raw = bytearray()
    i = 0
    data = value.encode("utf-8")
    while i < len(data):
        if data[i] == 0x25 and i + 2 < len(data) and _is_hex(data[i + 1 : i + 3]):
            raw.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.append(data[i])
            i += 1
    return raw.decode("utf-8", errors="strict")


def _is_hex(two: bytes) -> bool:
    return len(two) == 2 and all(c in b"0123456789abcdefABCDEF" for c in two)


def encode_binary(event: Event, data: bytes | None = None) -> tuple[dict[str, str], bytes]:
    """Headers and payload of ``event`` in binary content mode.

    ``data`` overrides the payload bytes (the publisher passes an empty payload when
    the data went to the object store and ``dataref`` points at it).
    """
    attributes = event.attributes()
    if _plain(",".join(attributes.values())):  # the usual case: one check for every value
        headers = {_PREFIX + k: v for k, v in attributes.items() if k != "datacontenttype"}
    else:
        headers = {_PREFIX + k: v if _plain(v) else percent_encode(v)
                   for k, v in attributes.items() if k != "datacontenttype"}
    headers["Content-Type"] = event.datacontenttype
    return headers, event.data_json() if data is None else data


def _plain(value: str) -> bool:
    """True if ``value`` needs no percent-encoding (the common case, checked cheaply)."""
    return value.isascii() and value.isprintable() and " " not in value and '"' not in value \
        and "%" not in value


def encode_structured(event: Event) -> tuple[dict[str, str], bytes]:
    """Headers and payload of ``event`` in structured content mode (JSON event format)."""
    body = json.dumps(event.to_json(), ensure_ascii=False, separators=(",", ":"))
    return {"Content-Type": STRUCTURED_CONTENT_TYPE}, body.encode("utf-8")


@dataclass(frozen=True, slots=True)
class WireEvent:
    """A CloudEvent read off a message, before its data is validated.

    ``data`` is the raw payload bytes (binary mode) or the already-decoded JSON value
    (structured mode); ``dataref`` is set when the data lives in the object store.
    """

    attributes: dict[str, str]
    data: bytes | Any
    structured: bool

    @property
    def dataref(self) -> str | None:
        return self.attributes.get("dataref")

    @property
    def id(self) -> str | None:
        return self.attributes.get("id")

    @property
    def type(self) -> str | None:
        return self.attributes.get("type")


def decode(headers: Mapping[str, str] | None, payload: bytes) -> WireEvent:
    """Read either content mode; ``InvalidEvent`` if the message is no CloudEvent."""
    headers = headers or {}
    content_type = headers.get("Content-Type")  # how tether writes it; any case is read below
    if content_type is None:
        content_type = _header(headers, "content-type")
    if content_type is not None and content_type.split(";")[0].strip().lower() == STRUCTURED_CONTENT_TYPE:
        try:
            doc = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEvent(None, [{"loc": (), "msg": f"structured event is not JSON: {exc}"}],
                               what="message") from None
        if not isinstance(doc, dict):
            raise InvalidEvent(None, [{"loc": (), "msg": "structured event is not a JSON object"}],
                               what="message")
        data = doc.pop("data", None)
        if "data_base64" in doc:
            raise InvalidEvent(doc.get("type"), [{"loc": ("data_base64",),
                               "msg": "binary data is not supported; tether events carry JSON"}],
                               what="message")
        attrs = {k: v if isinstance(v, str) else json.dumps(v) for k, v in doc.items()}
        return WireEvent(attrs, data, structured=True)
    attrs = {}
    for key, value in headers.items():
        if key[:3].lower() == _PREFIX:
            try:
                attrs[key[3:].lower()] = percent_decode(value)
            except UnicodeDecodeError:
                raise InvalidEvent(None, [{"loc": (key,), "msg": "percent-encoding is not UTF-8"}],
                                   what="message") from None
    if "specversion" not in attrs:
        raise InvalidEvent(None, [{"loc": (), "msg": "not a CloudEvent: no ce-specversion header "
                                   f"and Content-Type is not {STRUCTURED_CONTENT_TYPE}"}],
                           what="message")
    if content_type is not None:
        attrs["datacontenttype"] = content_type
    return WireEvent(attrs, payload, structured=False)


# A header block as tether writes it: ``ce-<name>: <value>`` lines (lower-case names, one
# space, values of printable ASCII without spaces or '%': nothing percent-encoded), then
# ``Content-Type: application/json``, perhaps ``Nats-Msg-Id``, and the blank line. Such a
# block reads the same through parse_headers and decode; any other takes that longer way.
_CE_LINE = re.compile(r"ce-([a-z0-9]+): ([!-$&-~]*)\r\n")
_TAIL = re.compile(r"Content-Type: application/json\r\n(?:Nats-Msg-Id: [!-$&-~]*\r\n)?\r\n")
# The usual such block, line by line in the order Event.attributes() gives them (one
# extension at most): read by one match, without scanning for where each line starts.
_VALUE = r"([!-$&-~]*)\r\n"
_LAYOUT_NAMES = ("specversion", "id", "source", "type", "time", "subject", "dataschema", "traceparent", "runid",
                 "agentid")
_LAYOUT = re.compile("".join(
    f"ce-{name}: {_VALUE}" if i < 5 else f"(?:ce-{name}: {_VALUE})?" for i, name in enumerate(_LAYOUT_NAMES))
    + f"(?:ce-([a-z0-9]+): {_VALUE})?" + _TAIL.pattern)


def decode_block(block: bytes | None, payload: bytes) -> WireEvent:
    """:func:`decode` for a message's raw header block (what follows ``NATS/1.0\\r\\n``).

    A block as tether writes it is read by one regular-expression match, without a header
    dict (2 us instead of 8): the usual layout by a pattern of its own, and any order of
    ``ce-`` lines by splitting on them; any other block is parsed as nats-py would and
    decoded by :func:`decode`, so the result is the same either way.
    """
    if block:
        text = block.decode("ascii", "replace")
        found = _LAYOUT.fullmatch(text)
        if found is not None:
            *values, extension, extension_value = found.groups()
            attrs = {name: value for name, value in zip(_LAYOUT_NAMES, values, strict=True) if value is not None}
            if extension is not None:  # the last ce- line: it wins over an earlier one of its name, as in a dict
                attrs[extension] = extension_value
            attrs["datacontenttype"] = "application/json"
            return WireEvent(attrs, payload, structured=False)
        # [text before the first ce- line, name, value, text between it and the next, ..., the rest]
        parts = _CE_LINE.split(text)
        gaps = parts[0::3]
        if not any(gaps[:-1]) and _TAIL.fullmatch(gaps[-1]) is not None:
            attrs = dict(zip(parts[1::3], parts[2::3], strict=True))
            if "specversion" in attrs:
                attrs["datacontenttype"] = "application/json"
                return WireEvent(attrs, payload, structured=False)
    return decode(parse_headers(block) if block else None, payload)


def decode_event(headers: Mapping[str, str] | None, payload: bytes) -> Event:
    """Decode and validate a message into an :class:`Event`.

    A message whose data is in the object store (``dataref``) needs the bus reader,
    which fetches it; here it is an error.
    """
    wire = decode(headers, payload)
    if wire.dataref:
        raise InvalidEvent(wire.type, [{"loc": ("dataref",),
                           "msg": "data is in the object store; read it with tether.bus.EventReader"}],
                           what="message")
    return validate(wire)


def validate(wire: WireEvent, data: bytes | None = None) -> Event:
    """Validate a :class:`WireEvent` (with ``data`` fetched from a claim check if given)."""
    raw = data if data is not None else wire.data
    ctype = wire.attributes.get("datacontenttype", "application/json")
    if ctype != "application/json" and not _is_json(ctype):  # in either mode: structured data is JSON only if so
        raise InvalidEvent(wire.type, [{"loc": ("datacontenttype",),
                           "msg": f"{ctype!r}: tether events carry application/json data"}],
                           what="message")
    attrs = wire.attributes
    ref = None
    if "dataref" in attrs:
        attrs = dict(attrs)
        ref = attrs.pop("dataref")
    if isinstance(raw, (bytes, bytearray, memoryview)) and raw:
        raw = bytes(raw)
        if raw[:1] == b"{":  # an object: validated straight from the JSON text
            event = Event.from_wire(attrs, raw, json_text=True)
            return event.with_dataref(ref) if ref else event
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidEvent(wire.type, [{"loc": ("data",), "msg": f"not JSON: {exc}"}],
                               what="message") from None
    else:
        value = None if isinstance(raw, (bytes, bytearray, memoryview)) else raw
    event = Event.from_wire(attrs, value)
    return event.with_dataref(ref) if ref else event


def _is_json(content_type: str) -> bool:
    base = content_type.split(";")[0].strip().lower()
    return base == "application/json" or base.endswith("+json") or base == "text/json"


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
