"""An event's NATS message (subject, header block, body) written in one pass: the header block filled
into a template kept per envelope (source, type, run, agent, trace: all but id and time), the data's
JSON written once. The same bytes as :func:`~tether.bus._binding.encode_binary` and
:func:`~tether.bus._headers.header_block`, which write any envelope no template can be sure of.
"""

from __future__ import annotations

from typing import Any

from tether.schemas import Event

from ._binding import _plain, encode_binary
from ._headers import HeaderBlock, header_block
from ._subjects import PREFIX, encode_token, event_subject

__all__ = ["MSG_ID", "encode_message"]

MSG_ID = "Nats-Msg-Id"
_MAX_TEMPLATES = 4096


class _Template:
    """One envelope's message with holes for the id (twice: ``ce-id`` and ``Nats-Msg-Id``), the time
    and the subject's last token."""

    __slots__ = ("head", "headers", "mid", "subject", "tail")

    def __init__(self, head: str, mid: str, tail: str, headers: dict[str, str], subject: str) -> None:
        self.head, self.mid, self.tail, self.headers, self.subject = head, mid, tail, headers, subject


_TEMPLATES: dict[tuple[Any, ...], _Template | None] = {}
"""Templates by envelope; None for an envelope that is written the long way (a value to percent-encode)."""


def encode_message(event: Event) -> tuple[str, dict[str, str], bytes]:
    """The subject, headers (a :class:`HeaderBlock` with ``Nats-Msg-Id``, whenever the block can be
    written beforehand) and body ``event`` is published with, in binary content mode."""
    d = event.__dict__
    ext = d["extensions"]
    key = (type(d["data"]), d["source"], d["type"], d["subject"], d["datacontenttype"], d["dataschema"],
           d["traceparent"], d["runid"], d["agentid"], d["dataref"], d["specversion"],
           tuple(ext.items()) if ext else None)
    try:
        template = _TEMPLATES[key]
    except KeyError:
        template = _template(event)
        if len(_TEMPLATES) < _MAX_TEMPLATES:
            _TEMPLATES[key] = template
    except TypeError:  # an attribute that cannot be hashed (not a string): the long way says what is wrong
        template = None
    event_id = d["id"]
    if template is None or not _plain(event_id):
        headers, payload = encode_binary(event)
        headers[MSG_ID] = event_id
        return event_subject(event), HeaderBlock.of(headers), payload
    data = d["data"]
    time = event.time_text()
    headers = HeaderBlock(template.headers, f"{template.head}{event_id}{template.mid}{time}{template.tail}"
                                            f"{event_id}\r\n\r\n".encode())
    headers["ce-id"] = headers[MSG_ID] = event_id
    headers["ce-time"] = time
    subject = template.subject + encode_token(data.subject_key())
    return subject, headers, type(data).__pydantic_serializer__.to_json(data)


def _template(event: Event) -> _Template | None:
    """The template of ``event``'s envelope, if its block is the usual layout (id second, time fifth, the
    message id last) and filling the template in with its id and time gives exactly the block
    :func:`header_block` writes; else None."""
    headers, _ = encode_binary(event)
    headers[MSG_ID] = event.id
    block = header_block(headers)
    names = list(headers)
    if block is None or names[:5] != ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"] \
            or names[-1] != MSG_ID or not _plain(event.id):
        return None
    lines = [f"{k}: {v}\r\n" for k, v in headers.items()]
    head = "NATS/1.0\r\n" + lines[0] + "ce-id: "
    mid = "\r\n" + lines[2] + lines[3] + "ce-time: "
    tail = "\r\n" + "".join(lines[5:-1]) + f"{MSG_ID}: "
    if f"{head}{event.id}{mid}{headers['ce-time']}{tail}{event.id}\r\n\r\n".encode() != block:
        return None
    subject = event_subject(event)
    prefix = ".".join((PREFIX, "evt", encode_token(event.agentid), encode_token(event.runid), event.data.kind,
                       event.data.action, ""))
    if not subject.startswith(prefix):
        return None
    return _Template(head, mid, tail, headers, prefix)
