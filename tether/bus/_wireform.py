"""An event's NATS message (subject, header block, body) written in one pass: the header block's constant
lines kept per event type and source (a template), the run's values (trace, run, agent), the id and the
time written into it, the data's JSON written once. The same bytes as :func:`~tether.bus._binding.encode_binary`
and :func:`~tether.bus._headers.header_block`, which write any envelope a template cannot be sure of.
"""

from __future__ import annotations

from typing import Any

from tether.schemas import Event

from ._binding import _plain, encode_binary
from ._headers import HeaderBlock, header_block
from ._subjects import PREFIX, encode_token, event_subject

__all__ = ["MSG_ID", "encode_message"]

MSG_ID = "Nats-Msg-Id"
_RUN = ("ce-traceparent", "ce-runid", "ce-agentid")
"""The headers written per event between a template's lines (in this order, each when set)."""
_MIDDLE = frozenset({"ce-subject", "ce-dataschema"})
"""The attribute headers between the time and the run's values."""
_MAX_TEMPLATES = 1024


class _Template:
    """The lines of one kind of envelope (payload class, source, type, subject, schema, extensions...),
    with holes for the id (``ce-id`` and ``Nats-Msg-Id``), the time and the run's values."""

    __slots__ = ("after", "after_text", "before", "before_text", "head", "mid", "start", "subject")

    def __init__(self, headers: dict[str, str], kind_action: str) -> None:
        names = list(headers)[5:-1]  # after the time, before the message id
        self.start = {name: headers[name] for name in ("ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time")}
        self.before = {name: headers[name] for name in names if name in _MIDDLE}
        self.after = {name: headers[name] for name in names if name not in _MIDDLE and name not in _RUN}
        self.head = f"NATS/1.0\r\nce-specversion: {headers['ce-specversion']}\r\nce-id: "
        self.mid = f"\r\nce-source: {headers['ce-source']}\r\nce-type: {headers['ce-type']}\r\nce-time: "
        self.before_text = "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in self.before.items())
        self.after_text = "".join(f"{k}: {v}\r\n" for k, v in self.after.items()) + f"{MSG_ID}: "
        self.subject = kind_action

    def fill(self, event_id: str, time: str, traceparent: str | None, runid: str | None,
             agentid: str | None) -> HeaderBlock:
        headers = dict(self.start)
        headers["ce-id"] = event_id
        headers["ce-time"] = time
        run = ""
        if self.before:
            headers.update(self.before)
        if traceparent is not None:
            headers["ce-traceparent"] = traceparent
            run = f"ce-traceparent: {traceparent}\r\n"
        if runid is not None:
            headers["ce-runid"] = runid
            run += f"ce-runid: {runid}\r\n"
        if agentid is not None:
            headers["ce-agentid"] = agentid
            run += f"ce-agentid: {agentid}\r\n"
        headers.update(self.after)
        headers[MSG_ID] = event_id
        return HeaderBlock(headers, f"{self.head}{event_id}{self.mid}{time}{self.before_text}{run}{self.after_text}"
                                    f"{event_id}\r\n\r\n".encode())


_TEMPLATES: dict[tuple[Any, ...], _Template | None] = {}
"""Templates by envelope; None for an envelope written the long way (a constant value to percent-encode)."""


def encode_message(event: Event) -> tuple[str, dict[str, str], bytes]:
    """The subject, headers (a :class:`HeaderBlock` with ``Nats-Msg-Id``, whenever the block can be
    written beforehand) and body ``event`` is published with, in binary content mode."""
    d = event.__dict__
    data = d["data"]
    ext = d["extensions"]
    key = (type(data), d["source"], d["type"], d["subject"], d["datacontenttype"], d["dataschema"], d["dataref"],
           d["specversion"], tuple(ext.items()) if ext else None)
    try:
        template = _TEMPLATES[key]
    except KeyError:
        template = _template(event)
        if len(_TEMPLATES) >= _MAX_TEMPLATES:  # envelopes made up on the fly (subjects, say): keep the recent
            _TEMPLATES.clear()
        _TEMPLATES[key] = template
    except TypeError:  # an attribute that cannot be hashed (not a string): the long way says what is wrong
        template = None
    event_id, traceparent, runid, agentid = d["id"], d["traceparent"], d["runid"], d["agentid"]
    # the values written as they are: each plain (one check of them together) and none empty
    if template is None or type(event_id) is not str or traceparent == "" or runid == "" or agentid == "" \
            or not _plain(f"{event_id}{traceparent or ''}{runid or ''}{agentid or ''}"):
        headers, payload = encode_binary(event)
        headers[MSG_ID] = event_id
        return event_subject(event), HeaderBlock.of(headers), payload
    subject = f"{PREFIX}.evt.{encode_token(agentid)}.{encode_token(runid)}.{template.subject}" \
              f"{encode_token(data.subject_key())}"
    return subject, template.fill(event_id, event.time_text(), traceparent, runid, agentid), \
        type(data).__pydantic_serializer__.to_json(data)


def _template(event: Event) -> _Template | None:
    """The template of ``event``'s envelope, if its block is the usual layout (id second, time fifth, the
    message id last) and filling the template in with its own values gives exactly the block
    :func:`header_block` writes; else None."""
    headers, _ = encode_binary(event)
    headers[MSG_ID] = event.id
    block = header_block(headers)
    names = list(headers)
    if block is None or names[:5] != ["ce-specversion", "ce-id", "ce-source", "ce-type", "ce-time"] \
            or names[-1] != MSG_ID or not _plain(event.id):
        return None
    for name in _RUN:  # the run's values as they are: nothing percent-encoded
        if name in headers and headers[name] != event.__dict__[name[3:]]:
            return None
    data = event.data
    template = _Template(headers, f"{data.kind}.{data.action}.")
    filled = template.fill(event.id, headers["ce-time"], event.traceparent, event.runid, event.agentid)
    subject = f"{PREFIX}.evt.{encode_token(event.agentid)}.{encode_token(event.runid)}.{template.subject}" \
              f"{encode_token(data.subject_key())}"
    if filled.block != block or list(filled.items()) != list(headers.items()) or subject != event_subject(event):
        return None
    return template
