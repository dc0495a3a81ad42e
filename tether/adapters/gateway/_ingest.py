"""CloudEvents over HTTP, from agents in any language: decoded, checked, then validated.

``POST /v1/events`` takes the three content modes of the CloudEvents HTTP binding:

* **structured**: ``Content-Type: application/cloudevents+json``, the event in the body;
* **binary**: the attributes in ``ce-*`` headers (percent-encoded), the data in the body with
  its own ``Content-Type`` (``application/json``);
* **batch**: ``Content-Type: application/cloudevents-batch+json``, a JSON array of events.

The ``cloudevents`` SDK decodes the wire (header decoding, ``data_base64``, ``time``) and checks
the envelope; data holding NaN or Infinity (JSON has neither) is refused;
:meth:`tether.schemas.Event.from_wire` then validates each event against tether's catalogue.
The gateway fills in what the agent left out (``agentid`` from its key, ``runid`` and
``traceparent`` from its headers, ``ended_by: "agent"`` on a ``run.finished``) and refuses an
event that names another agent.
A request is all or nothing: if any event is invalid, none is published. Pure: no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloudevents.core.bindings.http import HTTPMessage, from_binary
from cloudevents.core.exceptions import BaseCloudEventException, CloudEventValidationError
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from tether.schemas import (
    NON_FINITE_HINT,
    Event,
    EventError,
    InvalidEvent,
    RunFinished,
    UnknownEventType,
    non_finite,
)

from .._redact import Redactor
from ._identity import Caller

__all__ = ["BATCH", "STRUCTURED", "IngestError", "Invalid", "decode", "validate"]

STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
_FORMAT = JSONFormat()
MAX_BATCH = 1000


@dataclass
class Invalid:
    """What is wrong with one event of a request."""

    index: int
    errors: list[dict[str, Any]]
    id: str | None = None
    type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "id": self.id, "type": self.type,
                "errors": [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))}
                           for e in self.errors]}


@dataclass
class IngestError(Exception):
    """The request is refused: ``status`` (400, 403, 413, 415), a message, the events at fault."""

    status: int
    message: str
    code: str
    invalid: list[Invalid] = field(default_factory=list)

    def __str__(self) -> str:
        return self.message


def _problems(exc: BaseException) -> list[dict[str, Any]]:
    if isinstance(exc, CloudEventValidationError):
        return [{"loc": (name,), "msg": str(e)} for name, errors in exc.errors.items() for e in errors]
    if isinstance(exc, InvalidEvent):
        return [{"loc": p.get("loc", ()), "msg": p.get("msg", "invalid")} for p in exc.problems]
    if isinstance(exc, UnknownEventType):
        return [{"loc": ("type",), "msg": str(exc)}]
    return [{"loc": (), "msg": str(exc)}]


def _media(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(headers: Mapping[str, str], body: bytes) -> list[CloudEvent | Invalid]:
    """The events of one request by content mode (lower-case header names); IngestError when
    the request itself is not CloudEvents. Events the SDK refuses come back as :class:`Invalid`."""
    media = _media(headers.get("content-type"))
    if media == STRUCTURED:
        try:
            doc = json.loads(body)
        except ValueError as exc:
            raise IngestError(400, f"the body is not JSON: {exc}", "invalid_json") from None
        return [_structured(0, doc)]
    if media == BATCH:
        try:
            docs = json.loads(body)
        except ValueError as exc:
            raise IngestError(400, f"the body is not JSON: {exc}", "invalid_json") from None
        if not isinstance(docs, list):
            raise IngestError(400, "a batch is a JSON array of events", "invalid_batch")
        if not docs:
            raise IngestError(400, "the batch is empty", "invalid_batch")
        if len(docs) > MAX_BATCH:
            raise IngestError(413, f"a batch holds at most {MAX_BATCH} events, not {len(docs)}", "batch_too_large")
        return [_structured(i, doc) for i, doc in enumerate(docs)]
    if any(name.startswith("ce-") for name in headers):
        return [_binary(headers, body)]
    raise IngestError(415, f"not CloudEvents: send Content-Type {STRUCTURED} (structured), {BATCH} (batch), or "
                      "the attributes as ce-* headers (binary)", "unsupported_media_type")


def _structured(index: int, doc: Any) -> CloudEvent | Invalid:
    if not isinstance(doc, dict):
        return Invalid(index, [{"loc": (), "msg": "an event is a JSON object"}])
    missing = [name for name in ("id", "specversion") if name not in doc]  # the SDK would make them up
    if missing:
        return Invalid(index, [{"loc": (name,), "msg": "required"} for name in missing],
                       _str(doc.get("id")), _str(doc.get("type")))
    try:
        # the SDK's JSON format reads data_base64 and time; it takes the document as text
        return _FORMAT.read(CloudEvent, json.dumps(doc))  # type: ignore[return-value]
    except (BaseCloudEventException, ValueError, TypeError, OverflowError) as exc:
        return Invalid(index, _problems(exc), _str(doc.get("id")), _str(doc.get("type")))


def _binary(headers: Mapping[str, str], body: bytes) -> CloudEvent | Invalid:
    missing = [name for name in ("id", "specversion") if f"ce-{name}" not in headers]
    if missing:
        return Invalid(0, [{"loc": (name,), "msg": f"required (header ce-{name})"} for name in missing],
                       headers.get("ce-id"), headers.get("ce-type"))
    wanted = {k: v for k, v in headers.items() if k.startswith("ce-") or k == "content-type"}
    try:
        return from_binary(HTTPMessage(wanted, body), _FORMAT, CloudEvent)  # type: ignore[return-value]
    except (BaseCloudEventException, ValueError, TypeError, OverflowError) as exc:
        return Invalid(0, _problems(exc), headers.get("ce-id"), headers.get("ce-type"))


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def validate(decoded: list[CloudEvent | Invalid], caller: Caller, *, trusted: bool,
             redactor: Redactor) -> list[Event]:
    """tether events from decoded CloudEvents, or IngestError listing every invalid one.

    ``agentid``, ``runid`` and ``traceparent`` are filled from the caller when absent; an
    event naming another agent is refused (403) unless the key is trusted. The data is
    redacted like every recorded body."""
    events: list[Event] = []
    invalid: list[Invalid] = []
    impersonating: list[Invalid] = []
    for index, item in enumerate(decoded):
        if isinstance(item, Invalid):
            item.index = index
            invalid.append(item)
            continue
        attributes = dict(item.get_attributes())
        agent = attributes.get("agentid")
        if agent is None and caller.agent is not None:
            attributes["agentid"] = caller.agent
        elif (not trusted and agent is not None and caller.agent is not None and agent != caller.agent
              and not str(agent).startswith(caller.agent + "/")):
            impersonating.append(Invalid(index, [{"loc": ("agentid",), "msg": f"this key belongs to agent "
                                                  f"{caller.agent!r}, which may not publish as {agent!r}"}],
                                         item.get_id(), item.get_type()))
            continue
        if attributes.get("runid") is None and caller.run_id is not None:
            attributes["runid"] = caller.run_id
        if attributes.get("traceparent") is None and caller.traceparent is not None:
            attributes["traceparent"] = caller.traceparent
        data = item.get_data()
        if isinstance(data, bytes | str):  # data_base64, or JSON sent as text
            try:
                data = json.loads(data)
            except ValueError:
                invalid.append(Invalid(index, [{"loc": ("data",), "msg": "tether event data is a JSON object"}],
                                       item.get_id(), item.get_type()))
                continue
        nan_at = non_finite(data)
        if nan_at is not None:
            invalid.append(Invalid(index, [{"loc": ("data", *nan_at), "msg": NON_FINITE_HINT}],
                                   item.get_id(), item.get_type()))
            continue
        if item.get_type() == RunFinished.event_type and isinstance(data, dict) and "ended_by" not in data:
            data = {**data, "ended_by": "agent"}  # the agent said its run is over
        try:
            events.append(Event.from_wire(attributes, redactor(data)))
        except EventError as exc:
            invalid.append(Invalid(index, _problems(exc), item.get_id(), item.get_type()))
    if impersonating:
        raise IngestError(403, "an agent may not publish events as another agent; nothing was published",
                          "agent_not_allowed", impersonating)
    if invalid:
        count = len(decoded)
        raise IngestError(400, f"{len(invalid)} of {count} event{'s' if count != 1 else ''} invalid; nothing was "
                          "published (a request is all or nothing)", "invalid_event", invalid)
    return events
