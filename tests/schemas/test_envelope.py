"""The CloudEvents envelope and the catalogue: building, wire round trips, refusals."""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, ClassVar

import pytest
from pydantic import ValidationError

from tests._samples import SAMPLES, TRACEPARENT, WHEN, sample_event
from tether.schemas import (
    SCHEMA_URN,
    ErrorInfo,
    Event,
    EventError,
    InvalidEvent,
    LlmCallAttemptFailed,
    LlmCallCompleted,
    Payload,
    RunFinished,
    RunStarted,
    UnknownEventType,
    Usage,
    catalogue,
    default_source,
    payload_class,
    uuid7,
    uuid7_time,
)

CATALOGUE = sorted(catalogue())


def wire_round_trip(event: Event) -> Event:
    return Event.from_wire(event.attributes(), json.loads(event.data_json()))


def wire_attributes(event_type: str = "tether.run.finished", **changes: Any) -> dict[str, Any]:
    """Valid wire attributes with ``changes`` applied (a value of None removes the key)."""
    attrs: dict[str, Any] = sample_event(event_type).attributes()
    for key, value in changes.items():
        if value is None:
            attrs.pop(key, None)
        else:
            attrs[key] = value
    return attrs


# -- building ----------------------------------------------------------------------------


def test_of_fills_the_envelope() -> None:
    before = datetime.now(UTC)
    event = Event.of(RunStarted(name="r"))
    after = datetime.now(UTC)
    assert event.specversion == "1.0"
    assert event.type == "tether.run.started"
    assert event.dataschema == "urn:tether:schema:tether.run.started:v2"
    assert event.dataschema == f"{SCHEMA_URN}{RunStarted.event_type}:v{RunStarted.schema_version}"
    assert event.datacontenttype == "application/json"
    assert event.source == default_source()
    assert event.source.startswith("urn:tether:")
    assert uuid.UUID(event.id).version == 7
    assert event.time.tzinfo is not None
    assert before <= event.time <= after
    assert abs(uuid7_time(event.id) - event.time) < timedelta(seconds=1)
    assert event.runid is event.agentid is event.traceparent is event.subject is event.dataref is None
    assert event.extensions == {}
    assert event.data == RunStarted(name="r")


def test_of_gives_each_event_a_new_id() -> None:
    ids = [Event.of(RunStarted()).id for _ in range(100)]
    assert len(set(ids)) == 100
    assert ids == sorted(ids)


def test_of_keeps_what_it_is_given() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    event = Event.of(RunStarted(), id="evt-1", time=when, source="urn:x", subject="s",
                     runid="r", agentid="a", traceparent=TRACEPARENT, extensions={"tenant": "t"})
    assert (event.id, event.time, event.source, event.subject) == ("evt-1", when, "urn:x", "s")
    assert (event.runid, event.agentid, event.traceparent) == ("r", "a", TRACEPARENT)
    assert event.extensions == {"tenant": "t"}


def test_of_reads_a_naive_time_as_utc() -> None:
    event = Event.of(RunStarted(), time=datetime(2026, 1, 2, 3, 4, 5))
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.mark.parametrize("data", [ErrorInfo(type="x"), {"name": "r"}, None])
def test_of_refuses_what_is_not_a_catalogue_payload(data: Any) -> None:
    with pytest.raises(InvalidEvent, match="catalogue payload"):
        Event.of(data)


def test_attributes_are_the_wire_strings() -> None:
    attrs = sample_event("tether.llm.call.completed").attributes()
    assert all(isinstance(v, str) for v in attrs.values())
    assert attrs["time"] == "2026-03-14T15:09:26.535897Z"
    assert attrs["tenant"] == "acme"  # extensions sit beside the core attributes
    assert "data" not in attrs
    assert "dataref" not in attrs
    assert "subject" not in Event.of(RunStarted()).attributes()


def test_time_on_the_wire_is_utc_whatever_the_offset() -> None:
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=-5)))
    event = Event.of(RunStarted(), time=when)
    assert event.attributes()["time"] == "2026-01-02T08:04:05Z"
    assert wire_round_trip(event).time == when


# -- the catalogue and its round trips ---------------------------------------------------


def test_every_catalogue_type_has_a_sample_and_no_sample_is_stale() -> None:
    assert set(SAMPLES) == set(catalogue())


