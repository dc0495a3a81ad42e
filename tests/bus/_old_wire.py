"""How tether wrote an event's message before the one-pass encoder (main at a964241, frozen here): the
attributes as ``ce-`` headers, percent-encoded where needed, the data's JSON, ``Nats-Msg-Id``, the
block as nats-py's ``publish`` writes it. ``test_wireform`` holds the encoder to these bytes."""

from __future__ import annotations

import re

from tether.bus import encode_token
from tether.schemas import Event

_NEEDS_ENCODING = re.compile(r'[^\x21-\x7e]|["%]')


def _percent_encode(value: str) -> str:
    if value.isascii() and value.isprintable() and not _NEEDS_ENCODING.search(value):
        return value
    out = []
    for ch in value:
        if ch in ' "%' or not ("\x21" <= ch <= "\x7e"):
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def old_headers(event: Event) -> dict[str, str]:
    """The headers, in order, ``Nats-Msg-Id`` last."""
    headers = {"ce-" + k: _percent_encode(v) for k, v in event.attributes().items() if k != "datacontenttype"}
    headers["Content-Type"] = event.datacontenttype
    headers["Nats-Msg-Id"] = event.id
    return headers


def old_block(headers: dict[str, str]) -> bytes:
    """The header block nats-py 2.x's ``publish`` writes for ``headers`` (its ``_send_publish``)."""
    hdr = bytearray(b"NATS/1.0\r\n")
    for k, v in headers.items():
        key = k.strip()
        if not key:
            continue
        hdr.extend(key.encode())
        hdr.extend(b": ")
        hdr.extend(v.strip().replace("\r", " ").replace("\n", " ").encode())
        hdr.extend(b"\r\n")
    hdr.extend(b"\r\n")
    return bytes(hdr)


def old_subject(event: Event) -> str:
    data = event.data
    return ".".join(("tether", "evt", encode_token(event.agentid), encode_token(event.runid), data.kind,
                     data.action, encode_token(data.subject_key())))


def old_message(event: Event) -> tuple[str, dict[str, str], bytes, bytes]:
    """Subject, headers, header block and body as tether published ``event`` before."""
    headers = old_headers(event)
    return old_subject(event), headers, old_block(headers), event.data_json()
