"""The CloudEvents 1.0 envelope and the payload base class with its registry."""

from __future__ import annotations

import copy
import json
import re
import socket
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar, Self

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from ._errors import InvalidEvent, UnknownEventType
from ._finite import _LEAVES, NON_FINITE_HINT, json_safe, non_finite
from ._ids import uuid7

__all__ = [
    "SCHEMA_URN",
    "Event",
    "Payload",
    "catalogue",
    "default_source",
    "payload_class",
]

SCHEMA_URN = "urn:tether:schema:"
"""Prefix of ``dataschema``: ``urn:tether:schema:<type>:v<version>``."""

_REGISTRY: dict[str, type[Payload]] = {}
_EXT_NAME = re.compile(r"[a-z0-9]{1,20}")
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_SCHEMAS: dict[str, tuple[str, int]] = {}  # dataschema URN -> (event type, version), as _SCHEMA reads it
_SCHEMA = re.compile(r"urn:tether:schema:(?P<type>[a-z0-9_.]+):v(?P<version>[0-9]+)")

CORE_ATTRIBUTES = frozenset(
    {"specversion", "id", "source", "type", "subject", "time", "datacontenttype", "dataschema"}
)
TETHER_EXTENSIONS = frozenset({"traceparent", "runid", "agentid", "dataref"})


class Payload(BaseModel):
    """Base of every event payload: frozen, strict about unknown fields, versioned.

    A subclass that sets ``event_type`` joins the catalogue. ``kind`` and ``action``
    place the event in the subject scheme (``docs/subjects.md``); ``subject_key``
    names the routing key of the last subject token (a tool, a route, a memory
    namespace) when the event has one.
    """

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="strings")

    event_type: ClassVar[str]
    schema_version: ClassVar[int] = 1
    kind: ClassVar[str]
    action: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        event_type = cls.__dict__.get("event_type")
        if event_type is not None:
            if event_type in _REGISTRY:
                raise TypeError(f"event type {event_type!r} is registered twice")
            _REGISTRY[event_type] = cls

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise InvalidEvent(
                getattr(type(self), "event_type", None), _problems(exc)
            ) from None

    def subject_key(self) -> str | None:
        """The routing key for the subject's last token, if this event has one."""
        return None

    @classmethod
    def trusted(cls, **fields: Any) -> Self:
        """Build a payload from values its producer has checked already, without validating them:
        for tether's own hot paths (a batch of memory writes). Each value must be what validation
        would make of it; the payload then equals the validated one and its JSON is the same bytes
        (``tests/schemas/test_envelope.py`` checks it). A field not given takes its default; a
        missing required field or an unknown one is a ``TypeError``."""
        spec = _TRUSTED.get(cls)
        if spec is None:
            spec = _TRUSTED[cls] = tuple((name, field.is_required(), field.default, field.default_factory)
                                         for name, field in cls.model_fields.items())
        values: dict[str, Any] = {}
        for name, required, default, factory in spec:
            if name in fields:
                values[name] = fields[name]
            elif required:
                raise TypeError(f"{cls.__name__}.trusted() needs {name!r}")
            elif factory is not None:
                values[name] = factory()
            else:
                values[name] = copy.deepcopy(default) if isinstance(default, dict | list) else default
        if len(fields) > len(values) or any(name not in values for name in fields):
            raise TypeError(f"{cls.__name__}.trusted() got unknown fields "
                            f"{sorted(set(fields) - set(values))}")
        payload = cls.__new__(cls)
        object.__setattr__(payload, "__dict__", values)
        object.__setattr__(payload, "__pydantic_fields_set__", set(fields))
        object.__setattr__(payload, "__pydantic_extra__", None)
        object.__setattr__(payload, "__pydantic_private__", None)
        return payload

    @classmethod
    def dataschema(cls) -> str:
        return f"{SCHEMA_URN}{cls.event_type}:v{cls.schema_version}"

    @classmethod
    def parse(cls, data: Mapping[str, Any], *, version: int | None = None) -> Self:
        """Validate wire data into this payload.

        Data written by a newer schema version may carry fields this reader does not
        know yet; they are dropped rather than refused (schema versions only add
        fields; a breaking change gets a new event type).
        """
        if not isinstance(data, Mapping):
            raise InvalidEvent(
                cls.event_type,
                [{"loc": (), "msg": f"data must be a JSON object, got {type(data).__name__}"}],
            )
        newer = version is not None and version > cls.schema_version
        # Validate into a bare instance, as BaseModel.__init__ does: model_validate would
        # go through our __init__, which loses the ``extra`` override and nests the error.
        payload = cls.__new__(cls)
        try:
            cls.__pydantic_validator__.validate_python(
                data, self_instance=payload, extra="ignore" if newer else None
            )
        except ValidationError as exc:
            raise InvalidEvent(cls.event_type, _problems(exc)) from None
        return payload


    @classmethod
    def parse_json(cls, data: bytes, *, version: int | None = None) -> Self:
        """Validate wire data still in JSON text into this payload: :meth:`parse` without the
        intermediate dicts. A JSON text that does not validate goes through :meth:`parse`, so
        the error is the same either way."""
        newer = version is not None and version > cls.schema_version
        payload = cls.__new__(cls)
        try:
            cls.__pydantic_validator__.validate_json(data, self_instance=payload, extra="ignore" if newer else None)
        except ValidationError:
            try:
                value = json.loads(data)
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidEvent(cls.event_type, [{"loc": ("data",), "msg": f"not JSON: {exc}"}],
                                   what="message") from None
            return cls.parse(value, version=version)
        return payload


