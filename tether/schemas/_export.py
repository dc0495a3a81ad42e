"""JSON Schema export, so publishers in any language can validate before sending."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._envelope import SCHEMA_URN, Payload, catalogue

__all__ = ["envelope_schema", "export_schemas", "payload_schema"]


def payload_schema(model: type[Payload]) -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one payload model, ``$id`` = its dataschema."""
    schema = model.model_json_schema(mode="validation")
    schema.pop("title", None)  # pydantic's is the class name; ours is the event type
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": model.dataschema(),
        "title": model.event_type,
        "x-tether-schema-version": model.schema_version,
        **schema,
    }


def envelope_schema() -> dict[str, Any]:
    """The JSON Schema of a tether CloudEvent in the structured (JSON) format."""
    types = list(catalogue())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{SCHEMA_URN}envelope:v1",
        "title": "tether CloudEvent (CloudEvents 1.0, JSON format)",
        "type": "object",
        "required": ["specversion", "id", "source", "type"],
        "properties": {
            "specversion": {"const": "1.0"},
            "id": {"type": "string", "minLength": 1, "description": "UUIDv7; doubles as Nats-Msg-Id."},
            "source": {"type": "string", "minLength": 1, "format": "uri-reference"},
            "type": {"enum": types},
            "subject": {"type": "string"},
            "time": {"type": "string", "format": "date-time"},
            "datacontenttype": {"const": "application/json"},
            "dataschema": {"type": "string", "pattern": "^urn:tether:schema:[a-z0-9_.]+:v[0-9]+$"},
            "traceparent": {
                "type": "string",
                "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            },
            "runid": {"type": "string", "minLength": 1},
            "agentid": {"type": "string", "minLength": 1},
            "dataref": {"type": "string", "description": "Claim check: data is in the object store."},
            "data": {"type": "object", "description": "Validated by the schema named in dataschema."},
        },
        "propertyNames": {"pattern": "^(data|[a-z0-9]{1,20})$"},
    }


def export_schemas(directory: str | Path) -> list[Path]:
    """Write ``envelope.json``, one ``<type>.v<N>.json`` per payload, and ``index.json``."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def write(name: str, doc: dict[str, Any]) -> None:
        path = out / name
        path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
        written.append(path)

    write("envelope.json", envelope_schema())
    index = []
    for event_type, model in catalogue().items():
        name = f"{event_type}.v{model.schema_version}.json"
        write(name, payload_schema(model))
        index.append({"type": event_type, "version": model.schema_version,
                      "dataschema": model.dataschema(), "file": name})
    write("index.json", {"envelope": "envelope.json", "events": index})
    return written
