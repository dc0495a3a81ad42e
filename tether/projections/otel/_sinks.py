"""Where spans go: the OTLP/HTTP sink (the one place the OpenTelemetry SDK is imported) and an in-memory one."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from ._spans import OtelSpan

__all__ = ["OTEL_EXTRA", "MemorySink", "OtelUnavailable", "OtlpHttpSink", "SpanSink", "otel_available", "state_path",
           "traces_endpoint"]

OTEL_EXTRA = "pip install 'tether[otel]'"


class OtelUnavailable(ImportError):
    """The OpenTelemetry SDK or its OTLP exporter is not installed (the ``otel`` extra)."""


def otel_available() -> bool:
    """True when the ``otel`` extra (the OpenTelemetry SDK and its OTLP/HTTP exporter) is installed."""
    try:
        import opentelemetry.exporter.otlp.proto.http.trace_exporter
        import opentelemetry.sdk.trace  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


class SpanSink(Protocol):
    """Where spans are sent: :class:`OtlpHttpSink`, or :class:`MemorySink` in tests."""

    def send(self, spans: Sequence[OtelSpan]) -> bool:
        """True once the receiver has accepted them all."""
        ...

    def close(self) -> None: ...


class MemorySink:
    """Keeps what is sent; ``down = True`` refuses everything (a receiver that is away)."""

    def __init__(self) -> None:
        self.spans: list[OtelSpan] = []
        self.batches = 0
        self.down = False

    def send(self, spans: Sequence[OtelSpan]) -> bool:
        if self.down:
            return False
        self.spans.extend(spans)
        self.batches += 1
        return True

    def close(self) -> None:
        pass


def traces_endpoint(url: str) -> str:
    """The OTLP/HTTP traces URL of a receiver: ``/v1/traces`` appended unless the URL ends so."""
    url = url.strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an http(s) URL: {url!r} (e.g. http://127.0.0.1:4318)")
    return url if parts.path.endswith("/v1/traces") else f"{url}/v1/traces"


def state_path(home: Path, endpoint: str) -> Path:
    """The default file remembering what was sent to ``endpoint``: one per receiver."""
    digest = hashlib.sha256(traces_endpoint(endpoint).encode()).hexdigest()[:12]
    return home / "otel" / f"export-{digest}.db"


def _tether_version() -> str:
    try:
        return version("tether")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0"


class OtlpHttpSink:
    """Sends spans over OTLP/HTTP (protobuf) with the OpenTelemetry SDK's exporter.

    Needs the ``otel`` extra. ``headers`` (e.g. ``Authorization``) default to
    ``$OTEL_EXPORTER_OTLP_HEADERS``; the exporter retries transient failures within ``timeout``.
    ``service_name`` is the resource's ``service.name`` and ``openinference.project.name``.
    """

    def __init__(self, endpoint: str, *, headers: Mapping[str, str] | None = None, timeout: float = 10.0,
                 service_name: str = "tether", resource: Mapping[str, str] | None = None) -> None:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.util.instrumentation import InstrumentationScope
        except ImportError as exc:
            raise OtelUnavailable(f"OpenTelemetry export needs the otel extra: {OTEL_EXTRA}") from exc
        self.endpoint = traces_endpoint(endpoint)
        self.service_name = service_name
        self._exporter = OTLPSpanExporter(endpoint=self.endpoint, headers=dict(headers) if headers else None,
                                          timeout=timeout)
        # The service name is also the project Phoenix (and Arize) files the spans under.
        self._resource = Resource.create({"openinference.project.name": service_name, **(resource or {}),
                                          "service.name": service_name})
        self._scope = InstrumentationScope("tether", _tether_version())

    def send(self, spans: Sequence[OtelSpan]) -> bool:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.export import SpanExportResult
        from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

        sampled = TraceFlags(TraceFlags.SAMPLED)
        readable = [ReadableSpan(
            name=s.name,
            context=SpanContext(s.trace_id, s.span_id, is_remote=False, trace_flags=sampled),
            parent=None if s.parent_id is None else SpanContext(s.trace_id, s.parent_id, is_remote=False,
                                                                  trace_flags=sampled),
            resource=self._resource, attributes=dict(s.attributes),
            kind=SpanKind.CLIENT if s.client else SpanKind.INTERNAL,
            status=Status(StatusCode.UNSET) if s.error is None else Status(StatusCode.ERROR, s.error),
            start_time=s.start_ns, end_time=s.end_ns, instrumentation_scope=self._scope,
        ) for s in spans]
        return bool(self._exporter.export(readable) == SpanExportResult.SUCCESS)

    def close(self) -> None:
        self._exporter.shutdown()  # type: ignore[no-untyped-call]  # the SDK leaves it unannotated