def test_catalogue_is_sorted_and_names_follow_the_scheme() -> None:
    types = list(catalogue())
    assert types == sorted(types)
    assert len(types) >= 19
    for event_type, model in catalogue().items():
        assert event_type.startswith(f"tether.{model.kind}.")
        assert event_type.endswith(f".{model.action}")
        assert payload_class(event_type) is model


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_sample_sets_every_field(event_type: str) -> None:
    payload = SAMPLES[event_type]  # KeyError here: add a sample to tests/_samples.py
    assert type(payload) is catalogue()[event_type]
    unset = set(type(payload).model_fields) - payload.model_fields_set
    assert not unset, f"{event_type} sample leaves {sorted(unset)} at their defaults"


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_every_type_round_trips_through_the_wire(event_type: str) -> None:
    event = sample_event(event_type)
    assert event.type == event_type
    assert event.dataschema == catalogue()[event_type].dataschema()
    back = wire_round_trip(event)
    assert back == event
    assert back.data == SAMPLES[event_type]
    assert type(back.data) is catalogue()[event_type]
    assert back.attributes() == event.attributes()
    assert back.data_json() == event.data_json()


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_every_type_round_trips_through_the_json_format(event_type: str) -> None:
    event = sample_event(event_type)
    doc = json.loads(json.dumps(event.to_json()))
    data = doc.pop("data")
    assert Event.from_wire(doc, data) == event


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_a_bare_envelope_round_trips(event_type: str) -> None:
    event = Event.of(SAMPLES[event_type])
    assert wire_round_trip(event) == event


def test_json_format_data_is_strict_json() -> None:
    """Infinity and NaN (refused in a new event, but read from an older log) leave as strings,
    as in binary mode, never as bare JSON tokens."""
    llm = Event.of(LlmCallCompleted(call_id="c", provider="p", model="m"))
    event = Event.from_wire(llm.attributes(), {**json.loads(llm.data_json()), "latency_ms": float("inf")})
    run = Event.of(RunStarted())
    started = Event.from_wire(run.attributes(), {"input": {"inf": float("inf"), "nan": float("nan")}})
    for e in (event, started):
        text = json.dumps(e.to_json(), allow_nan=False)  # raises on a bare float inf/nan
        assert json.loads(text)["data"] == json.loads(e.data_json())
    assert wire_round_trip(event).data.latency_ms == float("inf")  # type: ignore[attr-defined]


# -- payload refusals --------------------------------------------------------------------

_ATTEMPT = {"call_id": "c", "provider": "p", "model": "m", "attempt": 1,
            "error": {"type": "Timeout"}, "decision": "retry"}
_ATTEMPT_ARGS = {k: v for k, v in _ATTEMPT.items() if k != "error"}

BAD_PAYLOADS = [
    pytest.param(RunFinished, {"status": "bogus"}, ("status",), id="bad-literal"),
    pytest.param(RunFinished, {}, ("status",), id="missing-required"),
    pytest.param(RunFinished, {"status": "ok", "duration_ms": -1}, ("duration_ms",), id="negative"),
    pytest.param(RunFinished, {"status": "ok", "surprise": 1}, ("surprise",), id="unknown-field"),
    pytest.param(RunFinished, {"status": "ok", "error": {"type": ""}}, ("error", "type"), id="nested"),
    pytest.param(RunFinished, {"status": "ok", "error": {"type": "X", "status_code": 99}},
                 ("error", "status_code"), id="nested-range"),
    pytest.param(LlmCallAttemptFailed, {**_ATTEMPT, "attempt": 0}, ("attempt",), id="attempt-0"),
    pytest.param(LlmCallAttemptFailed, {**_ATTEMPT, "call_id": ""}, ("call_id",), id="empty-id"),
    pytest.param(LlmCallAttemptFailed, {**_ATTEMPT, "model": "m" * 1025}, ("model",), id="long-id"),
    pytest.param(LlmCallCompleted, {"call_id": "c", "provider": "p", "model": "m",
                                    "usage": {"input_tokens": -5}}, ("usage", "input_tokens"),
                 id="nested-usage"),
    pytest.param(RunStarted, {"tags": "not-a-list"}, ("tags",), id="wrong-type"),
]