_TRUSTED: dict[type[Payload], tuple[tuple[str, bool, Any, Any], ...]] = {}


def _problems(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": e["loc"], "msg": e["msg"], "type": e["type"]} for e in exc.errors()]


def payload_class(event_type: str) -> type[Payload]:
    """The payload model registered for ``event_type``; ``UnknownEventType`` if none."""
    try:
        return _REGISTRY[event_type]
    except KeyError:
        raise UnknownEventType(event_type, list(_REGISTRY)) from None


def catalogue() -> dict[str, type[Payload]]:
    """Every registered event type and its payload model, sorted by type."""
    return dict(sorted(_REGISTRY.items()))


_default_source: str | None = None


def default_source() -> str:
    """``urn:tether:<hostname>``: the source used when a producer names none."""
    global _default_source
    if _default_source is None:
        _default_source = f"urn:tether:{socket.gethostname() or 'localhost'}"
    return _default_source


class Event(BaseModel):
    """A CloudEvents 1.0 event whose ``data`` is a catalogue payload.

    Build one with :meth:`Event.of`; read one from the wire with :meth:`Event.from_wire`.
    ``runid``, ``agentid`` and ``traceparent`` are CloudEvents extension attributes;
    ``dataref`` is the CloudEvents claim-check extension, set when the data was
    moved to the object store because it was too large for a message.
    """

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    specversion: str = "1.0"
    id: str
    source: str
    type: str
    time: datetime
    subject: str | None = None
    datacontenttype: str = "application/json"
    dataschema: str | None = None
    traceparent: str | None = None
    runid: str | None = None
    agentid: str | None = None
    dataref: str | None = None
    extensions: dict[str, str] = {}
    data: Payload

    @classmethod
    def of(
        cls,
        data: Payload,
        *,
        source: str | None = None,
        runid: str | None = None,
        agentid: str | None = None,
        traceparent: str | None = None,
        subject: str | None = None,
        id: str | None = None,
        time: datetime | None = None,
        extensions: Mapping[str, str] | None = None,
    ) -> Event:
        """Wrap a payload in a fresh envelope (new UUIDv7 id, current UTC time)."""
        kind = type(data)
        schema = _DATASCHEMAS.get(kind)
        if schema is None:
            if not isinstance(data, Payload) or not hasattr(kind, "event_type"):
                raise InvalidEvent(
                    None,
                    [{"loc": ("data",), "msg": f"expected a catalogue payload, got {kind.__name__}"}],
                    what="event",
                )
            schema = _DATASCHEMAS[kind] = data.dataschema()
        ext = dict(extensions) if extensions else {}
        # The usual envelope (plain string ids, a traceparent seen before, no extensions) is checked
        # here in a few comparisons; any other through _extension_problems, which says what is wrong.
        if ext or not ((runid is None or (type(runid) is str and runid))
                       and (agentid is None or (type(agentid) is str and agentid))
                       and (traceparent is None or traceparent in _TRACEPARENTS_SEEN)
                       and (source is None or source)):
            problems = _extension_problems(runid, agentid, traceparent, ext)
            if source is not None and not source:
                problems.append({"loc": ("source",), "msg": "must be a non-empty URI-reference"})
            if problems:
                raise InvalidEvent(data.event_type, problems, what="envelope")
            if traceparent is not None:
                if len(_TRACEPARENTS_SEEN) >= 4096:  # a trace per call: keep the recent ones
                    _TRACEPARENTS_SEEN.clear()
                _TRACEPARENTS_SEEN.add(traceparent)
        nan_at = _non_finite_field(data)  # pydantic takes NaN and inf in JsonValue, inf in floats
        if nan_at is not None:
            raise InvalidEvent(data.event_type, [{"loc": nan_at, "msg": NON_FINITE_HINT}])
        when = time or datetime.now(UTC)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        # The payload validated itself on construction and every attribute was checked
        # above, so skip pydantic's second pass: this is the publish hot path.
        return _construct(cls, {
            "specversion": "1.0",
            "id": id or uuid7(),
            "source": source or default_source(),
            "type": kind.event_type,
            "time": when,
            "subject": subject,
            "datacontenttype": "application/json",
            "dataschema": schema,
            "traceparent": traceparent,
            "runid": runid,
            "agentid": agentid,
            "dataref": None,
            "extensions": ext,
            "data": data,
        })

    @classmethod
    def of_many(
        cls,
        payloads: Sequence[Payload],
        *,
        source: str | None = None,
        runid: str | None = None,
        agentid: str | None = None,
        traceparent: str | None = None,
    ) -> list[Event]:
        """:meth:`of` for a batch sharing one envelope (source, run, agent, trace): the attributes
        are checked once, each payload as :meth:`of` checks it; each event gets its own id and time."""
        if not payloads:
            return []
        first = cls.of(payloads[0], source=source, runid=runid, agentid=agentid, traceparent=traceparent)
        events = [first]
        shared = first.__dict__
        for data in payloads[1:]:
            if not isinstance(data, Payload) or not hasattr(type(data), "event_type"):
                cls.of(data)  # raises the error it would for one
            nan_at = _non_finite_field(data)
            if nan_at is not None:
                raise InvalidEvent(data.event_type, [{"loc": nan_at, "msg": NON_FINITE_HINT}])
            values = dict(shared)
            values["id"] = uuid7()
            values["time"] = datetime.now(UTC)
            values["type"] = data.event_type
            values["dataschema"] = data.dataschema()
            values["extensions"] = {}
            values["data"] = data
            events.append(_construct(cls, values))
        return events

    @classmethod
    def create(cls, type: str, data: Mapping[str, Any], **attributes: Any) -> Event:
        """Build an event from a type name and plain data, validating both.

        For data that arrives untyped (JSON from another language, a config file):
        ``Event.create("tether.tool.call.completed", {"call_id": "c1", "tool": "x"})``.
        """
        return cls.of(payload_class(type).parse(data), **attributes)

    @classmethod
    def from_wire(cls, attributes: Mapping[str, Any], data: Any, *, json_text: bool = False) -> Event:
        """Validate attributes and decoded JSON data read from the wire (with ``json_text``,
        ``data`` is the JSON text itself, validated without building it as dicts first)."""
        if json_text and type(attributes) is dict:
            event = _plain_from_wire(cls, attributes, data)
            if event is not None:
                return event
        attrs = dict(attributes)
        problems: list[dict[str, Any]] = []
        if attrs.get("specversion") != "1.0":
            problems.append(
                {"loc": ("specversion",), "msg": f"unsupported {attrs.get('specversion')!r}"}
            )
        for name in ("id", "source", "type"):
            if not isinstance(attrs.get(name), str) or not attrs.get(name):
                problems.append({"loc": (name,), "msg": "required, a non-empty string"})
        if problems:
            raise InvalidEvent(attrs.get("type"), problems, what="envelope")
        event_type = attrs["type"]
        model = payload_class(event_type)
        version = None
        schema = attrs.get("dataschema")
        if schema:
            known = _SCHEMAS.get(schema) if isinstance(schema, str) else None
            if known is None:
                m = _SCHEMA.fullmatch(str(schema))
                known = (m["type"], int(m["version"])) if m is not None else ("", 0)
                if isinstance(schema, str) and len(_SCHEMAS) < 4096:
                    _SCHEMAS[schema] = known
            if known[0] != event_type:
                raise InvalidEvent(
                    event_type,
                    [{"loc": ("dataschema",), "msg": f"{schema!r} is not {model.dataschema()!r}"}],
                    what="envelope",
                )
            version = known[1]
        extensions = {
            k: str(v)
            for k, v in attrs.items()
            if k not in CORE_ATTRIBUTES and k not in TETHER_EXTENSIONS
        }
        problems = _extension_problems(
            attrs.get("runid"), attrs.get("agentid"), attrs.get("traceparent"), extensions
        )
        if problems:
            raise InvalidEvent(event_type, problems, what="envelope")
        payload = model.parse_json(data, version=version) if json_text else model.parse(data, version=version)
        raw_time = attrs.get("time")
        try:
            if isinstance(raw_time, datetime):
                when = raw_time
            elif isinstance(raw_time, str):
                when = datetime.fromisoformat(raw_time.replace("Z", "+00:00"))
            else:
                from ._ids import uuid7_time  # events without time: use the id's

                when = uuid7_time(attrs["id"])
        except ValueError:
            raise InvalidEvent(
                event_type, [{"loc": ("time",), "msg": f"not RFC 3339: {raw_time!r}"}],
                what="envelope",
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return _construct(cls, {
            "specversion": "1.0",
            "id": attrs["id"],
            "source": attrs["source"],
            "type": event_type,
            "time": when,
            "subject": attrs.get("subject"),
            "datacontenttype": attrs.get("datacontenttype") or "application/json",
            "dataschema": schema or model.dataschema(),
            "traceparent": attrs.get("traceparent"),
            "runid": attrs.get("runid"),
            "agentid": attrs.get("agentid"),
            "dataref": None,
            "extensions": extensions,
            "data": payload,
        })

    def attributes(self) -> dict[str, str]:
        """Every context attribute that is set, as strings (the wire form)."""
        d = self.__dict__
        out = {
            "specversion": d["specversion"],
            "id": d["id"],
            "source": d["source"],
            "type": d["type"],
            "time": _rfc3339(d["time"]),
            "datacontenttype": d["datacontenttype"],
        }
        for name in _OPTIONAL_ATTRIBUTES:
            value = d[name]
            if value is not None:
                out[name] = value
        if d["extensions"]:
            out.update(d["extensions"])
        return out

    def time_text(self) -> str:
        """The ``time`` attribute as the wire carries it (RFC 3339, UTC, ``Z``)."""
        return _rfc3339(self.__dict__["time"])

    def data_json(self) -> bytes:
        """The payload as JSON bytes (binary mode's message body)."""
        data = self.data
        return type(data).__pydantic_serializer__.to_json(data)

    def to_json(self) -> dict[str, Any]:
        """The CloudEvents JSON format of this event, as a dict."""
        out: dict[str, Any] = dict(self.attributes())
        # The JSON text, not model_dump(mode="json"): that one leaves inf and NaN as floats,
        # which json.dumps writes as bare Infinity/NaN tokens that are not JSON.
        out["data"] = json.loads(self.data_json())
        return out

    def with_dataref(self, ref: str | None) -> Event:
        return self.model_copy(update={"dataref": ref})

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, id={self.id!r}, runid={self.runid!r})"


_CHECKED_FIELDS: dict[type[Payload], tuple[str, ...]] = {}
_DATASCHEMAS: dict[type[Payload], str] = {}
"""Each catalogue payload class met by :meth:`Event.of`, with its ``dataschema``."""
_TRACEPARENTS_SEEN: set[str] = set()
"""Traceparents :meth:`Event.of` found valid (a run's events share theirs): not matched again."""


def _non_finite_field(data: Payload) -> tuple[str | int, ...] | None:
    """Where the first NaN or infinity in the payload's fields is, or None.

    A recorded body (a field typed ``Recorded``) is left out: validation spelled its NaN and
    infinities as strings (``json_safe``), as the payload's JSON would spell them anyway, so
    walking it again on every publish finds nothing.
    """
    cls = type(data)
    names = _CHECKED_FIELDS.get(cls)
    if names is None:
        names = _CHECKED_FIELDS[cls] = tuple(
            name for name, field in cls.model_fields.items()
            if not any(isinstance(m, BeforeValidator) and m.func is json_safe for m in field.metadata))
    values = data.__dict__
    for name in names:
        value = values[name]
        if type(value) in _LEAVES:
            continue
        found = non_finite(value)
        if found is not None:
            return (name, *found)
    return None


def _extension_problems(
    runid: Any, agentid: Any, traceparent: Any, extensions: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """What is wrong with the extension attributes; the same rules on build and on read."""
    problems: list[dict[str, Any]] = []
    for name, value in (("runid", runid), ("agentid", agentid)):
        if value is not None and (not isinstance(value, str) or not value):
            problems.append({"loc": (name,), "msg": "must be a non-empty string"})
    if traceparent is not None and not (
        isinstance(traceparent, str) and _TRACEPARENT.fullmatch(traceparent)
    ):
        problems.append({"loc": ("traceparent",), "msg": "not a W3C traceparent"})
    for name in extensions:
        if not _EXT_NAME.fullmatch(name) or name in CORE_ATTRIBUTES or name in TETHER_EXTENSIONS:
            problems.append({"loc": ("extensions", name), "msg": "not a free extension name"})
    return problems


_KNOWN_ATTRIBUTES = CORE_ATTRIBUTES | TETHER_EXTENSIONS


def _plain_from_wire(cls: type[Event], attrs: dict[str, Any], data: bytes) -> Event | None:
    """:meth:`Event.from_wire` for the usual event: every attribute a string, extension names
    valid, a dataschema seen before, a valid time and traceparent. None for anything
    else (from_wire then checks everything and says what is wrong); a payload that does not
    validate raises here as it would there, since the envelope checks all passed."""
    if attrs.get("specversion") != "1.0":
        return None
    extensions: dict[str, Any] = {}
    if not _KNOWN_ATTRIBUTES.issuperset(attrs):
        for name, value in attrs.items():
            if name not in _KNOWN_ATTRIBUTES:
                if type(value) is not str or not _EXT_NAME.fullmatch(name):
                    return None
                extensions[name] = value
    event_id, source, event_type, schema = attrs.get("id"), attrs.get("source"), attrs.get("type"), \
        attrs.get("dataschema")
    known = _SCHEMAS.get(schema) if type(schema) is str else None
    if not (type(event_id) is str and event_id and type(source) is str and source and known is not None
            and known[0] == event_type):
        return None
    runid, agentid, traceparent, raw_time = attrs.get("runid"), attrs.get("agentid"), attrs.get("traceparent"), \
        attrs.get("time")
    if (runid is not None and (type(runid) is not str or not runid)) or (
            agentid is not None and (type(agentid) is not str or not agentid)) or (
            traceparent is not None and (type(traceparent) is not str or not _TRACEPARENT.fullmatch(traceparent))) \
            or type(raw_time) is not str:
        return None
    model = _REGISTRY.get(event_type)
    if model is None:
        return None
    try:
        when = datetime.fromisoformat(raw_time.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return _construct(cls, {
        "specversion": "1.0",
        "id": event_id,
        "source": source,
        "type": event_type,
        "time": when,
        "subject": attrs.get("subject"),
        "datacontenttype": attrs.get("datacontenttype") or "application/json",
        "dataschema": schema,
        "traceparent": traceparent,
        "runid": runid,
        "agentid": agentid,
        "dataref": None,
        "extensions": extensions,
        "data": model.parse_json(data, version=known[1]),
    })


_ALL_FIELDS_SET = frozenset({"specversion", "id", "source", "type", "time", "subject",
                             "datacontenttype", "dataschema", "traceparent", "runid", "agentid",
                             "dataref", "extensions", "data"})


def _construct(cls: type[Event], values: dict[str, Any]) -> Event:
    """What ``model_construct`` does, for an already-validated, complete field dict.

    ``model_construct`` walks every field in Python (about 3.6 us here); the publish
    path builds events at tens of thousands per second, so it sets the state directly.
    ``tests/schemas/test_envelope.py`` checks the result equals ``model_construct``'s.
    """
    event = cls.__new__(cls)
    object.__setattr__(event, "__dict__", values)
    object.__setattr__(event, "__pydantic_fields_set__", set(_ALL_FIELDS_SET))
    object.__setattr__(event, "__pydantic_extra__", None)
    object.__setattr__(event, "__pydantic_private__", None)
    return event


_OPTIONAL_ATTRIBUTES = ("subject", "dataschema", "traceparent", "runid", "agentid", "dataref")


def _rfc3339(when: datetime) -> str:
    text = (when if when.tzinfo is UTC else when.astimezone(UTC)).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text

