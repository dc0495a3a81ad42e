"""JSON Schema export: the files, their ids, and that they agree with the models."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests._samples import SAMPLES, sample_event
from tether.schemas import catalogue, envelope_schema, export_schemas, payload_schema

CATALOGUE = sorted(catalogue())
DRAFT = "https://json-schema.org/draft/2020-12/schema"


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    directory = tmp_path_factory.mktemp("schemas") / "nested" / "out"  # created by the export
    return directory, export_schemas(directory)


def load(path: Path) -> dict[str, Any]:
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


def test_export_writes_envelope_index_and_one_file_per_type(exported: tuple[Path, list[Path]]) -> None:
    directory, written = exported
    expected = {"envelope.json", "index.json"} | {
        f"{t}.v{m.schema_version}.json" for t, m in catalogue().items()
    }
    assert {p.name for p in written} == expected
    assert len(written) == len(expected)  # nothing written twice
    assert {p.name for p in directory.iterdir()} == expected
    assert all(p.parent == directory for p in written)


def test_every_file_is_json_ending_in_a_newline(exported: tuple[Path, list[Path]]) -> None:
    _, written = exported
    for path in written:
        text = path.read_text(encoding="utf-8")
        assert text.endswith("}\n")
        assert isinstance(json.loads(text), dict), path.name


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_payload_schema_file(exported: tuple[Path, list[Path]], event_type: str) -> None:
    directory, _ = exported
    model = catalogue()[event_type]
    doc = load(directory / f"{event_type}.v{model.schema_version}.json")
    assert doc["$id"] == model.dataschema()
    assert doc["$schema"] == DRAFT
    assert doc["title"] == event_type
    assert doc["x-tether-schema-version"] == model.schema_version
    assert doc == json.loads(json.dumps(payload_schema(model)))
    assert doc["type"] == "object"
    assert set(doc["properties"]) == set(model.model_fields)
    required = {name for name, field in model.model_fields.items() if field.is_required()}
    assert set(doc.get("required", [])) == required
    assert doc["additionalProperties"] is False  # extra="forbid" shows in the schema


def test_index_lists_every_type(exported: tuple[Path, list[Path]]) -> None:
    directory, _ = exported
    index = load(directory / "index.json")
    assert index["envelope"] == "envelope.json"
    assert [e["type"] for e in index["events"]] == CATALOGUE
    for entry in index["events"]:
        model = catalogue()[entry["type"]]
        assert entry["version"] == model.schema_version
        assert entry["dataschema"] == model.dataschema()
        assert load(directory / entry["file"])["$id"] == entry["dataschema"]


def test_envelope_file(exported: tuple[Path, list[Path]]) -> None:
    directory, _ = exported
    doc = load(directory / "envelope.json")
    assert doc == envelope_schema()
    assert doc["$schema"] == DRAFT
    assert doc["$id"] == "urn:tether:schema:envelope:v1"
    assert doc["properties"]["type"]["enum"] == CATALOGUE


def test_export_again_overwrites_with_the_same_content(tmp_path: Path) -> None:
    first = {p.name: p.read_bytes() for p in export_schemas(tmp_path)}
    (tmp_path / "envelope.json").write_text("stale", encoding="utf-8")
    second = {p.name: p.read_bytes() for p in export_schemas(str(tmp_path))}
    assert first == second


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_envelope_patterns_accept_the_sample_events(event_type: str) -> None:
    """Checked by hand, so it runs without the jsonschema package too."""
    schema = envelope_schema()
    doc = sample_event(event_type).to_json()
    assert set(schema["required"]) <= set(doc)
    names = re.compile(schema["propertyNames"]["pattern"])
    assert all(names.match(name) for name in doc), sorted(doc)
    for name in ("dataschema", "traceparent"):
        assert re.match(schema["properties"][name]["pattern"], doc[name]), name
    assert doc["datacontenttype"] == schema["properties"]["datacontenttype"]["const"]
    assert doc["specversion"] == schema["properties"]["specversion"]["const"]


def test_envelope_property_names_refuse_bad_extension_names() -> None:
    names = re.compile(envelope_schema()["propertyNames"]["pattern"])
    for bad in ("Tenant", "my-ext", "my_ext", "x" * 21, "", "data2 "):
        assert not names.match(bad), bad


# -- full validation, when the jsonschema package is installed ---------------------------


def _validator(schema: dict[str, Any]) -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    cls = jsonschema.Draft202012Validator
    cls.check_schema(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("event_type", CATALOGUE)
def test_sample_events_validate_against_the_exported_schemas(
    exported: tuple[Path, list[Path]], event_type: str
) -> None:
    directory, _ = exported
    doc = json.loads(json.dumps(sample_event(event_type).to_json()))
    _validator(load(directory / "envelope.json")).validate(doc)
    model = catalogue()[event_type]
    payload = _validator(load(directory / f"{event_type}.v{model.schema_version}.json"))
    payload.validate(doc["data"])
    payload.validate(json.loads(SAMPLES[event_type].model_dump_json()))


def test_exported_schemas_refuse_bad_events(exported: tuple[Path, list[Path]]) -> None:
    directory, _ = exported
    envelope = _validator(load(directory / "envelope.json"))
    good = sample_event("tether.run.finished").to_json()
    for change in ({"type": "tether.nope"}, {"specversion": "0.3"}, {"Bad-Name": "x"},
                   {"traceparent": "00-xyz"}, {"runid": ""}):
        assert not envelope.is_valid({**good, **change}), change
    payload = _validator(load(directory / "tether.run.finished.v2.json"))
    assert payload.is_valid({"status": "ok"})
    for bad in ({"status": "bogus"}, {}, {"status": "ok", "surprise": 1},
                {"status": "ok", "error": {"type": ""}}, {"status": "ok", "duration_ms": -1}):
        assert not payload.is_valid(bad), bad