@pytest.mark.parametrize(("model", "data", "loc"), BAD_PAYLOADS)
def test_bad_payload_from_the_wire_names_the_field(
    model: type[Payload], data: dict[str, Any], loc: tuple[str, ...]
) -> None:
    attrs = wire_attributes(model.event_type)
    with pytest.raises(InvalidEvent) as info:
        Event.from_wire(attrs, data)
    exc = info.value
    assert isinstance(exc, EventError)
    assert isinstance(exc, ValueError)
    assert exc.event_type == model.event_type
    path = ".".join(loc)
    assert f"{path}: " in str(exc)
    assert str(exc).startswith(f"invalid {model.event_type} payload: ")
    assert [p["loc"] for p in exc.problems] == [loc]


@pytest.mark.parametrize(("model", "data", "loc"), BAD_PAYLOADS)
def test_bad_payload_in_python_names_the_field(
    model: type[Payload], data: dict[str, Any], loc: tuple[str, ...]
) -> None:
    with pytest.raises(InvalidEvent) as info:
        model(**data)
    assert f"{'.'.join(loc)}: " in str(info.value)
    assert [p["loc"] for p in info.value.problems] == [loc]


@pytest.mark.parametrize("data", [[1, 2], "text", 3, None])
def test_data_that_is_no_json_object_is_refused(data: Any) -> None:
    with pytest.raises(InvalidEvent, match="must be a JSON object"):
        Event.from_wire(wire_attributes(), data)


def test_many_problems_are_summarised() -> None:
    with pytest.raises(InvalidEvent) as info:
        RunStarted(**{f"f{i}": i for i in range(12)})
    assert len(info.value.problems) == 12
    assert str(info.value).endswith("(+2 more)")


def test_unknown_type_is_its_own_error() -> None:
    attrs = wire_attributes(type="tether.llm.call.exploded", dataschema=None)
    with pytest.raises(UnknownEventType) as info:
        Event.from_wire(attrs, {})
    exc = info.value
    assert isinstance(exc, EventError)
    assert not isinstance(exc, InvalidEvent)
    assert exc.event_type == "tether.llm.call.exploded"
    assert "'tether.llm.call.exploded'" in str(exc)
    assert "tether.llm.call.completed" in str(exc)  # a hint at its neighbours


def test_payload_class_of_an_unknown_type() -> None:
    with pytest.raises(UnknownEventType, match="'nope'"):
        payload_class("nope")


def test_a_type_cannot_be_registered_twice() -> None:
    with pytest.raises(TypeError, match="registered twice"):
        class Again(Payload):
            event_type: ClassVar[str] = "tether.run.started"
    assert catalogue()["tether.run.started"] is RunStarted


# -- envelope refusals -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "loc"),
    [
        ({"runid": ""}, "runid"),
        ({"agentid": ""}, "agentid"),
        ({"source": ""}, "source"),
        ({"traceparent": "not-a-traceparent"}, "traceparent"),
        ({"traceparent": TRACEPARENT.upper()}, "traceparent"),
        ({"traceparent": TRACEPARENT + "-00"}, "traceparent"),
        ({"traceparent": TRACEPARENT + "\n"}, "traceparent"),  # header values carry no line break
        ({"extensions": {"Tenant": "x"}}, "extensions.Tenant"),
        ({"extensions": {"my-ext": "x"}}, "extensions.my-ext"),
        ({"extensions": {"my_ext": "x"}}, "extensions.my_ext"),
        ({"extensions": {"": "x"}}, "extensions."),
        ({"extensions": {"tenant\n": "x"}}, "extensions.tenant\n"),  # nor header names
        ({"extensions": {"x" * 21: "x"}}, f"extensions.{'x' * 21}"),
        ({"extensions": {"type": "x"}}, "extensions.type"),
        ({"extensions": {"runid": "x"}}, "extensions.runid"),
        ({"extensions": {"dataref": "x"}}, "extensions.dataref"),
    ],
)
def test_of_refuses_bad_envelope_values(kwargs: dict[str, Any], loc: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        Event.of(RunStarted(), **kwargs)
    assert str(info.value).startswith("invalid tether.run.started envelope: ")
    assert f"{loc}: " in str(info.value)


def test_of_reports_every_envelope_problem_at_once() -> None:
    with pytest.raises(InvalidEvent) as info:
        Event.of(RunStarted(), runid="", agentid="", traceparent="x")
    assert [p["loc"] for p in info.value.problems] == [("runid",), ("agentid",), ("traceparent",)]


@pytest.mark.parametrize(
    ("changes", "loc"),
    [
        ({"id": None}, "id"),
        ({"id": ""}, "id"),
        ({"source": None}, "source"),
        ({"source": ""}, "source"),
        ({"type": None}, "type"),
        ({"specversion": None}, "specversion"),
        ({"specversion": "0.3"}, "specversion"),
        ({"specversion": "1.0.1"}, "specversion"),
        ({"dataschema": "urn:tether:schema:tether.run.started:v1"}, "dataschema"),
        ({"dataschema": "https://example.com/schema.json"}, "dataschema"),
        ({"dataschema": "urn:tether:schema:tether.run.finished"}, "dataschema"),
        ({"time": "yesterday"}, "time"),
        ({"time": "2026-13-01T00:00:00Z"}, "time"),
        ({"runid": ""}, "runid"),
        ({"agentid": ""}, "agentid"),
        ({"traceparent": "00-abc"}, "traceparent"),
        ({"My-Ext": "x"}, "extensions.My-Ext"),
        ({"x" * 21: "x"}, f"extensions.{'x' * 21}"),
    ],
)
def test_from_wire_refuses_bad_envelope_values(changes: dict[str, Any], loc: str) -> None:
    event = sample_event("tether.run.finished")
    attrs = wire_attributes(**changes)
    with pytest.raises(InvalidEvent) as info:
        Event.from_wire(attrs, json.loads(event.data_json()))
    assert " envelope: " in str(info.value)
    assert f"{loc}: " in str(info.value)


def test_without_time_the_ids_time_is_used() -> None:
    event_id = uuid7()
    attrs = wire_attributes(id=event_id, time=None)
    event = Event.from_wire(attrs, {"status": "ok"})
    assert event.time == uuid7_time(event_id)


def test_without_time_a_non_uuid7_id_is_refused() -> None:
    attrs = wire_attributes(id=str(uuid.uuid4()), time=None)
    with pytest.raises(InvalidEvent, match="time"):
        Event.from_wire(attrs, {"status": "ok"})


def test_a_naive_time_on_the_wire_is_read_as_utc() -> None:
    event = Event.from_wire(wire_attributes(time="2026-01-02T03:04:05"), {"status": "ok"})
    assert event.time == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_a_missing_dataschema_means_the_current_version() -> None:
    event = Event.from_wire(wire_attributes(dataschema=None), {"status": "ok"})
    assert event.dataschema == RunFinished.dataschema()
    assert event.data == RunFinished(status="ok")


def test_a_missing_datacontenttype_means_json() -> None:
    event = Event.from_wire(wire_attributes(datacontenttype=None), {"status": "ok"})
    assert event.datacontenttype == "application/json"


# -- frozen ------------------------------------------------------------------------------


def test_payloads_and_envelopes_are_frozen() -> None:
    event = sample_event("tether.llm.call.completed")
    payload = event.data
    assert isinstance(payload, LlmCallCompleted)
    with pytest.raises(ValidationError, match="frozen"):
        payload.model = "other"  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        payload.usage.input_tokens = 0  # type: ignore[misc]
    with pytest.raises(ValidationError, match="frozen"):
        event.runid = "other"  # type: ignore[misc]
    assert payload.model == "gpt-4.1-mini"
    assert payload.usage == Usage(input_tokens=120, output_tokens=40, cached_input_tokens=100,
                                  cache_write_tokens=20, reasoning_tokens=8)
    assert event.runid == "run-42"


# -- schema versions ---------------------------------------------------------------------


def test_newer_version_drops_unknown_fields() -> None:
    attrs = wire_attributes(dataschema="urn:tether:schema:tether.run.finished:v3")
    event = Event.from_wire(attrs, {"status": "ok", "cost_usd": 0.12})
    assert event.data == RunFinished(status="ok")
    assert "cost_usd" not in event.data.model_dump()
    assert event.dataschema == "urn:tether:schema:tether.run.finished:v3"


def test_newer_version_drops_unknown_fields_of_nested_parts() -> None:
    attrs = wire_attributes(dataschema="urn:tether:schema:tether.run.finished:v4")
    data = {"status": "error", "error": {"type": "Timeout", "provider_region": "eu"}}
    event = Event.from_wire(attrs, data)
    assert event.data == RunFinished(status="error", error=ErrorInfo(type="Timeout"))


def test_newer_version_still_validates_known_fields() -> None:
    attrs = wire_attributes(dataschema="urn:tether:schema:tether.run.finished:v3")
    with pytest.raises(InvalidEvent, match="status"):
        Event.from_wire(attrs, {"status": "bogus", "cost_usd": 0.12})


@pytest.mark.parametrize("dataschema", ["urn:tether:schema:tether.run.finished:v2", None])
def test_unknown_fields_at_the_current_version_are_refused(dataschema: str | None) -> None:
    attrs = wire_attributes(dataschema=dataschema)  # None: no dataschema attribute at all
    assert attrs.get("dataschema") == dataschema
    with pytest.raises(InvalidEvent, match=r"cost_usd: Extra inputs are not permitted"):
        Event.from_wire(attrs, {"status": "ok", "cost_usd": 0.12})


def test_parse_with_an_older_version_is_still_strict() -> None:
    with pytest.raises(InvalidEvent, match="cost_usd"):
        RunFinished.parse({"status": "ok", "cost_usd": 1}, version=0)
    assert RunFinished.parse({"status": "ok"}, version=0) == RunFinished(status="ok")


# -- extensions and claim checks ---------------------------------------------------------


def test_extensions_round_trip() -> None:
    ext = {"tenant": "acme", "region": "eu1", "a1": "", "x" * 20: "long name, odd value: é ✓"}
    event = Event.of(RunStarted(), extensions=ext)
    assert event.attributes()["region"] == "eu1"
    back = wire_round_trip(event)
    assert back.extensions == ext
    assert back == event


def test_extensions_are_copied_not_shared() -> None:
    ext = {"tenant": "acme"}
    event = Event.of(RunStarted(), extensions=ext)
    ext["tenant"] = "changed"
    assert event.extensions == {"tenant": "acme"}


def test_with_dataref_sets_the_claim_check() -> None:
    event = sample_event("tether.run.started")
    ref = event.with_dataref("tether-obj://bucket/object")
    assert ref.dataref == "tether-obj://bucket/object"
    assert ref.attributes()["dataref"] == "tether-obj://bucket/object"
    assert ref.data == event.data
    assert event.dataref is None
    assert "dataref" not in ref.extensions
    assert ref.with_dataref(None) == event


def test_repr_is_short() -> None:
    event = sample_event("tether.memory.written")
    assert repr(event) == f"Event(type='tether.memory.written', id={event.id!r}, runid='run-42')"
    assert "customer" not in repr(event)


def test_sample_time_is_kept_to_the_microsecond() -> None:
    assert wire_round_trip(sample_event("tether.run.started")).time == WHEN


def test_fast_construction_matches_model_construct() -> None:
    """Event.of skips pydantic's model_construct for speed; the result must be the same."""
    from tether.schemas import RunStarted

    event = Event.of(RunStarted(name="n"), runid="r", agentid="a", extensions={"tenant": "t"})
    reference = Event.model_construct(**dict(event.__dict__))
    assert event == reference
    assert event.model_fields_set == reference.model_fields_set
    assert event.__pydantic_extra__ == reference.__pydantic_extra__
    assert event.__pydantic_private__ == reference.__pydantic_private__
    assert event.model_dump() == reference.model_dump()
    assert event.model_copy(update={"runid": "x"}).runid == "x"


NAN, INF = float("nan"), float("inf")
TOOL = {"call_id": "c", "tool": "t"}


@pytest.mark.parametrize(("build", "loc"), [
    (lambda: Event.of(payload_class("tether.tool.call.completed")(**TOOL, duration_ms=INF)), "duration_ms"),
    (lambda: Event.of(LlmCallCompleted(call_id="c", provider="p", model="m", latency_ms=INF)), "latency_ms"),
    (lambda: Event.of(RunStarted(metadata={"score": NAN})), "metadata.score"),
    (lambda: Event.create("tether.memory.written", {"namespace": "team:a", "key": "k", "version": 1, "text": "t",
                                                    "metadata": {"scores": [1.5, -INF]}}), "metadata.scores.1"),
    (lambda: Event.of(LlmCallAttemptFailed(**_ATTEMPT_ARGS, error=ErrorInfo(type="X", retry_after_s=INF))),
     "error.retry_after_s"),
])
def test_non_finite_numbers_are_refused_when_an_event_is_built(build: Any, loc: str) -> None:
    """pydantic takes NaN and inf in JSON fields (and inf in float fields); the log stored them
    as the strings "NaN" / "Infinity", silently, and a memory view as bare NaN. Refused, saying where."""
    with pytest.raises(InvalidEvent, match=rf"{loc}: JSON has no NaN or Infinity: send a finite number"):
        build()


def test_recorded_bodies_keep_non_finite_numbers_as_strings() -> None:
    """What tether records of someone else's call (a tool's result, a request or response body,
    a run's input and output) must never fail that call: NaN and infinities are spelled as the
    strings the log always stored."""
    result = {"score": NAN, "range": [-INF, INF], "text": "NaN", "n": 1.5}
    event = Event.of(payload_class("tether.tool.call.completed")(**TOOL, result=result))
    assert event.data.result == {"score": "NaN", "range": ["-Infinity", "Infinity"], "text": "NaN",  # type: ignore[attr-defined]
                                 "n": 1.5}
    assert json.loads(event.data_json())["result"] == event.data.result  # type: ignore[attr-defined]
    assert Event.create("tether.tool.call.requested", {**TOOL, "arguments": [NAN]}).data.arguments == ["NaN"]  # type: ignore[attr-defined]
    assert Event.of(RunStarted(input={"x": INF})).data.input == {"x": "Infinity"}  # type: ignore[attr-defined]


@pytest.mark.parametrize("fields", [
    {"namespace": "team:a", "key": "k", "version": 1, "text": "sealed", "key_id": "team:a#1/entry",
     "content_hash": "ab" * 16, "expires_at": None, "embedder": None},
    {"namespace": "team:a", "key": "k", "version": 3, "text": "t", "expires_at": datetime(2027, 1, 1, tzinfo=UTC),
     "embedding": "AAAA", "embedder": "m", "source_call_id": "c1"},
], ids=["sealed", "with-optionals"])
def test_a_trusted_payload_is_the_validated_one(fields: dict[str, Any]) -> None:
    """``Payload.trusted`` (the bulk memory write's way) skips validation: it must give the payload
    validation gives, in the same field order, so its JSON is the same bytes."""
    from tether.schemas import MemoryWritten

    trusted, validated = MemoryWritten.trusted(**fields), MemoryWritten(**fields)
    assert trusted == validated and trusted.model_fields_set == validated.model_fields_set
    assert Event.of(trusted, id="e1", time=WHEN).data_json() == Event.of(validated, id="e1", time=WHEN).data_json()
    assert trusted.metadata is not MemoryWritten.trusted(**fields).metadata  # a default of its own
    with pytest.raises(TypeError, match="needs 'text'"):
        MemoryWritten.trusted(namespace="team:a", key="k", version=1)
    with pytest.raises(TypeError, match=r"unknown fields \['txet'\]"):
        MemoryWritten.trusted(**fields, txet="oops")


def test_uuid7_from_a_pool_of_random_bytes_keeps_its_layout_and_order() -> None:
    """Ids take their random bits from a pool drawn 512 ids at a time: still version 7, RFC 9562
    variant, the time they were made, in the order they were made, all distinct (across draws)."""
    before = datetime.now(UTC)
    ids = [uuid7() for _ in range(3000)]
    after = datetime.now(UTC)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    for value in ids[::97]:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == value
        assert before - timedelta(milliseconds=1) <= uuid7_time(value) <= after + timedelta(seconds=1)
    assert len({uuid.UUID(v).int & 0x3FFF_FFFF_FFFF_FFFF for v in ids}) == len(ids)  # the random bits differ


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_does_not_repeat_its_parents_ids() -> None:
    """The pool of random bytes is forgotten in a forked child: otherwise it would make the ids its
    parent makes next (same millisecond, same random bits)."""
    uuid7()  # the parent has a pool
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.write(write, ",".join(uuid7() for _ in range(20)).encode())
        finally:
            os._exit(0)
    os.close(write)
    parent = {uuid7() for _ in range(20)}
    os.waitpid(pid, 0)
    with os.fdopen(read, "rb") as pipe:
        child = set(pipe.read().decode().split(","))
    assert len(child) == 20
    low = {uuid.UUID(v).int & 0xFFFF_FFFF_FFFF for v in parent}
    assert not low & {uuid.UUID(v).int & 0xFFFF_FFFF_FFFF for v in child}
